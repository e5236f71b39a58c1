"""The settings of a training or review run: built once, checked once, carried whole, saved with the model.

Each setting is one field of a frozen dataclass, with its default, its help and what kind of setting it is:
filled by the --arch recipe when not given, a hyper-parameter (it changes what the model learns: the record and
TensorBoard's HParams keep it), or only for fits on images. The commands make their options from the fields
(`add_options`), and `happysad.train(...)` takes the same names, so a new setting is one field here plus its
check in `problems`. Errors name the setting between backquotes (errors.SettingError): the library says
`image_size`, the command line --image-size.
"""
import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from happysad import cache, defaults, distribute, features, images, marks, model as models
from happysad.errors import SettingError

RECIPE = "filled from the --arch recipe when not given"
# The train, validation and test fractions of one fit on partitions (fine-tuning; the CNN with --split).
PARTITION_SPLIT = (0.7, 0.2, 0.1)


class ConfigError(SettingError):
    """A setting that is wrong alone or with another."""


def setting(default, help: str, *, recipe: bool = False, hyper: bool = False, images_only: bool = False,
            metavar: str = None, choices=None, parse=None, positional: bool = False):
    """A field of a configuration. recipe: None until the --arch recipe fills it; hyper: changes what the model
    learns; images_only: used by fits on images only (the CNN, fine-tuning), an error beside a cross-validated
    head; parse: turns the command line's text into the value."""
    return dataclasses.field(default=default, metadata=dict(
        help=help, recipe=recipe, hyper=hyper, images_only=images_only, metavar=metavar, choices=choices,
        parse=parse, positional=positional))


def parse_split(text) -> tuple:
    """'0.7,0.2,0.1' (or a sequence of three numbers) -> (0.7, 0.2, 0.1)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(part) for part in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"`split` must be three comma-separated fractions, got {text!r}") from None
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
        raise ConfigError(f"`split` must be three positive fractions summing to 1, got {text!r}")
    return values


def parse_threshold(text):
    """'auto' or a number strictly between 0 and 1."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"`threshold` must be auto or a number, got {text!r}") from None
    if not 0 < value < 1:
        raise ConfigError(f"`threshold` must be between 0 and 1, got {value:g}")
    return value


