"""explain: Grad-CAM puts the evidence where the class is decided, for the CNN and for a nested backbone.

Each generated picture is grey noise with one coloured square at a random place: red in the first class, blue
in the second. Nothing else differs, so the only evidence for a class is inside the square. The bounds are
from measurement (in each test): the share of the heatmap's mass inside the
square, widened by a quarter of the picture's side to allow for the feature map's coarse cells, against the
share of the picture that widened square covers.
"""
import numpy as np
import pytest
from conftest import SHARED_WEIGHTS

from happysad import crossval, explain, model as models
from happysad.runtime import keras


def marked(count: int, size: int, side: int, seed: int = 0) -> tuple:
    """(pictures in [0, 1], labels, masks of the widened squares)."""
    rng = np.random.default_rng(seed)
    pictures = np.repeat(rng.uniform(0.2, 0.8, (count, size, size, 1)), 3, axis=-1).astype(np.float32)
    labels = np.arange(count) % 2
    masks = np.zeros((count, size, size), bool)
    margin = size // 8
    for i in range(count):
        y, x = rng.integers(0, size - side, 2)
        pictures[i, y:y + side, x:x + side] = (0.9, 0.1, 0.1) if labels[i] == 0 else (0.1, 0.1, 0.9)
        masks[i, max(0, y - margin):y + side + margin, max(0, x - margin):x + side + margin] = True
    return pictures, labels, masks


def mass_inside(heatmaps, masks) -> np.ndarray:
    return np.array([h[m].sum() / max(h.sum(), 1e-12) for h, m in zip(heatmaps, masks)])


@pytest.mark.slow
def test_the_cnn_looks_at_the_square_also_in_mixed_precision():
    pictures, labels, masks = marked(240, 96, 24)
    keras.utils.set_random_seed(0)
    network = models.compile_model(models.build_cnn(2, 96), 2)
    network.fit(pictures[:200], labels[:200].astype(np.float32), epochs=8, batch_size=16, verbose=0)
    predicted = (network.predict(pictures[200:], verbose=0)[:, 0] >= 0.5).astype(int)
    assert (predicted == labels[200:]).mean() > 0.9
    heatmaps = explain.heatmaps(network, pictures[200:], predicted)
    # Measured: 63 % of the mass inside the widened squares, which cover 23 % of the pictures.
    assert mass_inside(heatmaps, masks[200:]).mean() > 0.55 > 2 * masks[200:].mean()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half = models.build_cnn(2, 96)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    half.set_weights(network.get_weights())
    np.testing.assert_allclose(explain.heatmaps(half, pictures[200:], predicted), heatmaps, atol=0.05)


@pytest.mark.slow
def test_a_nested_imagenet_backbone_looks_at_the_square():
    weights = SHARED_WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"
    if not weights.exists():
        pytest.skip(f"needs ImageNet weights ({weights} is not there): random ones cannot tell the colours apart")
    pictures, labels, masks = marked(120, 224, 56, seed=1)
    network = models.build_linear(("mobilenet025",), 2, 224, str(weights))
    vectors = crossval.unit(models.pooled_output(network).predict(pictures, verbose=0))
    head = crossval.fit_head(vectors[:80], labels[:80], 10.0)
    models.set_head(network, head.coef_, head.intercept_)
    predicted = head.predict(vectors[80:])
    assert (predicted == labels[80:]).mean() > 0.9
    # Measured: 83 % of the mass inside the widened squares (7 x 7 feature map), which cover 22 %.
    inside = mass_inside(explain.heatmaps(network, pictures[80:], predicted), masks[80:])
    assert inside.mean() > 0.7 > 2 * masks[80:].mean()


def test_a_backbone_reading_the_face_beside_the_picture_is_drawn_on_the_crop(face_beside_network):
    """The face crop's evidence is a second panel, to the right of the picture's; each panel is its own branch's
    (what the face channels hold moves only the crop's panel, up to the shared scale), and a branch the head
    gives no weight draws nothing."""
    network, rng = face_beside_network, np.random.default_rng(0)
    pictures = rng.uniform(0, 1, (6, 32, 32, 6)).astype(np.float32)
    other_faces = np.concatenate([pictures[..., :3], rng.uniform(0, 1, (6, 32, 32, 3))], axis=-1).astype(np.float32)
    classes = np.arange(6) % 2
    heatmaps = explain.heatmaps(network, pictures, classes)
    assert heatmaps.shape == (6, 32, 64) and heatmaps[..., :32].max() > 0 and heatmaps[..., 32:].max() > 0
    moved = explain.heatmaps(network, other_faces, classes)
    assert np.abs(moved[..., 32:] - heatmaps[..., 32:]).max() > 0.05

    def own_scale(panel):
        return panel / np.maximum(panel.max(axis=(1, 2), keepdims=True), 1e-12)

    np.testing.assert_allclose(own_scale(moved[..., :32]), own_scale(heatmaps[..., :32]), atol=1e-4)
    kernel, bias = network.get_layer("prediction").get_weights()
    picture_width = network.get_layer("mobilenet025_unit").output.shape[-1]
    for silenced, drawn in ((slice(0, picture_width), slice(32, 64)), (slice(picture_width, None), slice(0, 32))):
        muted = kernel.copy()
        muted[silenced] = 0
        network.get_layer("prediction").set_weights([muted, bias])
        alone = explain.heatmaps(network, pictures, classes)
        blank = slice(0, 32) if drawn.start else slice(32, 64)
        assert alone[..., blank].max() == 0 and alone[..., drawn].max() > 0
    network.get_layer("prediction").set_weights([kernel, bias])
    image = explain.overlay(pictures[0], heatmaps[0])
    assert image.shape == (32, 64, 3)
    # The crop panel is the face channels under the heatmap: where the heatmap is 0, the crop shows through.
    plain = explain.overlay(pictures[0], np.zeros((32, 64)))
    np.testing.assert_allclose(plain[:, 32:], np.clip((1 - explain.OPACITY) * 255 * pictures[0, ..., 3:]
                                                      + explain.OPACITY * np.array([0, 0, 128]), 0, 255), atol=1.5)
