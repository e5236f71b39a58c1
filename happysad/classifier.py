"""A model: a saved network and its record, ready to label images. What predict, evaluate, serve and export
load (see happysad.model for the words).

Images are prepared by `happysad.images` exactly as in training; probabilities always come back as one
column per class (for a two-class model, [1 - p, p] where p is the sigmoid output), and labels come from the
record's class names, never from a hard-coded "0 = happy".
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from happysad import explain, images, marks, metrics, model as models, record
from happysad.errors import first_line
from happysad.runtime import keras, tf


class ModelError(Exception):
    """The model or its record cannot be used, reported as one line."""


EXPORTS_CANNOT_MARK = ("this export computes probabilities only, so no image is marked \"fits no class\": the mark "
                       "needs the Keras model (.h5 or .keras) that happysad.train saved")
EXPORTS_CANNOT_EXPLAIN = ("heatmaps need the Keras model (.h5 or .keras) that happysad.train saved: an export "
                          "computes probabilities only")


@dataclass
class Prediction:
    """A label and its calibrated probability, and the marks that come with it (happysad.marks): each a reason,
    or empty when the mark does not apply."""

    label: str
    probability: float
    probabilities: dict
    unsure: str = ""
    fits_no_class: str = ""

    def top(self, k: int) -> list:
        ranked = sorted(self.probabilities.items(), key=lambda item: item[1], reverse=True)
        return [{"label": label, "probability": p} for label, p in ranked[:k]]

    @property
    def notes(self) -> list:
        return [f"{name}: {reason}" for name, reason in (("unsure", self.unsure),
                                                          ("fits no class", self.fits_no_class)) if reason]

    def to_json(self, path) -> dict:
        """The object `predict --json` prints and `serve`'s POST /predict returns, one per image."""
        return {"path": str(path), "label": self.label, "probability": round(self.probability, 6),
                "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
                "unsure": bool(self.unsure), "fits_no_class": bool(self.fits_no_class), "notes": self.notes}


