"""Where the model looked: Grad-CAM heatmaps of the evidence for a class, for every network happysad makes.

Grad-CAM weighs each channel of a feature map by how much the class's logit grows with it (the gradient,
averaged over the map) and keeps the positive sum: the regions whose features argued for that class. The feature
maps are each backbone's output (several backbones: their maps, each resized to the picture, added up) or the
CNN's last convolution block; model.evidence_models reaches them also when the backbone is nested inside the
network. The logit is computed from the output layer's own weights, so a saturated sigmoid cannot flatten the
gradient, and the calibration written into that layer changes only the scale, never the map.

A backbone that reads the face crop beside the picture (the expression network with MobileNet) has its map on
the crop: it is drawn as a second panel, the crop to the right of the picture. Each map counts per unit of
area (times its number of cells), and both panels share one scale, so a panel's brightness is its branch's
share of the evidence.
"""
from __future__ import annotations

import cv2
import numpy as np

from happysad import model as models
from happysad.runtime import tf

OPACITY = 0.45  # of the heatmap over the picture
CHUNK = 16  # images whose feature maps and gradients are held at once


def heatmaps(network, batch, classes) -> np.ndarray:
    """(n, size, size × panels) heatmaps in [0, 1] of the evidence for classes[i] in image i of the batch ((n,
    size, size, channels) in [0, 1], as every stage prepares images): one panel, or two where the network reads
    the face crop beside the picture (the picture's, then the crop's)."""
    to_maps, to_features, on_picture = models.evidence_models(network)
    kernel, bias = network.get_layer("prediction").get_weights()
    return np.concatenate([chunk_heatmaps(to_maps, to_features, on_picture, kernel, bias,
                                          batch[start:start + CHUNK], classes[start:start + CHUNK])
                           for start in range(0, len(batch), CHUNK)])


def chunk_heatmaps(to_maps, to_features, on_picture, kernel, bias, batch, classes) -> np.ndarray:
    images = np.asarray(batch, np.float32)
    classes = np.asarray(classes, int)
    maps = [tf.convert_to_tensor(m) for m in tf.nest.flatten(to_maps(images, training=False))]
    with tf.GradientTape() as tape:
        tape.watch(maps)
        features = to_features(maps, training=False)
        logits = tf.matmul(tf.cast(features, tf.float32), kernel) + bias
        if kernel.shape[1] == 1:  # one sigmoid logit: evidence for the first class is evidence against it
            scores = logits[:, 0] * (2.0 * classes - 1.0)
        else:
            scores = tf.gather(logits, classes, axis=1, batch_dims=1)
        total_score = tf.reduce_sum(scores)  # images are independent: each one's gradient is its own
    gradients = tape.gradient(total_score, maps)
    size = images.shape[1:3]
    panels = np.zeros((1 if all(on_picture) else 2, len(classes), *size), np.float32)
    for feature_map, gradient, picture in zip(maps, gradients, on_picture):
        feature_map, gradient = tf.cast(feature_map, tf.float32), tf.cast(gradient, tf.float32)
        weights = tf.reduce_mean(gradient, axis=(1, 2), keepdims=True)
        cells = feature_map.shape[1] * feature_map.shape[2]
        cam = tf.nn.relu(cells * tf.reduce_sum(weights * feature_map, axis=-1, keepdims=True))
        panels[0 if picture else 1] += tf.image.resize(cam, size, method="bilinear").numpy()[..., 0]
    total = np.concatenate(list(panels), axis=2)
    peak = total.reshape(len(classes), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, total / np.maximum(peak, 1e-12), 0.0)


def overlay(image, heatmap) -> np.ndarray:
    """The picture ((h, w, channels) in [0, 1]: the whole picture's RGB, then the face crop's where the network
    reads it beside) with the heatmap laid over it in the jet colours, the crop to the right where the heatmap
    has two panels: uint8 RGB."""
    image = np.asarray(image, np.float32)
    panels = np.asarray(heatmap).shape[1] // image.shape[1]
    picture = np.concatenate([image[..., 3 * panel:3 * panel + 3] for panel in range(panels)], axis=1)
    coloured = cv2.applyColorMap(np.uint8(255 * np.clip(heatmap, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    blended = (1 - OPACITY) * 255 * picture + OPACITY * coloured
    return np.clip(blended, 0, 255).astype(np.uint8)
