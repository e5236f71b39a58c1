"""python -m happysad.train: train a classifier on data/<class>/ images.

A pretrained backbone (--arch mobilenet, a '+' list, or auto): folder → near-copy groups → backbone features,
stored once per image → nested cross-validation of a logistic-regression head (happysad.crossval): every photo
scored by a head that never saw it nor its near copies → the same choices on every photo → models/happysad.h5
+ models/happysad.json. The CNN, and fine-tuning: folder → leak-free split (file lists) → cached tf.data
pipelines → fit with TensorBoard → test metrics on the held-out partition → the same files. Either way a run
folder logs/<run>/ gets TensorBoard events and a copy of the record.
"""
import argparse
import contextlib
import datetime
import io
import itertools
import json
import shutil
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from happysad import (cache, calibration, classifier, crossval, data, defaults, distribute, features, images, marks,
                      metrics, model as models, near_copies, record, reports, summaries)
from happysad.files import sha256_each, write_atomic
from happysad.runtime import deferred, enable_memory_growth, keras

callbacks = deferred("happysad.callbacks")  # defines Keras classes: imported when training starts

# The options of a fit on images that change what the model learns, as the record and TensorBoard's HParams
# keep them; the rest name files, tune speed (--jit, --resume) or live in fields of the record of their own
# (the preprocessing, the seed, the marks), and a new option joins this list only when it is added here.
FIT_HYPERPARAMETERS = ("arch", "epochs", "batch_size", "learning_rate", "fine_tune", "fine_tune_epochs", "views",
                       "dropout", "patience", "threshold")


