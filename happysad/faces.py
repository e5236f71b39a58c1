"""The face crop behind `--faces`: keep the largest frontal face in a picture, or the whole picture if none.

Detection uses OpenCV's Haar cascade `haarcascade_frontalface_default.xml`, shipped inside
opencv-python-headless 4.x (`cv2.data.haarcascades`), so it works offline and needs no model download.
`happysad.images` calls `crop` inside its decode step, so training, evaluate, predict and serve crop alike.
"""
import os
import threading

import cv2
import numpy as np

CASCADE = "haarcascade_frontalface_default.xml"
# Detection runs on a copy whose longer side is at most this many pixels: web photos are often 2000+ px,
# where the cascade is slow, and faces small enough to vanish at this size are too small to classify anyway.
DETECT_SIZE = 640
# Context kept around the detected box, as a fraction of its side (the cascade's box is tight on the
# eyes-to-mouth region; brows and chin help tell expressions apart).
MARGIN = 0.2
MIN_FACE = 24  # the cascade's own training window

_local = threading.local()
# tf.data runs the crop on several threads at once, one per core, so OpenCV runs each detection on the thread
# that asked: its own thread pool on top of tf.data's and TensorFlow's made detection twice as slow (423 web
# photos: 21 s against 11 s for the face pass of --arch auto, 2 cores). Set for the whole process, once, here:
# OpenCV's setting must not change while other threads run its functions.
cv2.setNumThreads(1)


def detector() -> cv2.CascadeClassifier:
    """One cascade per thread: tf.data runs the crop on several threads at once."""
    if not hasattr(_local, "cascade"):
        path = os.path.join(cv2.data.haarcascades, CASCADE)
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"cannot load the face detector {path}; reinstall opencv-python-headless 4.x")
        _local.cascade = cascade
    return _local.cascade


def largest_face(rgb: np.ndarray):
    """(x, y, width, height) of the largest face in an RGB uint8 image, in its pixels, or None."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    scale = min(1.0, DETECT_SIZE / max(gray.shape))
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    boxes = detector().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(MIN_FACE, MIN_FACE))
    if len(boxes) == 0:
        return None
    x, y, w, h = max(boxes, key=lambda box: box[2] * box[3])
    return tuple(int(round(v / scale)) for v in (x, y, w, h))


def crop(rgb: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """The largest face with `margin` of context on each side, or the image itself when no face is found."""
    box = largest_face(rgb)
    if box is None:
        return rgb
    x, y, w, h = box
    pad_x, pad_y = int(w * margin), int(h * margin)
    top, bottom = max(0, y - pad_y), min(rgb.shape[0], y + h + pad_y)
    left, right = max(0, x - pad_x), min(rgb.shape[1], x + w + pad_x)
    return np.ascontiguousarray(rgb[top:bottom, left:right])
