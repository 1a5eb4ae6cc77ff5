"""tf_transfer: transfer-learn an image classifier from a folder of labelled images, and serve it.

Importing the package is cheap and has no side effects; TensorFlow is imported by the modules that
need it (``data``, ``model``, ``train``, ...).
"""

__version__ = "0.1.0"
