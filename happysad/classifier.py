"""A saved model and its record, ready to label images: what predict, evaluate and serve share.

Images are prepared by `happysad.images` exactly as in training; probabilities always come back as one
column per class (for a two-class model, [1 - p, p] where p is the sigmoid output), and labels come from the
record's class names, never from a hard-coded "0 = happy".
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from happysad import images, record


class ModelError(Exception):
    """The model or its record cannot be used, reported as one line."""


@dataclass
class Prediction:
    label: str
    probability: float
    probabilities: dict

    def top(self, k: int) -> list:
        ranked = sorted(self.probabilities.items(), key=lambda item: item[1], reverse=True)
        return [{"label": label, "probability": p} for label, p in ranked[:k]]


@dataclass
class Classifier:
    model: object
    record: record.Record

    @property
    def class_names(self) -> list:
        return self.record.class_names

    @property
    def image_size(self) -> int:
        return self.record.image_size

    def load_image(self, path) -> np.ndarray:
        return images.load(str(path), self.image_size).numpy()

    def decode(self, encoded: bytes) -> np.ndarray:
        return images.decode(tf.constant(encoded), self.image_size).numpy()

    def probabilities(self, batch: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(n, size, size, 3) images in [0, 1] -> (n, num_classes) probabilities."""
        outputs = []
        for start in range(0, len(batch), batch_size):
            chunk = np.asarray(batch[start:start + batch_size], dtype=np.float32)
            outputs.append(np.asarray(self.model(chunk, training=False), dtype=np.float64))
        out = np.concatenate(outputs) if outputs else np.zeros((0, 1 if self.record.binary else
                                                                    self.record.num_classes))
        if self.record.binary:
            p = out.reshape(-1)
            return np.stack([1.0 - p, p], axis=1)
        return out

    def label(self, probabilities: np.ndarray) -> Prediction:
        """One row of probabilities -> the predicted label, using the record's threshold for two classes."""
        names = self.class_names
        if self.record.binary:
            index = int(probabilities[1] >= self.record.threshold)
        else:
            index = int(np.argmax(probabilities))
        return Prediction(names[index], float(probabilities[index]),
                          {name: float(p) for name, p in zip(names, probabilities)})

    def predict(self, batch: np.ndarray) -> list:
        return [self.label(row) for row in self.probabilities(batch)]


def load(model_path) -> Classifier:
    import keras

    model_path = Path(model_path)
    if not model_path.exists():
        raise ModelError(f"model {model_path} not found: train one with `python -m happysad.train`")
    try:
        model_record = record.read(model_path)
    except FileNotFoundError as error:
        raise ModelError(str(error)) from None
    try:
        model = keras.models.load_model(model_path, compile=False)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load model {model_path}: {str(error).splitlines()[0]}") from None
    return Classifier(model, model_record)
