"""happysad: train an image classifier on your own folders of pictures.

Commands, one module each: sample, clean, train, predict, evaluate, runs, serve, export.
"""
import os
import sys

__version__ = "0.1.0"


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter silenced.

    On a machine without CUDA, TensorFlow prints CUDA-probing notes and a "failed call to cuInit" error on
    every start, which would bury the tool's own output and alarm users for nothing. Python errors still
    raise as usual. Set TF_CPP_MIN_LOG_LEVEL yourself (e.g. 0) to see everything.
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()
