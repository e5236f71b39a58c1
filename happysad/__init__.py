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


# TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512 VNNI/BF16 or AMX. On the
# AVX2 CPUs of most laptops and small servers they still train the card's CNN 2-3x faster than its default
# kernels (benchmarks/speed.py). The switch is read once, when TensorFlow loads: set TF_ENABLE_ONEDNN_OPTS=0
# to opt out.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
_import_tensorflow_quietly()
