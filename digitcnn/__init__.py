"""digitcnn: Hydra-composed Keras CNN experiments on MNIST, recorded in MLflow."""

import os

# TensorFlow reads this once, at its import; set it before anything imports Keras.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
