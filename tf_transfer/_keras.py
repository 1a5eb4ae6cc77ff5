"""The one place tf_transfer imports Keras.

tf_transfer uses the Keras 2 API from the ``tf_keras`` package: with it ``hub.KerasLayer`` works,
``model.fit`` works under MultiWorkerMirroredStrategy, and ``tf.saved_model.save`` keeps our
serving signatures. Every other module imports ``keras`` from here.
"""

import tf_keras as keras

__all__ = ["keras"]
