"""happysad: train an image classifier on your own folders of pictures.

Commands, one module each: sample, clean, train, predict, evaluate, review, runs, serve, export.
Importing the package loads no TensorFlow: `happysad.runtime` loads it when a stage first needs it.
"""
__version__ = "0.3.0"