@dataclass
class Classifier:
    network: object  # a Keras model, or the runner of a SavedModel or TFLite export
    record: record.Record

    def __post_init__(self):
        # A Keras model called eagerly runs op by op; traced once into a graph it scores images ~1.6x faster.
        # reduce_retracing: the last, smaller chunk of a batch does not trigger a trace of its own each time.
        # Where the record knows the training photos' domain, the same pass also returns the features it was
        # measured on (models.domain_reader), to tell how far each picture is from every class.
        self.domain = marks.Domain.from_record(self.record.domain)
        self.forward = self.network
        if isinstance(self.network, keras.Model):
            scorer = self.network
            if self.domain is not None:  # (Sequential models have no .output before they are called: .outputs)
                reader = models.domain_reader(self.network, self.domain.reads)
                scorer = keras.Model(self.network.inputs, [reader.outputs[0], self.network.outputs[0]])
            self.forward = tf.function(lambda images: scorer(images, training=False), reduce_retracing=True)
        else:
            self.domain = None  # an export computes the probabilities only

    @property
    def class_names(self) -> list:
        return self.record.class_names

    @property
    def marks_far(self) -> bool:
        """Whether "fits no class" is marked: the record knows the training photos' domain and the network gives
        the features it was measured on (an export does not)."""
        return self.domain is not None

    @property
    def is_export(self) -> bool:
        """A SavedModel or TFLite export: probabilities only, no features and no heatmaps."""
        return not isinstance(self.network, keras.Model)

    @property
    def missing_mark_note(self) -> str:
        """What predict and serve say when the record has a domain that this network cannot measure."""
        return EXPORTS_CANNOT_MARK if self.record.domain and self.is_export else ""

    @property
    def preprocessing(self) -> images.Preprocessing:
        """How the model's training images were prepared (its record's): every image it scores is the same."""
        return self.record.preprocessing

    def load_image(self, path) -> np.ndarray:
        return self.preprocessing.load(str(path)).numpy()

    def prepared(self, path) -> np.ndarray:
        """load_image, with a file that cannot be read as an image a ValueError naming it."""
        try:
            return self.load_image(path)
        except tf.errors.OpError as error:  # not an image, no such file, no permission, a folder...
            raise ValueError(f"{path}: {images.error_reason(error)}") from None

    def decode(self, encoded: bytes) -> np.ndarray:
        return self.preprocessing.decode(tf.constant(encoded)).numpy()

    def scores(self, batch: np.ndarray, batch_size: int = 64) -> tuple:
        """(n, size, size, channels) images in [0, 1] -> ((n, num_classes) probabilities, (n, dim) features that
        "fits no class" measures, or None where the domain is unknown)."""
        outputs, features = [], []
        for start in range(0, len(batch), batch_size):
            chunk = np.asarray(batch[start:start + batch_size], dtype=np.float32)
            result = self.forward(chunk)
            if self.domain is not None:
                features.append(np.asarray(result[0], np.float64))
                result = result[1]
            outputs.append(np.asarray(result, dtype=np.float64))
        out = np.concatenate(outputs) if outputs else np.zeros((0, 1 if self.record.binary else
                                                                    self.record.num_classes))
        return metrics.class_probabilities(out), (np.concatenate(features) if features else None)

    def probabilities(self, batch: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return self.scores(batch, batch_size)[0]

    @property
    def unsure_band(self) -> float:
        return self.record.calibration.get("unsure_band", marks.UNSURE_BAND)

    def label(self, probabilities: np.ndarray, features: np.ndarray = None) -> Prediction:
        """One row of probabilities (and its features) -> the predicted label with its marks."""
        names = self.class_names
        threshold = self.record.threshold if self.record.binary else 0.5
        index = int(metrics.predicted_labels(probabilities[None], threshold)[0])
        unsure = ""
        if marks.unsure(probabilities[None], threshold, self.unsure_band)[0]:
            unsure = marks.unsure_reason(probabilities, names, threshold)
        fits_no_class = ""
        if features is not None:
            (distance,), (far,) = self.domain.far(features[None])
            fits_no_class = marks.far_reason(distance, self.domain) if far else ""
        return Prediction(names[index], float(probabilities[index]),
                          {name: float(p) for name, p in zip(names, probabilities)}, unsure, fits_no_class)

    @property
    def can_explain(self) -> bool:
        return models.has_evidence(self.network)

    def heatmaps(self, batch: np.ndarray, labels: list) -> np.ndarray:
        """Grad-CAM heatmaps (happysad.explain) of the evidence for each image's label: (n, size, size ×
        panels), the face crop's panel beside the picture's where the network reads both."""
        if not self.can_explain:
            raise ModelError(EXPORTS_CANNOT_EXPLAIN)
        return explain.heatmaps(self.network, batch, [self.class_names.index(label) for label in labels])

    def predict(self, batch) -> list:
        """A Prediction per image: `batch` is an image file path, a list of them, or images prepared as
        load_image prepares them ((n, size, size, channels) in [0, 1], or a list of (size, size, channels)).
        A file that cannot be read as an image is a ValueError naming it."""
        if isinstance(batch, (str, Path)) or isinstance(batch, np.ndarray) and batch.ndim == 3:
            batch = [batch]  # one file, or one image as load_image prepares it
        if not isinstance(batch, np.ndarray):
            batch = list(batch)  # any iterable: a generator, Path.glob(...)
            if not batch:
                return []
            batch = np.stack([item if isinstance(item, np.ndarray) else self.prepared(item) for item in batch])
        probabilities, features = self.scores(batch)
        return [self.label(row, None if features is None else features[i]) for i, row in enumerate(probabilities)]


class ServingSignature:
    """An exported model's serving signature, called like a Keras model: one image batch in, one batch out.

    SavedModel (TF Serving's format) and TFLite both name their inputs and outputs; a happysad model has one
    of each whatever its architecture, so the names are read from the signature rather than assumed. An
    export takes raw uint8 RGB pixels (happysad.export puts the resizing and scaling inside it): the images
    in [0, 1] that every stage prepares are turned back into the pixel values they were scaled from.
    A TFLite interpreter is not thread-safe: callers that share one across threads serialize the calls.
    """

    def __init__(self, signature, input_name: str, output_name: str, input_dtype, owner=None):
        self.signature = signature
        self.input_name = input_name
        self.output_name = output_name
        self.input_dtype = np.dtype(input_dtype)
        self.owner = owner  # a SavedModel's variables live only as long as the object it was loaded into

    def __call__(self, batch, training=False):
        batch = np.asarray(batch, np.float32)
        if self.input_dtype == np.uint8:
            batch = np.clip(np.round(batch * 255.0), 0, 255).astype(np.uint8)
        return self.signature(**{self.input_name: batch})[self.output_name]


def load_saved_model(path) -> ServingSignature:
    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    ((input_name, spec),) = signature.structured_input_signature[1].items()
    (output_name,) = signature.structured_outputs
    return ServingSignature(signature, input_name, output_name, spec.dtype.as_numpy_dtype, owner=loaded)


def load_tflite(path) -> ServingSignature:
    """Through LiteRT (ai-edge-litert), the successor of the deprecated tf.lite.Interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    ((key, names),) = interpreter.get_signature_list().items()
    (input_name,), (output_name,) = names["inputs"], names["outputs"]
    runner = interpreter.get_signature_runner(key)
    input_dtype = runner.get_input_details()[input_name]["dtype"]
    return ServingSignature(runner, input_name, output_name, input_dtype, owner=interpreter)


def load_network(model_path):
    """The network alone, from any format train or export writes: .h5 or .keras through Keras, a .tflite
    file through LiteRT, a SavedModel folder through its serving signature. Callable as network(batch)."""
    model_path = Path(model_path)
    try:
        if model_path.is_dir():
            return load_saved_model(model_path)
        if model_path.suffix == ".tflite":
            return load_tflite(model_path)
        return keras.models.load_model(model_path, compile=False)
    except (OSError, ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ModelError(f"cannot load model {model_path}: {first_line(error)}") from None


def load(model_path) -> Classifier:
    model_path = Path(model_path)
    if not model_path.exists():
        beside = sorted(p.name for p in model_path.parent.glob("*") if p.suffix in record.MODEL_SUFFIXES)
        raise ModelError(f"model {model_path} not found: train one with `python -m happysad.train`"
                         + (f", or pass --model ({model_path.parent} holds {', '.join(beside[:5])})" if beside else ""))
    try:
        model_record = record.read(model_path)
        record.check_belongs(model_path, model_record)
    except (FileNotFoundError, record.RecordError) as error:
        raise ModelError(str(error)) from None
    return Classifier(load_network(model_path), model_record)
