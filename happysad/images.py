"""What training reads and how a picture becomes a model's input, for every stage.

`FORMATS` is the one table of the image formats training reads: clean checks files against it, training
lists files by it, serve accepts uploads by it. `Preprocessing` is the one object that turns a file into a
model's input: train, evaluate, predict, serve and review call it, the caches are keyed by it, and the record
stores it, so a model always sees pictures prepared exactly as it was trained on.

Pixels are decoded by TensorFlow's own decoder (always RGB, never OpenCV's BGR), turned upright as the file's
EXIF orientation says (a phone stores a portrait photo sideways and says so; every viewer and browser turns it,
so that is the picture the user saw and labelled; TensorFlow's decoder does not), resized bilinearly to a
square and scaled to [0, 1]. Models that want another range (ImageNet backbones) convert inside the model.
With faces=True (--faces) the largest face is cropped out first (happysad.faces), and the whole picture is
kept when none is found. With face_beside=True both are kept, side by side in the channels: a network that
joins a backbone reading the whole picture and one reading the face (happysad.model) takes each its own.
"""
from __future__ import annotations

import dataclasses
import io
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import PIL.Image

from happysad import faces as face_detector
from happysad.runtime import tf

ORIENTATION_TAG = 0x0112  # EXIF's Orientation: 1 as stored, 2-8 the seven flips and turns a viewer applies


@dataclass(frozen=True)
class ImageFormat:
    name: str  # as people write it: "JPEG"
    kind: str  # as imghdr names it: "jpeg"
    extensions: tuple  # that a file of this format may carry; clean renames to the first
    signatures: tuple  # the bytes a file of this format starts with


# What TensorFlow's decode_image reads, and keras.utils.image_dataset_from_directory lists (it skips every
# other extension silently).
FORMATS = (
    ImageFormat("JPEG", "jpeg", (".jpg", ".jpeg"), (b"\xff\xd8\xff",)),
    ImageFormat("PNG", "png", (".png",), (b"\x89PNG\r\n\x1a\n",)),
    ImageFormat("GIF", "gif", (".gif",), (b"GIF87a", b"GIF89a")),
    ImageFormat("BMP", "bmp", (".bmp",), (b"BM",)),
)
TRAINABLE_EXTENSIONS = tuple(extension for image_format in FORMATS for extension in image_format.extensions)
FORMAT_NAMES = ", ".join(f.name for f in FORMATS[:-1]) + f" or {FORMATS[-1].name}"  # "JPEG, PNG, GIF or BMP"


def trainable_format(data: bytes) -> ImageFormat | None:
    """The trainable format the bytes start like, or None."""
    return next((f for f in FORMATS if data.startswith(f.signatures)), None)


def is_trainable_name(name: str) -> bool:
    return name.lower().endswith(TRAINABLE_EXTENSIONS)


