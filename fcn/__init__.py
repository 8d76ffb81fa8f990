"""fcn: fully convolutional networks for scene parsing on MIT ADE20K, in TensorFlow 2."""

__version__ = "0.1.0"
