"""happysad: train an image classifier on your own folders of pictures.

Commands, one module each: clean, train, predict, evaluate, runs, serve, export, sample.
"""
import os

# TensorFlow's C++ start-up chatter (CUDA probing on CPU-only machines, CPU feature notes) would bury the
# tool's own output; set TF_CPP_MIN_LOG_LEVEL=0 to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
