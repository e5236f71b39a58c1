"""The one image preprocessing every stage shares: train, evaluate, predict and serve call these,
so a model always sees pictures prepared exactly as it was trained on.

Pixels are decoded by TensorFlow's own decoder (always RGB, never OpenCV's BGR), resized bilinearly to a
square and scaled to [0, 1]. Models that want another range (ImageNet backbones) convert inside the model.
With faces=True (a model trained with --faces, recorded in its record's preprocessing) the largest face is
cropped out first (happysad.faces), and the whole picture is kept when none is found.
"""
from __future__ import annotations

import re

from happysad import faces as face_detector
from happysad.runtime import tf

# The extensions keras.utils.image_dataset_from_directory reads; it silently skips every other file.
TRAINABLE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def decode_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes -> uint8 RGB tensor at the file's own size (the first frame of a GIF)."""
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def decode(encoded: tf.Tensor, image_size: int, faces: bool = False) -> tf.Tensor:
    """Encoded image bytes -> float32 RGB tensor of shape (image_size, image_size, 3) in [0, 1]."""
    image = decode_pixels(encoded)
    if faces:
        image = crop_face(image)
    image = tf.image.resize(image, (image_size, image_size), method="bilinear")
    image = tf.ensure_shape(image, (image_size, image_size, 3))
    return image / 255.0


def load(path, image_size: int, faces: bool = False) -> tf.Tensor:
    """Read and decode one file (a str or a string tensor, so it works inside tf.data.map)."""
    return decode(tf.io.read_file(path), image_size, faces)


def crop_face(image: tf.Tensor) -> tf.Tensor:
    """The largest face of a decoded uint8 RGB image (OpenCV, via tf.numpy_function so tf.data can call it)."""
    cropped = tf.numpy_function(face_detector.crop, [image], tf.uint8, stateful=False)
    return tf.ensure_shape(cropped, (None, None, 3))


def is_trainable_name(name: str) -> bool:
    return name.lower().endswith(TRAINABLE_EXTENSIONS)


def error_reason(error: Exception) -> str:
    """TensorFlow's decode error as one readable line, without the op and device decoration."""
    message = getattr(error, "message", "") or str(error) or type(error).__name__
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", message.splitlines()[0])
    return re.sub(r"\s*\[Op:\w+\].*$", "", message).strip()
