"""fcn: fully convolutional networks for scene parsing on MIT ADE20K, in TensorFlow 2.

``fcn.Segmenter`` (``fcn/segmenter.py``) segments images with a trained run or a
released model; it is imported on first use, so ``import fcn`` stays free of
TensorFlow.
"""

__version__ = "0.1.0"
__all__ = ["Segmenter"]


def __getattr__(name):
    if name == "Segmenter":
        from fcn.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'fcn' has no attribute {name!r}")
