"""The classifier networks and how they are compiled.

Words, the same in every module: a *network* is a Keras model (layers and weights; what this module builds);
a *model* is what a user trains and keeps: a saved network with its record (`happysad.classifier.Classifier`,
as predict, evaluate, serve and export load it).

Every network takes RGB images scaled to [0, 1] (see `happysad.images`) and ends in one sigmoid unit for two
classes (the probability of the second class) or a softmax over the classes for more. Whatever a network does
between those two ends is a layer inside it: the augmentation (`augment`, active only while training) and
each ImageNet backbone's own input conversion. So a saved model (.h5 or .keras) predicts with no extra code,
and only built-in Keras layers are used, because a Lambda layer does not load back safely.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from happysad.runtime import deferred, keras

layers = deferred("keras.layers")

BACKBONE_NAME = "backbone"


class BuildError(Exception):
    """A network that cannot be built as asked (weights that cannot be had, an image too small), as one line."""


def is_binary(num_classes: int) -> bool:
    return num_classes == 2


def head(num_classes: int, name: str = "prediction") -> layers.Layer:
    # float32 output even under mixed precision, so probabilities and losses stay numerically sound.
    if is_binary(num_classes):
        return layers.Dense(1, activation="sigmoid", dtype="float32", name=name)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name=name)


def augmentation() -> keras.Sequential:
    """Random flips, turns, zooms, shifts and contrast changes: active in training, a no-op when predicting."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal"),
            layers.RandomRotation(0.1),
            layers.RandomZoom(0.1),
            layers.RandomTranslation(0.1, 0.1),
            layers.RandomContrast(0.2, value_range=(0, 1)),
        ],
        name="augment",
    )


