"""Models: the backbone registry (Keras Applications, TF-Hub handles, saved Keras models), tf_transfer's
own layers, and the classifier built around a backbone (preprocessing, pooler, heads) with the
freezing rules of each phase."""
