"""The one image preprocessing every stage shares: train, evaluate, predict and serve call these,
so a model always sees pictures prepared exactly as it was trained on.

Pixels are decoded by TensorFlow's own decoder (always RGB, never OpenCV's BGR), resized bilinearly to a
square and scaled to [0, 1]. Models that want another range (ImageNet backbones) convert inside the model.
"""
import re

import tensorflow as tf

# The extensions keras.utils.image_dataset_from_directory reads; it silently skips every other file.
TRAINABLE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def decode(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded image bytes -> float32 RGB tensor of shape (image_size, image_size, 3) in [0, 1]."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), method="bilinear")
    image = tf.ensure_shape(image, (image_size, image_size, 3))
    return image / 255.0


def load(path, image_size: int) -> tf.Tensor:
    """Read and decode one file (a str or a string tensor, so it works inside tf.data.map)."""
    return decode(tf.io.read_file(path), image_size)


def is_trainable_name(name: str) -> bool:
    return name.lower().endswith(TRAINABLE_EXTENSIONS)


def error_reason(error: Exception) -> str:
    """TensorFlow's decode error as one readable line, without the op and device decoration."""
    message = getattr(error, "message", "") or str(error) or type(error).__name__
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", message.splitlines()[0])
    return re.sub(r"\s*\[Op:\w+\].*$", "", message).strip()