@dataclass(frozen=True)
class Preprocessing:
    """The settings that turn a file into a model's input. A setting added here reaches every stage, the
    cache keys and the record."""

    image_size: int
    faces: bool = False
    face_beside: bool = False  # (size, size, 6): the whole picture's RGB, then its largest face's
    upright: bool = True  # turned as the EXIF orientation says; False in records of release 0.10 and earlier

    def __post_init__(self):
        if self.faces and self.face_beside:
            raise ValueError("faces crops every picture to its face; face_beside keeps the picture and its face: "
                             "choose one")

    # Fixed steps, written into the record for whoever audits a model; VERSION names them in cache keys.
    STEPS: ClassVar[dict] = {"decode": "tf.io.decode_image RGB", "resize": "bilinear", "scale": "1/255"}
    VERSION: ClassVar[str] = "v1"

    @property
    def channels(self) -> int:
        return 6 if self.face_beside else 3

    def decode(self, encoded) -> tf.Tensor:
        """Encoded image bytes -> float32 tensor of shape (image_size, image_size, channels) in [0, 1]: RGB,
        and with face_beside the face crop's RGB after the picture's."""
        image = decode_pixels(encoded, self.upright)
        if self.face_beside:
            return tf.concat([self.resize(image), self.resize(crop_face(image))], axis=-1)
        return self.resize(crop_face(image) if self.faces else image)

    def resize(self, image) -> tf.Tensor:
        """uint8 RGB at any size -> float32 (image_size, image_size, 3) in [0, 1]."""
        image = tf.image.resize(image, (self.image_size, self.image_size), method="bilinear")
        return tf.ensure_shape(image, (self.image_size, self.image_size, 3)) / 255.0

    def load(self, path) -> tf.Tensor:
        """Read and decode one file (a str or a string tensor, so it works inside tf.data.map)."""
        return self.decode(tf.io.read_file(path))

    @property
    def key(self) -> str:
        """Names these settings in cache keys: any change makes new caches."""
        view = "faces" if self.faces else "whole+face" if self.face_beside else "whole"
        return f"{self.VERSION}|{self.image_size}|{view}" + ("|upright" if self.upright else "")

    def to_record(self) -> dict:
        return {**dataclasses.asdict(self), **self.STEPS}

    @classmethod
    def from_record(cls, values: dict) -> Preprocessing:
        """The preprocessing a record names; a record that does not say `upright` was written before photos
        were turned, and its model keeps seeing them as it was trained on them."""
        values = {"upright": False, **values}
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def decode_pixels(encoded, upright: bool = True) -> tf.Tensor:
    """Encoded image bytes -> uint8 RGB tensor at the file's own size (the first frame of a GIF), turned
    upright as its EXIF orientation says unless upright=False."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    if not upright:
        return image
    return turned(image, tf.numpy_function(exif_orientation, [encoded], tf.int32, stateful=False))


def exif_orientation(encoded: bytes) -> np.int32:
    """The EXIF orientation (1-8) of an image file's bytes, read by Pillow from the header alone; 1 (as
    stored) when the file has none or it cannot be read. tf.numpy_function hands the bytes over as a 0-d
    array (of dtype object when eager, bytes in a tf.data graph): .item() gives the bytes either way."""
    try:
        with PIL.Image.open(io.BytesIO(np.asarray(encoded).item())) as image:
            if image.format == "PNG" and "exif" not in image.info:
                return np.int32(1)  # getexif() would decode the whole PNG to look for a late eXIf chunk
            value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a header Pillow cannot read, or its guard against huge images: TensorFlow decodes them
        return np.int32(1)
    return np.int32(value if value in range(1, 9) else 1)


def turned(image: tf.Tensor, orientation) -> tf.Tensor:
    """The pixels as a viewer shows them for each EXIF orientation: 2 mirrored, 3 turned half way round,
    4 flipped upside down, 5 transposed, 6 turned a quarter clockwise, 7 transposed the other way, 8 turned
    a quarter anticlockwise."""
    def transposed():
        return tf.transpose(image, [1, 0, 2])

    return tf.ensure_shape(tf.switch_case(tf.clip_by_value(orientation - 1, 0, 7), [  # only its branch runs
        lambda: image,
        lambda: tf.image.flip_left_right(image),
        lambda: tf.image.rot90(image, 2),
        lambda: tf.image.flip_up_down(image),
        transposed,
        lambda: tf.image.rot90(image, 3),
        lambda: tf.image.rot90(transposed(), 2),
        lambda: tf.image.rot90(image, 1),
    ]), (None, None, 3))


def crop_face(image: tf.Tensor) -> tf.Tensor:
    """The largest face of a decoded uint8 RGB image (OpenCV, via tf.numpy_function so tf.data can call it)."""
    cropped = tf.numpy_function(face_detector.crop, [image], tf.uint8, stateful=False)
    return tf.ensure_shape(cropped, (None, None, 3))


def error_reason(error: Exception) -> str:
    """TensorFlow's decode error as one readable line, without the op and device decoration."""
    message = getattr(error, "message", "") or str(error) or type(error).__name__
    message = re.sub(r"\{\{[^}]*\}\}\s*", "", message.splitlines()[0])
    return re.sub(r"\s*\[Op:\w+\].*$", "", message).strip()
