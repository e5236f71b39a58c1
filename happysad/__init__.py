"""happysad: train an image classifier on your own folders of pictures.

The common path in one call each, the details reachable (every setting of happysad.config.TrainConfig, which
the train command's options are made from, as a keyword argument):

    import happysad
    model = happysad.train(data="photos", arch="auto")     # cross-validated, then trained on every photo
    print(model.record.metrics["cross_validation"]["accuracy"])
    for prediction in happysad.load("models/happysad.h5").predict(["face.jpg"]):
        print(prediction.label, prediction.probability, prediction.notes)

Commands, one module each: sample, clean, train, predict, evaluate, review, runs, serve, export.
Importing the package loads no TensorFlow: `happysad.runtime` loads it when a stage first needs it.
"""
import importlib

from happysad import defaults

__version__ = "0.12.0"


def load(model: str = defaults.MODEL):
    """A saved model (any format train or export writes) with its record: .predict(paths) labels images."""
    from happysad import classifier

    return classifier.load(model)


def __getattr__(name: str):
    """happysad.train, the command's module, is also the one-call API: `happysad.train(data=..., arch=...)`
    (happysad.train.fit). Imported on first use, so importing the package stays light."""
    if name == "train":
        return importlib.import_module("happysad.train")
    raise AttributeError(f"module 'happysad' has no attribute {name!r}")