def build_cnn(num_classes: int, image_size: int, augment: bool = False, dropout: float = 0.0) -> keras.Model:
    """The design card's network: three Conv2D blocks (16, 32, 16 filters), Dense 256, one output layer.

    With augment=False and dropout=0 it is exactly the card's model; otherwise the augmentation comes first
    and the dropout sits before the output layer.
    """
    return keras.Sequential(
        [keras.Input((image_size, image_size, 3), name="image")]
        + ([augmentation()] if augment else [])
        + [
            layers.Conv2D(16, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(16, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(256, activation="relu"),
        ]
        + ([layers.Dropout(dropout)] if dropout else [])
        + [head(num_classes)],
        name="cnn",
    )


def caffe_input() -> layers.Conv2D:
    """keras.applications' "caffe" preprocess_input (ResNet50, VGG16) for [0, 1] RGB input, as one layer.

    Those backbones want BGR pixels in [0, 255] minus the ImageNet mean. No built-in layer reverses the
    channels, so a frozen 1×1 convolution does it: weight 255 from input channel 2 - i to output channel i,
    bias minus the mean. Its weights are set (and saved) with the model, see `build_backbone`.
    """
    return layers.Conv2D(3, 1, trainable=False, name="caffe_input")


def caffe_weights() -> list:
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for channel in range(3):
        kernel[0, 0, 2 - channel, channel] = 255.0
    return [kernel, -np.array([103.939, 116.779, 123.68], np.float32)]


@dataclass(frozen=True)
class Backbone:
    application: str  # constructor in keras.applications
    input_layers: object  # () -> the layers that turn [0, 1] RGB into the input the backbone was trained on
    weights_file: str  # what Keras downloads for weights="imagenet" (to ~/.keras/models/)
    options: tuple = ()  # further (name, value) arguments of the constructor


def to_pm1() -> list:
    """preprocess_input "tf" (MobileNet v1 and v2): [-1, 1]."""
    return [layers.Rescaling(2.0, offset=-1.0, name="to_pm1")]


BACKBONES = {
    "mobilenet": Backbone("MobileNet", to_pm1, "mobilenet_1_0_224_tf_no_top.h5", (("alpha", 1.0),)),
    # A quarter of the channels: 14x fewer multiply-adds than width 1.0, a 2 MB weights file.
    "mobilenet025": Backbone("MobileNet", to_pm1, "mobilenet_2_5_224_tf_no_top.h5", (("alpha", 0.25),)),
    "mobilenetv2": Backbone("MobileNetV2", to_pm1,
                            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    # EfficientNet scales and normalises inside itself; it wants [0, 255].
    "efficientnetb0": Backbone("EfficientNetB0", lambda: [layers.Rescaling(255.0, name="to_255")],
                               "efficientnetb0_notop.h5"),
    "resnet50": Backbone("ResNet50", lambda: [caffe_input()],
                         "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg16": Backbone("VGG16", lambda: [caffe_input()], "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # preprocess_input "torch": [0, 1] minus the ImageNet mean, divided by its standard deviation.
    "densenet121": Backbone("DenseNet121", lambda: [layers.Normalization(
        mean=[0.485, 0.456, 0.406], variance=[0.229 ** 2, 0.224 ** 2, 0.225 ** 2], name="imagenet_norm")],
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}
ARCHITECTURES = ("cnn",) + tuple(BACKBONES)


@dataclass(frozen=True)
class Recipe:
    """train's defaults for one --arch: what measured best on real web photos (see the README).

    For a pretrained backbone, epochs and patience count the head's epochs on stored features (milliseconds
    each); augment applies to fine-tuning, views to the stored features.
    """

    image_size: int
    epochs: int = 100
    patience: int = 10
    dropout: float = 0.5
    augment: bool = True
    views: int = 1
    fine_tune: int = 0


RECIPES = {"cnn": Recipe(image_size=128, epochs=60), **{arch: Recipe(image_size=224) for arch in BACKBONES}}


def recipe(arch: str, weights: str) -> Recipe:
    """The recipe for --arch; a backbone trained from scratch (--weights none) trains like the CNN."""
    return RECIPES["cnn" if weights == "none" else arch]
MIN_IMAGE_SIZE = 32  # the smallest input keras.applications accepts for these backbones, and the CNN's pooling


def backbone_weights(arch: str, weights: str):
    """--weights imagenet|none|PATH -> what keras.applications takes ("imagenet", None or the path)."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    if not Path(weights).is_file():
        raise BuildError(f"weights file {weights} not found (expected Keras' {BACKBONES[arch].weights_file} "
                           "or another *_notop.h5 file for this backbone)")
    return weights


def build_backbone(arch: str, num_classes: int, image_size: int, *, augment: bool = False,
                   dropout: float = 0.0, weights: str = "imagenet") -> keras.Model:
    """A Keras Applications backbone under a new head: input conversion, backbone, average pool, dropout, head.

    With pretrained weights the backbone is frozen and runs in inference mode (its BatchNorm statistics stay
    those it learnt on ImageNet, also when `unfreeze_top` later opens its top layers). With weights "none"
    there is nothing to keep, so it trains from scratch like any other network.
    """
    spec = BACKBONES[arch]
    pretrained = backbone_weights(arch, weights)
    if image_size < MIN_IMAGE_SIZE:
        raise BuildError(f"--arch {arch} needs --image-size {MIN_IMAGE_SIZE} or more, got {image_size}")
    try:
        base = getattr(keras.applications, spec.application)(
            include_top=False, weights=pretrained, input_shape=(image_size, image_size, 3), name=BACKBONE_NAME,
            **dict(spec.options))
    except Exception as error:  # keras.utils.get_file raises a bare Exception when it cannot download
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if pretrained == "imagenet":
            raise BuildError(
                f"cannot get the ImageNet weights for {arch} ({reason}); without network access, fetch "
                f"{spec.weights_file} where there is one and pass --weights PATH_TO_IT "
                "(or put it in ~/.keras/models/), or train from scratch with --weights none") from None
        raise BuildError(f"cannot build {arch} with weights {weights}: {reason}") from None

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = augmentation()(inputs) if augment else inputs
    converters = spec.input_layers()
    for layer in converters:
        x = layer(x)
    if pretrained:
        base.trainable = False
        x = base(x, training=False)
    else:
        x = base(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    network = keras.Model(inputs, head(num_classes)(x), name=arch)
    for layer in converters:
        if layer.name == "caffe_input":
            layer.set_weights(caffe_weights())
    return network


def split_at_pool(network: keras.Model) -> tuple:
    """(features, head) of a backbone network: image -> pooled backbone features, and features -> prediction.

    Both share the network's own layers, so training the head trains the network's head: the saved model
    stays one Keras network (input conversion, backbone, head) and needs nothing else to predict.
    """
    pooled = network.get_layer("pool").output
    features = keras.Model(network.input, pooled, name="features")
    inputs = keras.Input(pooled.shape[1:], name="features")
    x = inputs
    if any(layer.name == "dropout" for layer in network.layers):
        x = network.get_layer("dropout")(x)
    return features, keras.Model(inputs, network.get_layer("prediction")(x), name="head")


def build(arch: str, num_classes: int, image_size: int, *, augment: bool = False, dropout: float = 0.0,
          weights: str = "imagenet") -> keras.Model:
    if arch == "cnn":
        return build_cnn(num_classes, image_size, augment, dropout)
    if arch not in BACKBONES:
        raise BuildError(f"unknown --arch {arch}; choose one of {', '.join(ARCHITECTURES)}")
    return build_backbone(arch, num_classes, image_size, augment=augment, dropout=dropout, weights=weights)


def unfreeze_top(network: keras.Model, count: int) -> int:
    """Make the top `count` layers of the backbone trainable, BatchNormalization excepted; returns how many.

    Compile the network again afterwards (with a lower learning rate) for the change to take effect.
    """
    base = network.get_layer(BACKBONE_NAME)
    base.trainable = True
    opened = 0
    for index, layer in enumerate(base.layers):
        layer.trainable = (index >= len(base.layers) - count
                           and not isinstance(layer, layers.BatchNormalization) and bool(layer.weights))
        opened += layer.trainable
    return opened


def compile_model(network: keras.Model, num_classes: int, learning_rate: float = 1e-3, jit: bool = False,
                  steps_per_execution: int = 1) -> keras.Model:
    """Adam, cross-entropy and accuracy (plus precision, recall and AUC for two classes); jit: XLA."""
    if is_binary(num_classes):
        loss = "binary_crossentropy"
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"),
                   keras.metrics.Precision(name="precision"),
                   keras.metrics.Recall(name="recall"),
                   keras.metrics.AUC(name="auc")]
    else:
        loss = "sparse_categorical_crossentropy"
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    network.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics, jit_compile=jit,
                  steps_per_execution=steps_per_execution)
    return network