# Options of fits on images (the CNN, fine-tuning) that a cross-validated head has no use for.
FIT_OPTIONS = ("epochs", "dropout", "patience", "augment", "views", "learning_rate")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m happysad.train", description=__doc__.splitlines()[0],
        epilog="Options marked 'recipe' default to the measured recipe of the --arch: "
               + "; ".join(f"{arch}: {recipe_text(arch)}" for arch in models.ARCHITECTURES))
    parser.add_argument("--data", default=defaults.DATA, help="folder with one subfolder of images per class")
    parser.add_argument("--arch", default="cnn", metavar="|".join(("cnn", models.AUTO, "BACKBONE[+BACKBONE]")),
                        help="cnn: the design card's network; a pretrained backbone "
                             f"({', '.join(models.BACKBONES)}; {models.EXPRESSION}: a network that knows facial "
                             "expressions, for folders of faces) or several joined with '+' (their features "
                             f"side by side); {models.AUTO}: cross-validation picks among "
                             f"{', '.join(models.AUTO_BACKBONES)}, alone and in pairs (their weights are "
                             "downloaded once; offline, those in Keras' cache folder are tried)")
    parser.add_argument("--weights", default="imagenet",
                        help="backbone weights: imagenet (each backbone's published weights, downloaded once into "
                             "Keras' cache folder), none (train from scratch) or PATH to a Keras *_notop.h5 file "
                             f"({models.EXPRESSION}: to {models.EXPRESSION_FILE}) (default: imagenet)")
    parser.add_argument("--epochs", type=int, help="at most this many (see --patience); recipe")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, help="images are resized to N×N; recipe")
    parser.add_argument("--seed", type=int, default=defaults.SEED, help="same seed and data: same split and init")
    parser.add_argument("--folds", type=int, default=5,
                        help="pretrained backbone: K-fold cross-validation that measures the head, and the "
                             "penalty, threshold and backbone choices inside it (default 5)")
    parser.add_argument("--holdout", type=float, default=0.0, metavar="F",
                        help="pretrained backbone: also keep a fraction F of the photos (near copies together) "
                             "as a test partition that neither the cross-validation nor the saved model sees "
                             "(default 0: every photo trains the saved model)")
    parser.add_argument("--split", help="CNN and fine-tuning: train,validation,test fractions (default 0.7,0.2,0.1)")
    parser.add_argument("--learning-rate", type=float, help="Adam's, for fits on images (default 0.001)")
    parser.add_argument("--fine-tune", type=int, metavar="N",
                        help="after training the head, unfreeze the backbone's top N layers (BatchNorm stays "
                             "frozen) and train the whole model with augmentation at a tenth of the learning "
                             "rate; recipe")
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction,
                        help="random flips, rotations, zooms, shifts and contrast while training the CNN or "
                             "fine-tuning; recipe")
    parser.add_argument("--views", type=int, choices=sorted(features.VIEWS),
                        help="--fine-tune: stored views of each training image for the head trained first (1: as it is, 2: and "
                             "mirrored, 4: and a zoomed crop of both); recipe")
    parser.add_argument("--dropout", type=float, help="dropout rate before the output layer; recipe")
    parser.add_argument("--class-weights", action=argparse.BooleanOptionalAction, default=True,
                        help="weigh each class by n_images / (n_classes * its count) in the training partition")
    parser.add_argument("--patience", type=int,
                        help="stop after N epochs without a lower validation loss and keep the best epoch's "
                             "weights; the learning rate drops 5x after N/2 such epochs (0: off); recipe")
    parser.add_argument("--threshold", default="auto", metavar="auto|T",
                        help="two classes: the decision threshold on the second class's calibrated probability; "
                             "auto (default): 0.5, where the classes' probabilities meet, so the label is always "
                             "the class the shown probability favours (the probabilities are calibrated on "
                             "photos the model never saw: out of fold, or the validation partition)")
    parser.add_argument("--unsure-band", type=float, default=marks.UNSURE_BAND, metavar="B",
                        help="predictions whose calibrated probability lies within B around the threshold (two "
                             "classes), or whose two highest probabilities lie within B of each other, are "
                             f"marked unsure (default {marks.UNSURE_BAND})")
    parser.add_argument("--far-share", type=float, default=marks.FAR_SHARE, metavar="S",
                        help="a picture further from every class than all but a share S of the training photos "
                             "(each measured by centres that never saw it) is marked 'fits no class' (default "
                             f"{marks.FAR_SHARE})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run of this same command that was killed, from its last finished "
                             "epoch (its backup lives beside --model until the run ends)")
    parser.add_argument("--checkpoint", action="store_true",
                        help="also save the best epoch so far to the run folder as it trains (checkpoint.h5; fits on images: "
                             "the CNN and fine-tuning)")
    parser.add_argument("--faces", action="store_true",
                        help="crop each image to its largest face (OpenCV), the whole image when none is found")
    parser.add_argument("--model", default=defaults.MODEL, help="where to save the model (.h5)")
    parser.add_argument("--logdir", default=defaults.LOGDIR, help="TensorBoard runs go to LOGDIR/RUN_NAME")
    parser.add_argument("--run-name", help="run folder name (default: the start time)")
    parser.add_argument("--cache", default="auto",
                        help="decoded-image and backbone-feature cache: auto (features on disk; images in memory "
                             "if they fit in half the free RAM, else on disk), memory, "
                             f"disk[:PATH] (default PATH {cache.DEFAULT_CACHE_DIR}) or none")
    parser.add_argument("--strategy", default="auto", choices=distribute.STRATEGIES,
                        help="auto: every GPU of this machine when it has several; multiworker: the machines in "
                             "TF_CONFIG (--batch-size is per replica)")
    parser.add_argument("--mixed-precision", action="store_true", help="float16 compute on GPUs")
    parser.add_argument("--jit", action="store_true", help="compile training steps with XLA")
    args = parser.parse_args(argv)
    try:
        args.backbones = models.parse_arch(args.arch)
    except models.BuildError as error:
        parser.error(str(error))
    args.cross_validate = args.arch != "cnn" and args.weights != "none" and not args.fine_tune
    if args.cross_validate:
        given = [f"--{name.replace('_', '-')}" for name in FIT_OPTIONS if getattr(args, name) is not None] + [
            flag for flag, used in (("--no-class-weights", not args.class_weights), ("--resume", args.resume),
                                    ("--checkpoint", args.checkpoint),
                                    ("--strategy multiworker", args.strategy == "multiworker")) if used]
        if given:
            parser.error(f"{', '.join(given)}: for fits on images (the CNN, --fine-tune); a pretrained backbone's "
                         "head is a cross-validated logistic regression with balanced class weights on each "
                         "photo as it is, fitted in seconds")
    if args.learning_rate is None:
        args.learning_rate = 1e-3
    recipe = models.recipe(args.arch, args.weights)
    for name in ("epochs", "image_size", "dropout", "augment", "patience", "fine_tune", "views"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(recipe, name))
    for name in ("epochs", "batch_size", "image_size", "fine_tune_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.image_size < models.MIN_IMAGE_SIZE:
        parser.error(f"--image-size must be at least {models.MIN_IMAGE_SIZE} (smaller images vanish in the "
                     "networks' pooling)")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.patience < 0 or args.fine_tune < 0:
        parser.error("--patience and --fine-tune must not be negative")
    if args.fine_tune and (args.arch == "cnn" or args.weights == "none"):
        parser.error("--fine-tune needs a backbone (--arch) with pretrained --weights (imagenet or a file)")
    if len(args.backbones) > 1 or args.arch == models.AUTO:
        if args.weights != "imagenet":
            parser.error(f"--arch {args.arch} takes each backbone's published weights from Keras' cache folder "
                         f"({models.keras_cache_folder()}): --weights must be imagenet")
        if args.fine_tune:
            parser.error(f"--fine-tune opens the top of one backbone: name one (--arch {models.AUTO_BACKBONES[0]})")
    if args.cross_validate:
        if args.split is not None:
            parser.error("--split applies to the CNN and fine-tuning; a pretrained backbone cross-validates on "
                         "every photo (--folds) and keeps a test partition only with --holdout")
        if args.folds < 3:
            parser.error("--folds must be at least 3 (each fold's choices are made on the other folds)")
        if args.holdout and not 0.05 <= args.holdout <= 0.5:
            parser.error(f"--holdout must be 0 or from 0.05 to 0.5, got {args.holdout}")
    elif args.holdout:
        parser.error("--holdout applies to a pretrained backbone's cross-validation; the CNN and fine-tuning keep "
                     "a test partition by --split")
    args.split = args.split or "0.7,0.2,0.1"
    if not cache.valid_setting(args.cache):
        parser.error(f"--cache must be {cache.SETTINGS}, got {args.cache!r}")
    if not 0 <= args.unsure_band < 1:
        parser.error(f"--unsure-band must be in [0, 1), got {args.unsure_band}")
    if not 0 < args.far_share < 0.5:
        parser.error(f"--far-share must be between 0 and 0.5, got {args.far_share}")
    if args.resume and args.strategy == "multiworker":
        parser.error("--resume works on one machine (one or several GPUs), not with --strategy multiworker")
    if args.threshold != "auto":
        try:
            args.threshold = float(args.threshold)
        except ValueError:
            parser.error(f"--threshold must be auto or a number, got {args.threshold!r}")
        if not 0 < args.threshold < 1:
            parser.error(f"--threshold must be between 0 and 1, got {args.threshold}")
    try:
        args.fractions = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        parser.error(f"--split must be three comma-separated fractions, got {args.split!r}")
    return args


def recipe_text(arch: str) -> str:
    recipe = models.RECIPES[arch]
    text = f"{recipe.image_size} px, up to {recipe.epochs} epochs, patience {recipe.patience}, dropout {recipe.dropout}"
    if arch == "cnn":
        return text + (", augment" if recipe.augment else "")
    return f"{recipe.image_size} px; with --fine-tune, first {text}, {recipe.views} view(s)"


def run_folder(logdir, run_name) -> Path:
    name = run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, n = Path(logdir) / name, 2
    while folder.exists():
        folder, n = Path(logdir) / f"{name}-{n}", n + 1
    folder.mkdir(parents=True)
    return folder


@dataclass(frozen=True)
class Folder:
    """The user's images as training reads them: classes, files, each file's sha256 (what the stores find its
    arrays by) and near-copy group."""

    class_names: list
    files: data.Files
    digests: dict
    groups: list


def read_folder(args) -> Folder:
    class_names = data.find_classes(args.data)
    files, skipped = data.list_images(args.data, class_names)
    if skipped:
        print(f"note: {len(skipped)} file(s) with extensions training does not read are ignored "
              f"(e.g. {skipped[0]}): run `python -m happysad.clean {args.data}` to convert or quarantine them")
    digests = dict(zip(files.paths, sha256_each(files.paths)))
    groups = data.near_copy_groups(files, cache.array_store(args.cache, near_copies.FAMILY, near_copies.VERSION),
                                   list(digests.values()))
    print(f"classes: {', '.join(f'{i}={name}' for i, name in enumerate(class_names))}")
    return Folder(class_names, files, digests, groups)


def train(args) -> dict:
    if args.cross_validate:
        return train_with_folds(args)
    return train_on_partitions(args)


def train_with_folds(args) -> dict:
    """A pretrained backbone: nested cross-validation of the logistic-regression head on stored features,
    then the head the data chose, trained on every photo (but a --holdout partition)."""
    started = time.time()
    keras.utils.set_random_seed(args.seed)
    folder = read_folder(args)
    class_names, preprocessing = folder.class_names, images.Preprocessing(args.image_size, args.faces)
    group_of = dict(zip(folder.files.paths, folder.groups))
    if args.holdout:
        files, test = data.hold_out(folder.files, args.holdout, args.seed, folder.groups, class_names)
    else:
        files, test = folder.files, data.Files([], [])
    groups = [group_of[path] for path in files.paths]
    copies = near_copy_lists(folder.files, folder.groups, args.data)
    if copies:
        print(f"near copies: {sum(map(len, copies))} images in {len(copies)} groups, each kept in one fold")
    for name, part in (("training", files), ("holdout", test)):
        if len(part) or name == "training":
            print(f"{name:>10}: {len(part):5d} images  " + "  ".join(
                f"{c}={n}" for c, n in zip(class_names, part.count_per_class(len(class_names)))))
    folds = data.make_folds(files.labels, groups, args.folds, args.seed, class_names)

    # -- features: each candidate backbone's, stored once per image -----------------------------------------
    everything = data.Files(files.paths + test.paths, files.labels + test.labels)
    per_backbone = backbone_features(args, everything, preprocessing, folder.digests)
    backbones = tuple(per_backbone)
    candidates = (["+".join(pair) for n in (1, 2) for pair in itertools.combinations(backbones, n)]
                  if args.arch == models.AUTO else [args.arch])
    feature_sets = {name: crossval.joined(per_backbone, name.split("+")) for name in candidates}

    # -- measure: nested cross-validation; then the choices made on every photo ------------------------------
    labels = np.asarray(files.labels, int)
    mark = time.time()
    measurement = crossval.cross_validate({name: vectors[:len(files)] for name, vectors in feature_sets.items()},
                                          labels, folds, threshold=args.threshold)
    cross_validated = measurement.summary(labels, class_names)
    print(candidates_table(measurement))
    choice = measurement.final
    head = crossval.fit_head(feature_sets[choice.features][:len(files)], labels, choice.penalty)
    print(f"cross-validation: {args.folds} folds in {time.time() - mark:.1f} s; chosen on every photo: "
          f"{choice.features}, C {choice.penalty:g}, {scaling_text(choice.scaling, len(class_names))}")
    print(cross_validation_line(cross_validated, class_names))

    # -- the saved network: the chosen backbones and the head in one Keras model ----------------------------
    network = models.build_linear(tuple(choice.features.split("+")), len(class_names), preprocessing.image_size,
                                  args.weights)
    models.set_head(network, head.coef_, head.intercept_)
    calibration.apply_to_network(network, choice.scaling)
    vectors = feature_sets[choice.features][:len(files)]
    domain = marks.Domain(marks.class_centres(vectors, labels, len(class_names)), marks.far_limit(
        marks.out_of_fold_distances(vectors, labels, folds, len(class_names)), args.far_share))
    model_metrics = {"cross_validation": cross_validated, "train_seconds": time.time() - started}
    if len(test):
        probabilities = calibration.apply(choice.scaling, head.predict_proba(feature_sets[choice.features][len(files):]))
        model_metrics["test"] = metrics.summarize(test.labels, probabilities, class_names, choice.threshold)
        print(test_line(model_metrics["test"], class_names))

    run_dir = run_folder(args.logdir, args.run_name)
    hyperparameters = {"data": str(args.data), "arch": args.arch, "weights": args.weights, "folds": args.folds,
                       "holdout": args.holdout, "threshold": args.threshold, "head": "logistic regression",
                       "features": choice.features, "penalty": choice.penalty,
                       "calibration": choice.scaling.to_record()}
    summaries.write_hyperparameters(run_dir, hyperparameters, preprocessing, args.seed)
    summaries.write_measured(run_dir, model_metrics)
    run_record = record.Record(
        class_names=class_names,
        preprocessing=preprocessing,
        threshold=choice.threshold,
        calibration={**choice.scaling.to_record(), "fitted_on": "out-of-fold predictions",
                     "unsure_band": args.unsure_band},
        domain=domain.to_record(),
        seed=args.seed,
        data_dir=str(Path(args.data).resolve()),
        split={"train": data.relative(files, args.data), "validation": [], "test": data.relative(test, args.data)},
        near_copies=copies,
        metrics=model_metrics,
        hyperparameters=hyperparameters,
        run_dir=str(run_dir),
        created=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    record.save(network, args.model, run_record)
    write_atomic(run_dir / "record.json", run_record.to_json())
    print(f"saved {args.model} (trained on all {len(files)} photos) and {record.sidecar_path(args.model)}; run logs "
          f"in {run_dir} (tensorboard --logdir {args.logdir})")
    return {"record": run_record, "measurement": measurement, "run_dir": run_dir, "network": network, "head": head,
            "scaling": choice.scaling, "features": feature_sets[choice.features][:len(files)]}


def backbone_features(args, files: data.Files, preprocessing, digests: dict) -> dict:
    """{backbone: (images, dim) pooled features} of --arch's backbones, from the feature store where a run
    computed them; a backbone is built only when some are missing. --arch auto leaves out, and says so, each
    backbone of AUTO_BACKBONES whose weights can be neither downloaded nor found in Keras' cache folder."""
    wanted = [digests[path] for path in files.paths]
    found = {}
    for arch in models.AUTO_BACKBONES if args.arch == models.AUTO else args.backbones:
        store = cache.array_store(args.cache, features.FAMILY, features.extractor_id(arch, args.weights,
                                                                                     preprocessing))
        missing = sum(store.get("original", digest) is None for digest in wanted)
        mark = time.time()
        try:
            extractor = models.pooled_output(models.build_linear((arch,), 2, preprocessing.image_size,
                                                                  args.weights)) if missing else None
        except models.BuildError as error:
            if args.arch != models.AUTO:
                raise
            print(f"note: --arch auto leaves out {arch}: {error}")
            continue
        with data.undecodable_explained(files.paths, preprocessing, args.data):
            found[arch] = features.extract(extractor, files.paths, store, preprocessing, digests=wanted)[0]
        print(f"{arch} features: {missing} computed in {time.time() - mark:.1f} s, {len(files) - missing} from "
              "the store")
    if not found:
        raise models.BuildError(
            f"--arch auto found no backbone weights: none of {', '.join(models.AUTO_BACKBONES)} could be "
            f"downloaded or found in Keras' cache folder {models.keras_cache_folder()}; put a weights file there, "
            "or name one backbone and its file (--arch mobilenet --weights PATH)")
    return found


def candidates_table(measurement: crossval.Measurement) -> str:
    """Each candidate's cross-validated log loss at its best penalty, on every photo: what the choice was."""
    best = {}
    for (name, penalty), loss in measurement.scores.items():
        if name not in best or loss < best[name][1]:
            best[name] = (penalty, loss)
    return "\n".join(f"  {name:<28} log loss {loss:.3f} (C {penalty:g})" + (
        "  <- chosen" if name == measurement.final.features else "") for name, (penalty, loss) in best.items())


def cross_validation_line(summary: dict, class_names) -> str:
    interval, recalls = measured_parts(summary, class_names, "saved threshold")
    return (f"cross-validated accuracy {summary['accuracy']:.3f} {interval} on all {summary['count']} photos, each "
            "scored by a model that never saw it or its near copies "
            f"({summary['folds']} folds, choices made inside each)  {recalls}\n"
            f"calibration error (ECE) of those probabilities {summary['calibration_error']:.3f} "
            f"(uncalibrated {summary['calibration_error_before']:.3f})")


def scaling_text(scaling: calibration.Scaling, num_classes: int) -> str:
    if scaling == calibration.IDENTITY:
        return "calibration: none (the held-out predictions ranked the classes no better than chance)"
    if num_classes == 2:
        return f"calibration: logit x {scaling.scale:.2f} {scaling.shift:+.2f}"
    return f"calibration: temperature {1 / scaling.scale:.2f}"


def train_on_partitions(args) -> dict:
    """The CNN, or a backbone to fine-tune: fits on images, measured on a held-out test partition."""
    # -- setup: devices, precision, seeds ------------------------------------------------------------------
    setup = distribute.make(args.strategy)  # first: multi-worker collectives must exist before TF starts
    precision = distribute.set_precision(args.mixed_precision)
    if setup.replicas > 1:
        print(setup.describe())
    keras.utils.set_random_seed(args.seed)

    # -- data: class folders -> near-copy groups -> leak-free split ---------------------------------------
    folder = read_folder(args)
    class_names, files, digests, groups = folder.class_names, folder.files, folder.digests, folder.groups
    preprocessing = images.Preprocessing(args.image_size, args.faces)
    parts = data.split(files, args.fractions, args.seed, groups=groups)
    copies = near_copy_lists(files, groups, args.data)
    binary = models.is_binary(len(class_names))
    if copies:
        print(f"near copies: {sum(map(len, copies))} images in {len(copies)} groups, each kept in one partition")
    for name in data.PARTITIONS:
        counts = parts[name].count_per_class(len(class_names))
        print(f"{name:>10}: {len(parts[name]):5d} images  " + "  ".join(
            f"{c}={n}" for c, n in zip(class_names, counts)))
    class_weight = data.class_weights(parts["train"].labels, len(class_names)) if args.class_weights else None
    if class_weight:
        print("class weights (from the training partition): " + "  ".join(
            f"{name}={class_weight[i]:.3f}" for i, name in enumerate(class_names)))

    # -- network -------------------------------------------------------------------------------------------
    pretrained = args.arch != "cnn" and args.weights != "none"
    augment = args.augment
    with setup.strategy.scope():
        network = models.compile_model(
            models.build(args.arch, len(class_names), preprocessing.image_size, augment=augment,
                         dropout=args.dropout, weights=args.weights),
            len(class_names), args.learning_rate, jit=args.jit)
    network.summary(print_fn=print)
    hyperparameters = {**{name: getattr(args, name) for name in FIT_HYPERPARAMETERS},
                       "data": str(args.data), "weights": args.weights if args.arch != "cnn" else None, "augment": augment,
                       "split": list(args.fractions), "class_weight": class_weight, "strategy": setup.name,
                       "replicas": setup.replicas, "global_batch_size": setup.global_batch(args.batch_size),
                       "precision": precision}

    # -- inputs: decoded-image pipelines (CNN, fine-tuning), or stored backbone features (pretrained) ------
    labels = {name: np.asarray(parts[name].labels, np.float32 if binary else np.int32) for name in data.PARTITIONS}
    extractor, head = models.split_at_pool(network) if pretrained else (None, None)
    stored = stored_features(args, extractor, parts, preprocessing, digests) if pretrained else None
    datasets = image_datasets(args, setup, parts, preprocessing, binary)

    # -- callbacks: timing, early stopping, TensorBoard ----------------------------------------------------
    backup = resume_backup(args) if setup.is_chief else None
    if backup and backup.run_dir:
        run_dir = backup.run_dir
    else:
        run_dir = run_folder(args.logdir, args.run_name) if setup.is_chief else distribute.scratch_folder(setup)
    timing = callbacks.EpochTiming(len(parts["train"]))
    board = callbacks.tensorboard(
        run_dir, hyperparameters, parts["train"], datasets.get("validation"), parts["validation"].labels,
        class_names, preprocessing, seed=args.seed)
    if pretrained:
        board[1].watch(features.dataset(stored["validation"][0], labels["validation"], args.batch_size),
                           matrix_every_epoch=False)
    checkpoint = run_dir / f"checkpoint{Path(args.model).suffix}" if args.checkpoint and setup.is_chief else None
    history = keras.callbacks.History()  # one for every fit of the run: Keras appends each stage's epochs
    run_callbacks = [*callbacks.stopping(args.patience), timing, *board, history]
    # Fits on images (the CNN, fine-tuning) take minutes an epoch: they checkpoint and can be resumed. A head
    # on stored features trains again in seconds, the same way for the same seed (and is not a whole model).
    image_callbacks = list(run_callbacks)
    if checkpoint:
        image_callbacks.insert(0, keras.callbacks.ModelCheckpoint(str(checkpoint), monitor="val_loss",
                                                                  save_best_only=True))
    if backup:
        image_callbacks = [keras.callbacks.BackupAndRestore(str(backup.folder / "keras")), *image_callbacks,
                           callbacks.ResumeState(backup, run_dir, image_callbacks, history)]
    if checkpoint:  # a record beside the checkpoint makes it usable by predict even if this run never ends
        provisional = record.Record(class_names, preprocessing, seed=args.seed, run_dir=str(run_dir))
        write_atomic(record.sidecar_path(checkpoint), provisional.to_json())

    # -- fit: the head on stored features or the whole CNN, then optional fine-tuning ---------------------
    started = time.time()
    with data.undecodable_explained(files.paths, preprocessing, args.data):
        if pretrained:
            fit_head(args, head, len(class_names), stored, labels, run_callbacks, class_weight)
        else:
            distribute.fit(network, setup, datasets["train"], datasets["validation"], epochs=args.epochs,
                           callbacks=image_callbacks, class_weight=class_weight)
        warn_if_nothing_learnt(history.history)
        stage_start = len(history.history["loss"]) if args.fine_tune else 0
        if args.fine_tune:
            board[1].watch(datasets["validation"])
            fine_tune(args, network, len(class_names), setup, datasets, image_callbacks, class_weight,
                      initial_epoch=stage_start)
    train_seconds = time.time() - started

    # -- evaluate: threshold on validation, metrics on the untouched test partition ------------------------
    def probabilities(name):
        return metrics.class_probabilities(network.predict(datasets[name], verbose=0))

    scaling = calibration.fit(probabilities("validation"), parts["validation"].labels)
    uncalibrated = probabilities("test")
    calibration.apply_to_network(network, scaling)
    threshold = crossval.decision_threshold(args.threshold, len(class_names))
    print(f"fitted on the validation partition: {scaling_text(scaling, len(class_names))}")
    tested = calibration.apply(scaling, uncalibrated)  # what the network now says, without a second pass
    test_metrics = {**metrics.summarize(parts["test"].labels, tested, class_names, threshold),
                    "calibration_error": calibration.expected_calibration_error(parts["test"].labels, tested),
                    "calibration_error_before": calibration.expected_calibration_error(parts["test"].labels,
                                                                                       uncalibrated)}
    print(test_line(test_metrics, class_names))
    summaries.write_measured(run_dir, {"test": test_metrics}, step=len(history.history["loss"]) - 1)
    reports.plot_curves(history.history, run_dir / "curves.png")

    # -- record and save -----------------------------------------------------------------------------------
    final = {key: float(values[-1]) for key, values in history.history.items()}
    kept = saved_epoch(history.history, args, stage_start)
    saved = {"epoch": kept + 1, **{key: float(values[kept]) for key, values in history.history.items()}}
    run_record = record.Record(
        class_names=class_names,
        preprocessing=preprocessing,
        threshold=threshold,
        calibration={**scaling.to_record(), "fitted_on": "validation partition", "unsure_band": args.unsure_band},
        domain=partition_domain(network, parts, preprocessing, args.batch_size, len(class_names),
                                args.far_share).to_record(),
        seed=args.seed,
        data_dir=str(Path(args.data).resolve()),
        split={name: data.relative(parts[name], args.data) for name in data.PARTITIONS},
        near_copies=copies,
        metrics={"test": test_metrics, "final_epoch": final, "saved_epoch": saved,
                 "epoch_seconds": history.history["epoch_seconds"],
                 "train_seconds": train_seconds},
        history={key: [float(value) for value in values] for key, values in history.history.items()},
        hyperparameters=hyperparameters,
        run_dir=str(run_dir),
        created=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    if not setup.is_chief:
        print(f"worker {setup.worker_index}: done; the chief saves the model and the logs")
        return {"record": run_record, "history": history.history, "run_dir": None}
    record.save(network, args.model, run_record)
    write_atomic(run_dir / "record.json", run_record.to_json())
    if backup:
        shutil.rmtree(backup.folder, ignore_errors=True)  # the run has ended: nothing left to resume
    print(f"saved {args.model} and {record.sidecar_path(args.model)}; run logs in {run_dir} "
          f"(tensorboard --logdir {args.logdir})")
    return {"record": run_record, "history": history.history, "run_dir": run_dir}


def image_datasets(args, setup, parts, preprocessing, binary) -> dict:
    """tf.data pipelines of decoded images: validation and test whole, training sharded over the workers."""
    # Each worker trains on its own share of the training files; all of them validate and test on all.
    train_files = parts["train"].shard(setup.worker_index, setup.num_workers)
    caches = cache.choose_caches(args.cache, {**parts, "train": train_files}, preprocessing)
    global_batch = setup.global_batch(args.batch_size)
    datasets = {
        name: data.make_dataset(parts[name], preprocessing, global_batch, binary=binary, cache=caches[name])
        for name in ("validation", "test")
    }
    datasets["train"] = distribute.training_input(
        setup, args.batch_size, len(train_files), lambda batch_size, drop_remainder: data.make_dataset(
            train_files, preprocessing, batch_size, binary=binary, shuffle_seed=args.seed, cache=caches["train"],
            drop_remainder=drop_remainder))
    return datasets


def stored_features(args, extractor, parts, preprocessing, digests: dict) -> dict:
    """{partition: (views, images, dim) backbone features}: every view for training, the image itself for the
    others. Read from the feature store where a run has computed them before."""
    store = cache.array_store(args.cache, features.FAMILY, features.extractor_id(args.arch, args.weights,
                                                                                 preprocessing))
    started = time.time()
    stored = {name: features.extract(extractor, parts[name].paths, store, preprocessing,
                                     features.VIEWS[args.views] if name == "train" else ("original",),
                                     digests=[digests[path] for path in parts[name].paths])
              for name in data.PARTITIONS}
    total = sum(array.shape[0] * array.shape[1] for array in stored.values())
    print(f"backbone features: {total} image views in {time.time() - started:.1f} s "
          f"({'from the store ' + str(store.folder) if store.folder else 'kept for this run only'})")
    return stored


def fit_head(args, head, num_classes: int, stored, labels, callbacks, class_weight) -> None:
    """Train the network's head (its own layers: model.split_at_pool) on the stored features (every view of
    every training image), in place."""
    views, count, dim = stored["train"].shape
    # A step costs microseconds: run a whole epoch per call into the graph, not one Python round trip a batch.
    models.compile_model(head, num_classes, args.learning_rate,
                         steps_per_execution=-(-views * count // args.batch_size))
    train_set = features.dataset(stored["train"].reshape(views * count, dim), np.tile(labels["train"], views),
                                args.batch_size, shuffle_seed=args.seed)
    validation_set = features.dataset(stored["validation"][0], labels["validation"], args.batch_size)
    started = time.time()
    result = head.fit(train_set, validation_data=validation_set, epochs=args.epochs, callbacks=callbacks,
                      class_weight=class_weight, shuffle=False, verbose=0)
    best = int(np.argmin(result.history["val_loss"]))
    print(f"head: {len(result.history['loss'])} epochs on stored features in {time.time() - started:.1f} s; "
          f"best epoch {best + 1}: val loss {result.history['val_loss'][best]:.3f}, "
          f"val accuracy {result.history['val_accuracy'][best]:.3f}")


def fine_tune(args, network, num_classes: int, setup, datasets, callbacks, class_weight, initial_epoch: int) -> None:
    """Open the backbone's top --fine-tune layers and train the whole model on augmented images, continuing
    the epoch count of the first stage (its History, among the callbacks, appends the new epochs)."""
    with setup.strategy.scope():
        opened = models.unfreeze_top(network, args.fine_tune)
        models.compile_model(network, num_classes, args.learning_rate / 10, jit=args.jit)
    print(f"fine-tuning the top {opened} layers of {args.arch} at learning rate {args.learning_rate / 10:g}")
    distribute.fit(network, setup, datasets["train"], datasets["validation"], epochs=args.fine_tune_epochs,
                   callbacks=callbacks, class_weight=class_weight, initial_epoch=initial_epoch)


def partition_domain(network, parts, preprocessing, batch_size: int, num_classes: int,
                     far_share: float) -> marks.Domain:
    """The centres of the training images' features (what the output layer reads), and the distance limit
    from the validation images, which the network never trained on."""
    reader = keras.Model(network.inputs, network.get_layer("prediction").input)

    def vectors(name):
        dataset = data.make_dataset(parts[name], preprocessing, batch_size, binary=models.is_binary(num_classes))
        return reader.predict(dataset, verbose=0)

    centres = marks.class_centres(vectors("train"), parts["train"].labels, num_classes)
    return marks.Domain(centres, marks.far_limit(marks.distances(vectors("validation"), centres), far_share))


def saved_epoch(history: dict, args, stage_start: int) -> int:
    """The epoch whose weights the model kept: early stopping restores the last stage's best, else the last."""
    losses = history["val_loss"][stage_start:]
    return stage_start + int(np.argmin(losses)) if args.patience else len(history["val_loss"]) - 1


def warn_if_nothing_learnt(history: dict) -> None:
    """Say so when the kept weights are the first epoch's: every later epoch made the validation loss worse."""
    losses = history.get("val_loss", [])
    if len(losses) > 1 and int(np.argmin(losses)) == 0:
        print("warning: the best validation loss was after the first epoch, so the saved model learnt almost "
              "nothing; try a lower --learning-rate, more images per class, or a pretrained backbone "
              "(--arch mobilenet)")


def test_line(summary: dict, class_names) -> str:
    interval, recalls = measured_parts(summary, class_names, "threshold")
    return (f"test ({summary['count']} images never used in training): accuracy {summary['accuracy']:.3f} "
            f"{interval}  f1 {summary['f1']:.3f}  {recalls}" + (
                f"\ncalibration error (ECE) {summary['calibration_error']:.3f} (uncalibrated "
                f"{summary['calibration_error_before']:.3f})" if "calibration_error" in summary else ""))


def measured_parts(summary: dict, class_names, threshold_name: str) -> tuple:
    """The accuracy's 95 % interval, and each class's recall with the threshold: what the closing lines share."""
    low, high = summary["accuracy_interval"]
    recalls = "  ".join(f"{name} {summary['per_class'][name]['recall']:.3f}" for name in class_names)
    threshold = f"  ({threshold_name} {summary['threshold']:.2f})" if "threshold" in summary else ""
    return f"(95% interval {low:.2f}-{high:.2f})", f"recall per class: {recalls}{threshold}"


def near_copy_lists(files: data.Files, groups: list, data_dir) -> list:
    """The near-copy groups of two or more images, as lists of paths relative to the data folder."""
    relative = data.relative(files, data_dir)
    return [[relative[i] for i in indices] for indices in near_copies.members(groups) if len(indices) > 1]


@dataclass
class Backup:
    """Where a run keeps what --resume needs: Keras' BackupAndRestore files (weights, optimizer state, epoch)
    and state.json (ResumeState). Beside the model, so the same command finds it again."""

    folder: Path
    state: dict

    @property
    def run_dir(self):
        return Path(self.state["run_dir"]) if self.state.get("run_dir") else None


def resume_backup(args) -> Backup:
    """The backup of an interrupted run to continue (--resume), or a fresh one for this run."""
    model = Path(args.model)
    folder = model.with_name(f".{model.name}.resume")
    state_file = folder / "state.json"
    if args.resume:
        if not state_file.exists():
            raise data.DataError(f"--resume: there is no interrupted run to continue ({folder} does not exist; "
                                 "it is removed when a run ends)")
        print(f"resuming the interrupted run from {folder}")
        return Backup(folder, json.loads(state_file.read_text()))
    if folder.exists():
        print(f"note: {folder} holds the backup of an interrupted run; starting over (add --resume to continue it)")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return Backup(folder, {})


def fit(data=defaults.DATA, arch: str = "auto", **options):
    """The one-call API, `happysad.train(data="photos", arch="auto")`: train as the command does and return
    the saved model (a classifier.Classifier: .predict(paths), .record). Each option is a command option by
    its name (folds=5, faces=True, augment=False, model="models/faces.h5"...); a wrong one raises ValueError
    with the command's own message."""
    argv = ["--data", str(data), "--arch", arch]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append(f"--no-{name.replace('_', '-')}")
        elif value is not None:
            argv += [flag, str(value)]
    message = io.StringIO()
    try:
        with contextlib.redirect_stderr(message):
            args = parse_args(argv)
    except SystemExit:
        raise ValueError(message.getvalue().strip().splitlines()[-1]) from None
    enable_memory_growth()
    train(args)
    return classifier.load(args.model)


def main(argv=None) -> None:
    args = parse_args(argv)
    enable_memory_growth()
    try:
        train(args)
    except (data.DataError, distribute.DistributeError, models.BuildError) as error:
        sys.exit(f"happysad.train: error: {error}")


class CallableModule(types.ModuleType):
    """Makes `happysad.train(...)` call fit(): the module a reader finds the command in is the API too."""

    def __call__(self, *args, **kwargs):
        return fit(*args, **kwargs)


sys.modules[__name__].__class__ = CallableModule

if __name__ == "__main__":
    main()
