"""Workflows: what the commands do, written with the building blocks below: the transfer recipe
(``recipe``), a run's outputs (``outputs``: metrics, report, export), the image modality
(``images``), hyperparameter search (``tuning``), evaluating and re-exporting (``evaluation``,
``exporting``)."""