@dataclass(frozen=True)
class FeatureConfig:
    """What train's cross-validation and review share: the folder, the backbone, its stored features, the
    folds and the marks."""

    TAKES_CNN: ClassVar[bool] = True  # --arch cnn is one of the command's choices
    data: str = setting(defaults.DATA, "folder with one subfolder of images per class")
    arch: str = setting("cnn", "cnn: the design card's network; a pretrained backbone "
                               f"({', '.join(models.BACKBONES)}; {models.EXPRESSION}: a network that knows facial "
                               "expressions, which reads the picture's largest face; "
                               f"{models.FACE_MOBILENET}: MobileNet reading that face) or several joined with '+' "
                               "(their features side by side); "
                               f"{models.AUTO}: cross-validation picks among "
                               f"{', '.join(models.AUTO_BACKBONES)}, alone and together (their weights are "
                               "downloaded once; offline, those in Keras' cache folder are tried)",
                        hyper=True, metavar="|".join(("cnn", models.AUTO, "BACKBONE[+BACKBONE]")))
    weights: str = setting("imagenet", "backbone weights: imagenet (each backbone's published weights, downloaded "
                                       "once into Keras' cache folder), none (train from scratch) or PATH to a "
                                       f"Keras *_notop.h5 file ({models.EXPRESSION}: to {models.EXPRESSION_FILE})")
    image_size: int = setting(None, "images are resized to N×N", recipe=True, metavar="N")
    faces: bool = setting(False, "crop each image to its largest face (OpenCV), the whole image when none is "
                                 "found")
    seed: int = setting(defaults.SEED, "same seed and data: same split, folds and initialisation")
    folds: int = setting(None, "K-fold cross-validation, every photo scored by a model that never saw it: a "
                               "pretrained backbone's head, with the penalty and backbone choices inside it; the "
                               "CNN, K fits on images with the epoch count chosen inside it (its recipe: "
                               f"{models.CNN_FOLDS}, or one fit on partitions from {models.LARGE_FOLDER:,} photos "
                               "on without --holdout)", recipe=True,
                         metavar="K")
    cache: str = setting("auto", "decoded-image and backbone-feature cache: auto (features on disk; images in "
                                 "memory if they fit in half the free RAM, else on disk), memory, disk[:PATH] "
                                 f"(default PATH {cache.DEFAULT_CACHE_DIR}) or none")
    unsure_band: float = setting(marks.UNSURE_BAND, "a prediction whose calibrated probability lies within B "
                                                    "around the threshold (two classes), or whose two highest "
                                                    "probabilities lie within B of each other, is marked unsure",
                                 metavar="B")
    far_share: float = setting(marks.FAR_SHARE, "a picture further from every class than all but a share S of "
                                                "the training photos (each measured by centres that never saw "
                                                "it) is marked 'fits no class'", metavar="S")

    @classmethod
    def build(cls, **given):
        """The configuration of these settings (names as the fields; text as the command line gives it is
        parsed), the recipe filled in, every value checked: ConfigError names the first wrong setting."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; the settings are {', '.join(fields)}")
        for name, value in given.items():
            parse, kind = fields[name].metadata["parse"], fields[name].type
            if isinstance(value, os.PathLike):  # happysad.train(data=Path("photos"))
                given[name] = value = os.fspath(value)
            if parse and value is not None:
                given[name] = parse(value)
            elif isinstance(value, str) and kind in (int, float):  # text, as the command line gives it
                try:
                    given[name] = kind(value)
                except ValueError:
                    raise ConfigError(f"`{name}` must be a number, got {value!r}") from None
            choices = fields[name].metadata["choices"]
            if choices and given[name] not in choices:  # as argparse checks them on the command line
                raise ConfigError(f"`{name}` must be one of {', '.join(map(str, choices))}, got {given[name]!r}")
        config = cls(**given)
        for problem in config.problems(given):
            raise ConfigError(problem)
        recipe = config.recipe()
        return dataclasses.replace(config, **{name: getattr(recipe, name) for name, f in fields.items()
                                              if f.metadata["recipe"] and getattr(config, name) is None})

    def recipe(self) -> models.Recipe:
        return models.recipe(self.arch, self.weights)

    def preprocessing(self, backbones: tuple = None) -> images.Preprocessing:
        """How every image of the run is read: the one preprocessing train, review and the saved model share.
        backbones: those of the network that reads them (default: `arch`'s; with auto, the ones the data chose),
        for which `models.preprocessing_for` says who reads the face."""
        backbones = backbones or self.backbones
        if backbones == ("cnn",):
            return images.Preprocessing(self.image_size, self.faces)
        return models.preprocessing_for(backbones, self.image_size, self.faces)

    @property
    def backbones(self) -> tuple:
        return models.parse_arch(self.arch, offer_cnn=self.TAKES_CNN)

    @property
    def several_backbones(self) -> bool:
        """auto or a '+' list: each backbone takes its published weights from Keras' cache folder."""
        return self.arch == models.AUTO or "+" in self.arch

    def problems(self, given: dict):
        """Each wrong value, as a message naming its setting(s): given is what the user set."""
        try:
            self.backbones
        except models.BuildError as error:
            yield error.args[0]
        if self.image_size is not None and self.image_size < models.MIN_IMAGE_SIZE:
            yield (f"`image_size` must be at least {models.MIN_IMAGE_SIZE} (smaller images vanish in the networks' "
                   "pooling)")
        if self.folds is not None and self.folds < 3:
            yield "`folds` must be at least 3 (each fold's choices are made on the other folds)"
        if not cache.valid_setting(self.cache):
            yield f"`cache` must be {cache.SETTINGS}, got {self.cache!r}"
        if not 0 <= self.unsure_band < 1:
            yield f"`unsure_band` must be in [0, 1), got {self.unsure_band}"
        if not 0 < self.far_share < 0.5:
            yield f"`far_share` must be between 0 and 0.5, got {self.far_share}"
        if self.several_backbones and self.weights != "imagenet":
            yield (f"`arch` {self.arch} takes each backbone's published weights from Keras' cache folder "
                   f"({models.keras_cache_folder()}): `weights` must be imagenet")

    def to_record(self) -> dict:
        return {name: plain(value) for name, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class TrainConfig(FeatureConfig):
    """Everything `python -m happysad.train` and `happysad.train(...)` take."""

    holdout: float = setting(0.0, "also keep a fraction F of the photos (near copies together) as a test "
                                  "partition that neither the cross-validation nor the saved model sees (0: every "
                                  "photo trains the saved model)", hyper=True, metavar="F")
    split: tuple = setting(None, "the CNN: train on partitions with these train,validation,test fractions instead "
                                 "of cross-validating (fine-tuning always does, and the CNN from "
                                 f"{models.LARGE_FOLDER:,} photos on without --folds or --holdout; default "
                                 f"{','.join(map(str, PARTITION_SPLIT))})", hyper=True,
                           metavar="TRAIN,VALIDATION,TEST", parse=parse_split)
    epochs: int = setting(None, "at most this many (see --patience)", recipe=True, hyper=True, images_only=True)
    batch_size: int = setting(32, "images per step (per replica with several devices)", hyper=True)
    learning_rate: float = setting(1e-3, "Adam's, for fits on images", hyper=True, images_only=True)
    fine_tune: int = setting(None, "after training the head, unfreeze the backbone's top N layers (BatchNorm "
                                   "stays frozen) and train the whole model with augmentation at a tenth of the "
                                   "learning rate", recipe=True, hyper=True, metavar="N")
    fine_tune_epochs: int = setting(10, "epochs of the fine-tuning stage", hyper=True)
    augment: bool = setting(None, "random flips, rotations, zooms, shifts and contrast while training the CNN or "
                                  "fine-tuning", recipe=True, hyper=True, images_only=True)
    views: int = setting(None, "--fine-tune: stored views of each training image for the head trained first (1: "
                               "as it is, 2: and mirrored, 4: and a zoomed crop of both)", recipe=True, hyper=True,
                         images_only=True, choices=sorted(features.VIEWS))
    dropout: float = setting(None, "dropout rate before the output layer", recipe=True, hyper=True,
                             images_only=True)
    class_weights: bool = setting(True, "weigh each class by n_images / (n_classes * its count) in the training "
                                        "partition", images_only=True)
    patience: int = setting(None, "on partitions: stop after N epochs without a lower validation loss and keep "
                                  "the best epoch's weights; the learning rate drops 5x after N/2 such epochs. On "
                                  "folds: each fold's fit after the first ends N epochs past the lowest pooled "
                                  "loss of the folds before it (0: off, every fit runs every epoch)",
                            recipe=True, hyper=True, images_only=True, metavar="N")
    threshold: str = setting("auto", "two classes: the decision threshold on the second class's calibrated "
                                     "probability; auto: 0.5, where the classes' probabilities meet, so the label "
                                     "is always the class the shown probability favours (the probabilities are "
                                     "calibrated on photos the model never saw: out of fold, or the validation "
                                     "partition)", hyper=True, metavar="auto|T", parse=parse_threshold)
    resume: bool = setting(False, "continue the run of this same command that was killed, from its last "
                                  "finished epoch (its backup lives beside --model until the run ends)",
                           images_only=True)
    checkpoint: bool = setting(False, "also save the best epoch so far to the run folder as it trains "
                                      "(checkpoint.h5)", images_only=True)
    model: str = setting(defaults.MODEL, "where to save the model (.h5 or .keras)")
    logdir: str = setting(defaults.LOGDIR, "TensorBoard runs go to LOGDIR/RUN_NAME")
    run_name: str = setting(None, "run folder name (default: the start time)")
    strategy: str = setting("auto", "auto: every GPU of this machine when it has several; multiworker: the "
                                    "machines in TF_CONFIG (--batch-size is per replica)",
                            choices=distribute.STRATEGIES)
    mixed_precision: bool = setting(False, "float16 compute on GPUs")
    jit: bool = setting(False, "compile training steps with XLA")

    @property
    def cross_validate(self) -> bool:
        """A pretrained backbone's head, cross-validated on stored features; else a fit on images."""
        return self.arch != "cnn" and self.weights != "none" and not self.fine_tune

    @property
    def folds_on_images(self) -> bool:
        """A fit on images (the CNN, a backbone from scratch) cross-validated by K fits, one per fold; else, with
        `split` or to fine-tune, one fit on partitions."""
        return not self.cross_validate and not self.fine_tune and self.split is None

    @property
    def partition_split(self) -> tuple:
        return self.split or PARTITION_SPLIT

    def hyperparameters(self) -> dict:
        """The settings that change what a fit on images learns, as the record and HParams keep them."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.metadata["hyper"]}

    def problems(self, given: dict):
        yield from super().problems(given)
        if self.cross_validate:
            misplaced = [f"`{f.name}`" for f in dataclasses.fields(self)
                         if f.metadata["images_only"] and f.name in given and given[f.name] != f.default]
            misplaced += ["`strategy` multiworker"] if self.strategy == "multiworker" else []
            if misplaced:
                yield (f"{', '.join(misplaced)}: for fits on images (the CNN, `fine_tune`); a pretrained "
                       "backbone's head is a cross-validated logistic regression with balanced class weights on "
                       "each photo as it is, fitted in seconds")
        if self.cross_validate and "split" in given:
            yield ("`split` applies to the CNN and fine-tuning; a pretrained backbone cross-validates on every "
                   "photo (`folds`) and keeps a test partition only with `holdout`")
        for name in ("epochs", "batch_size", "image_size", "fine_tune_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                yield f"`{name}` must be at least 1"
        if self.dropout is not None and not 0 <= self.dropout < 1:
            yield f"`dropout` must be in [0, 1), got {self.dropout}"
        if (self.patience or 0) < 0 or (self.fine_tune or 0) < 0:
            yield "`patience` and `fine_tune` must not be negative"
        if self.fine_tune and (self.arch == "cnn" or self.weights == "none"):
            yield "`fine_tune` needs a backbone (`arch`) with pretrained `weights` (imagenet or a file)"
        if self.learning_rate <= 0:
            yield f"`learning_rate` must be positive, got {self.learning_rate}"
        if self.several_backbones and self.fine_tune:
            yield f"`fine_tune` opens the top of one backbone: name one (`arch` {models.AUTO_BACKBONES[0]})"
        if (self.holdout or "folds" in given) and not (self.cross_validate or self.folds_on_images):
            yield (f"`{'holdout' if self.holdout else 'folds'}` applies to cross-validation; training on partitions "
                   "(`split`, `fine_tune`) keeps a validation and a test partition")
        if self.folds_on_images:
            partitions_only = [f"`{name}`" for name in ("resume", "checkpoint") if getattr(self, name)]
            partitions_only += ["`strategy` multiworker"] if self.strategy == "multiworker" else []
            if partitions_only:
                yield (f"{', '.join(partitions_only)}: for one fit on partitions; the CNN cross-validates by "
                       "default (K fits, then one on every photo): give `split` (e.g. 0.7,0.2,0.1, what it trains "
                       f"on from {models.LARGE_FOLDER:,} photos on) to train on partitions")
        if self.holdout and not 0.05 <= self.holdout <= 0.5:
            yield f"`holdout` must be 0 or from 0.05 to 0.5, got {self.holdout}"
        if self.resume and self.strategy == "multiworker":
            yield "`resume` works on one machine (one or several GPUs), not with `strategy` multiworker"
        if self.run_name is not None and (not self.run_name or Path(self.run_name).name != self.run_name
                                          or self.run_name in (".", "..") or self.run_name.startswith(".")):
            yield (f"`run_name` names one folder inside `logdir` (no '/', not starting with '.'), got "
                   f"{self.run_name!r}")
        if Path(self.model).suffix not in (".h5", ".keras"):  # as Keras checks: case matters
            yield (f"`model` must end in .h5 or .keras (Keras' two formats), got {self.model}; "
                   "happysad.export writes the other formats")


@dataclass(frozen=True)
class ReviewConfig(FeatureConfig):
    """Everything `python -m happysad.review` takes: train's feature settings, and what to do with suspects."""

    TAKES_CNN: ClassVar[bool] = False

    data: str = setting(None, "folder with one subfolder of images per class", positional=True)
    arch: str = setting("mobilenet", "pretrained backbone whose features are scored "
                                     f"({', '.join(models.BACKBONES)}), several joined with '+' (their features "
                                     f"side by side), or {models.AUTO}: cross-validation chooses among "
                                     f"{', '.join(models.AUTO_BACKBONES)} alone and together, as train's does",
                        metavar="|".join((models.AUTO, "BACKBONE[+BACKBONE]")))
    weights: str = setting("imagenet", "backbone weights: imagenet (each backbone's published weights, downloaded "
                                       "once into Keras' cache folder) or PATH to a Keras *_notop.h5 file")
    min_confidence: float = setting(0.9, "--move-to-suggested and --quarantine act on wrong-folder suspects at "
                                         "least this confident")
    move_to_suggested: bool = setting(False, "move confident wrong-folder suspects into the suggested class "
                                             "folder")
    quarantine: bool = setting(False, "move confident wrong-folder suspects (unless --move-to-suggested) and every "
                                      "fits-no-class image into DATA_DIR/.quarantine/")
    top: int = setting(20, "suspects of each kind in the terminal table and on the contact sheet (the page and "
                           "the JSON list all)")
    html: str = setting("reports/review.html", "the page")
    png: str = setting("reports/review.png", "the contact sheet")
    json: str = setting(None, "also write every image's scores and the suspects to PATH", metavar="PATH")

    def problems(self, given: dict):
        yield from super().problems(given)
        if self.data is None:
            yield "`data` names no folder"
        if self.arch == "cnn":
            yield (f"`arch` cnn: review scores a pretrained backbone's features; name one (`arch` mobilenet), "
                   f"several joined with '+', or {models.AUTO}")
        if self.weights == "none":
            yield "`weights` none gives random features that know nothing about pictures; use imagenet or a file"
        if self.top < 1:
            yield "`top` must be at least 1"
        if not 0 <= self.min_confidence <= 1:
            yield f"`min_confidence` is a probability from 0 to 1 (0.9: at least 90 % sure), got {self.min_confidence}"


def plain(value):
    """A setting's value as JSON keeps it."""
    return list(value) if isinstance(value, tuple) else value


def add_options(parser: argparse.ArgumentParser, config_class) -> None:
    """One command-line option per field of config_class, named after it (image_size: --image-size). Options
    not given stay out of the namespace (argparse.SUPPRESS), so config_class.build knows what the user set and
    owns every default."""
    for field in dataclasses.fields(config_class):
        meta, kind = field.metadata, field.type
        default = ("; " + RECIPE) if meta["recipe"] else (
            f" (default {field.default})" if field.default not in (None, False) else "")
        options = dict(help=meta["help"] + default, default=argparse.SUPPRESS)
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            # A setting with its own parser gets the text: build parses it and words its error as the others.
            options.update(type=str if meta["parse"] else kind, metavar=meta["metavar"], choices=meta["choices"])
        if meta["positional"]:
            del options["default"]  # a positional argument is required: always given
            parser.add_argument(field.name, **options)
        else:
            parser.add_argument("--" + field.name.replace("_", "-"), **options)


def from_command_line(parser: argparse.ArgumentParser, config_class, argv=None):
    """The configuration the command line asks for; a wrong setting is argparse's one-line error, as flags."""
    given = vars(parser.parse_args(argv))
    try:
        return config_class.build(**given)
    except ConfigError as error:
        parser.error(error.as_flags())

