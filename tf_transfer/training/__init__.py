"""Training: the stages of the recipe and their compile choices (``phases``), the trainer that fits
and resumes them (``trainer``), the run's callbacks, phase 1's feature cache, and tf.distribute
strategy and precision selection (``distribute``)."""
