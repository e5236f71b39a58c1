"""python -m happysad.train: train a classifier on data/<class>/ images.

A pretrained backbone (--arch mobilenet, a '+' list, or auto): folder → near-copy groups → backbone features,
stored once per image → nested cross-validation of a logistic-regression head (happysad.crossval): every photo
scored by a head that never saw it nor its near copies → the same choices on every photo → models/happysad.h5
+ models/happysad.json. The CNN: folder → near-copy groups → folds → one cached tf.data decode → a fit per
fold, its fold scored after every epoch by the mean of its last 3 epochs' weights → the epoch count and
calibration chosen out of fold → a fit on every photo with TensorBoard, its last 3 epochs' weights averaged
→ the same files. With --split, to fine-tune, and for the CNN on 10,000 photos or more:
folder → leak-free split (file lists) → cached tf.data pipelines → fit with TensorBoard → test metrics on the
held-out partition → the same files.
Every way, a run folder logs/<run>/ gets TensorBoard events and a copy of the record.
"""
import dataclasses
import datetime
import json
import shutil
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from happysad import (cache, calibration, classifier, console, crossval, data, defaults, distribute, errors,
                      features, marks, metrics, model as models, near_copies, record, reports, summaries)
from happysad.config import ConfigError, TrainConfig, add_options, from_command_line
from happysad.files import sha256_each, write_atomic
from happysad.runtime import deferred, enable_memory_growth, keras

callbacks = deferred("happysad.callbacks")  # defines Keras classes: imported when training starts

def parse_args(argv=None) -> TrainConfig:
    parser = console.ArgumentParser(
        prog="python -m happysad.train", description=__doc__.splitlines()[0],
        epilog="The --arch recipes: " + "; ".join(f"{arch}: {recipe_text(arch)}" for arch in models.ARCHITECTURES))
    add_options(parser, TrainConfig)
    return from_command_line(parser, TrainConfig, argv)


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


def read_folder(config: TrainConfig) -> Folder:
    class_names = data.find_classes(config.data)
    if config.threshold != "auto" and len(class_names) > 2:
        raise ConfigError(f"`threshold` applies to two classes; {config.data} has {len(class_names)}, and the "
                          "label is the most probable one: leave `threshold` out")
    files, skipped = data.list_images(config.data, class_names)
    if skipped:
        print(data.skipped_note(skipped, config.data))
    data.check_readable(files.paths, config.data)
    digests = dict(zip(files.paths, sha256_each(files.paths)))
    groups = data.near_copy_groups(files, cache.array_store(config.cache, near_copies.FAMILY, near_copies.VERSION),
                                   list(digests.values()))
    print(f"classes: {', '.join(f'{i}={name}' for i, name in enumerate(class_names))}")
    return Folder(class_names, files, digests, groups)


def train(config: TrainConfig) -> dict:
    """Train as the settings say. A file TensorFlow cannot decode, wherever a pipeline meets it, is a one-line
    error naming it (data.undecodable_explained)."""
    with data.undecodable_explained(config.data):
        if config.cross_validate:
            return train_with_folds(config)
        if config.folds_on_images:
            config = folds_by_size(config)
        if config.folds_on_images:
            return train_images_with_folds(config)
        return train_on_partitions(config)


def folds_by_size(config: TrainConfig) -> TrainConfig:
    """The CNN's folds where --folds was not given: models.CNN_FOLDS, or, for a folder of models.LARGE_FOLDER
    photos or more and no --holdout, one fit on partitions (said in a note)."""
    if config.folds is not None:
        return config
    count = len(data.list_images(config.data, data.find_classes(config.data))[0].paths)
    if count < models.LARGE_FOLDER or config.holdout:
        return dataclasses.replace(config, folds=models.CNN_FOLDS)
    split = config.partition_split
    folds = models.CNN_FOLDS
    print(f"note: {count} photos: one fit on partitions {','.join(map(str, split))} (its test partition of about "
          f"{round(count * split[2])} photos measures within about ±3 points), not {folds} fits and one more on every "
          f"photo at about 5 times the time; --folds {folds} cross-validates all the same")
    return dataclasses.replace(config, split=split)


def train_with_folds(config: TrainConfig) -> dict:
    """A pretrained backbone: nested cross-validation of the logistic-regression head on stored features,
    then the head the data chose, trained on every photo (but a --holdout partition)."""
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    folder = read_folder(config)
    class_names = folder.class_names
    files, test, folds, copies = cut_folds(config, folder)

    # -- features: each candidate backbone's, stored once per image -----------------------------------------
    everything = data.Files(files.paths + test.paths, files.labels + test.labels)
    per_backbone, _ = features.of_backbones(config, everything,
                                            [folder.digests[path] for path in everything.paths])
    feature_sets = features.candidate_sets(config.arch, per_backbone)

    # -- measure: nested cross-validation; then the choices made on every photo ------------------------------
    labels = np.asarray(files.labels, int)
    mark = time.time()
    measurement = crossval.cross_validate({name: vectors[:len(files)] for name, vectors in feature_sets.items()},
                                          labels, folds, threshold=config.threshold)
    cross_validated = measurement.summary(labels, class_names)
    print(candidates_table(measurement))
    choice = measurement.final
    head = crossval.fit_head(feature_sets[choice.features][:len(files)], labels, choice.penalty)
    print(f"cross-validation: {config.folds} folds in {time.time() - mark:.1f} s; chosen on every photo: "
          f"{choice.features}, C {choice.penalty:g}, {scaling_text(choice.scaling, len(class_names))}")
    print(cross_validation_line(cross_validated, class_names))

    # -- the saved network: the chosen backbones and the head in one Keras model ----------------------------
    chosen = tuple(choice.features.split("+"))
    preprocessing = config.preprocessing(chosen)
    network = models.build_linear(chosen, len(class_names), preprocessing.image_size, config.weights,
                                  beside=preprocessing.face_beside)
    models.set_head(network, head.coef_, head.intercept_)
    calibration.apply_to_network(network, choice.scaling)
    domain = marks.out_of_fold_domain(feature_sets[choice.features][:len(files)], labels, folds, len(class_names),
                                      config.far_share, features.domain_columns(chosen, per_backbone))
    if features.only_learnt_faces(chosen):
        print(f"note: {marks.FACE_FEATURES_CAVEAT}")
    model_metrics = {"cross_validation": cross_validated, "train_seconds": time.time() - started}
    if len(test):
        probabilities = calibration.apply(choice.scaling, head.predict_proba(feature_sets[choice.features][len(files):]))
        model_metrics["test"] = metrics.summarize(test.labels, probabilities, class_names, choice.threshold)
        print(test_line(model_metrics["test"], class_names))

    run_dir = run_folder(config.logdir, config.run_name)
    hyperparameters = {"data": str(config.data), "arch": config.arch, "weights": config.weights, "folds": config.folds,
                       "holdout": config.holdout, "threshold": config.threshold, "head": "logistic regression",
                       "features": choice.features, "penalty": choice.penalty,
                       "calibration": choice.scaling.to_record()}
    summaries.write_hyperparameters(run_dir, hyperparameters, preprocessing, config.seed)
    summaries.write_measured(run_dir, model_metrics)
    run_record = run_record_of(
        config, run_dir,
        class_names=class_names,
        preprocessing=preprocessing,
        domain=domain.to_record(),
        **cross_validated_fields(config, choice, files, test),
        near_copies=copies,
        metrics=model_metrics,
        hyperparameters=hyperparameters,
    )
    save_run(network, run_record, config, f"trained on all {len(files)} photos")
    return {"record": run_record, "measurement": measurement, "run_dir": run_dir, "network": network, "head": head,
            "scaling": choice.scaling, "features": feature_sets[choice.features][:len(files)]}


def cut_folds(config: TrainConfig, folder: Folder) -> tuple:
    """(the photos the cross-validation and the saved model learn from, the --holdout partition, the fold of
    each of the first, the near-copy lists), near copies kept in one fold and on one side of the holdout."""
    class_names = folder.class_names
    group_of = dict(zip(folder.files.paths, folder.groups))
    if config.holdout:
        files, test = data.hold_out(folder.files, config.holdout, config.seed, folder.groups, class_names)
    else:
        files, test = folder.files, data.Files([], [])
    copies = near_copy_lists(folder.files, folder.groups, config.data)
    print_partitions(copies, "fold", {"training": files, **({"holdout": test} if len(test) else {})}, class_names)
    folds = data.make_folds(files.labels, [group_of[path] for path in files.paths], config.folds, config.seed,
                            class_names)
    return files, test, folds, copies


def train_images_with_folds(config: TrainConfig) -> dict:
    """The CNN: K fits on images, each on every fold but one and scoring that one after every epoch; the epoch
    count and the calibration chosen inside the loop (crossval.epochs_cross_validated); then the network
    trained on every photo (but a --holdout partition) for the epochs chosen on all folds."""
    started = time.time()
    setup = distribute.make(config.strategy)
    precision = distribute.set_precision(config.mixed_precision)
    if setup.replicas > 1:
        print(setup.describe())
    keras.utils.set_random_seed(config.seed)
    folder = read_folder(config)
    class_names, binary = folder.class_names, models.is_binary(len(folder.class_names))
    files, test, folds, copies = cut_folds(config, folder)
    labels = np.asarray(files.labels, int)
    preprocessing = config.preprocessing()
    fold_data = data.fold_datasets(files, folds, preprocessing, binary=binary, shuffle_seed=config.seed,
                                   cache=cache.choose_caches(config.cache, {"train": files}, preprocessing)["train"])
    global_batch = setup.global_batch(config.batch_size)
    # The CNN's weights are averaged over its last epochs; a backbone from scratch keeps its last epoch's, as
    # its BatchNormalization statistics would not match an average of its weights.
    window = models.CNN_AVERAGED_EPOCHS if config.arch == "cnn" else 1
    class_weight = data.class_weights(labels, len(class_names)) if config.class_weights else None
    if class_weight:
        print("class weights (from every photo; each fold's fit weighs its own photos so): " + "  ".join(
            f"{name}={class_weight[i]:.3f}" for i, name in enumerate(class_names)))

    def new_network():
        with setup.strategy.scope():
            return models.compile_model(
                models.build(config.arch, len(class_names), preprocessing.image_size, augment=config.augment,
                             dropout=config.dropout, weights=config.weights),
                len(class_names), config.learning_rate, jit=config.jit)

    def fit(network, k, epochs, fit_callbacks, verbose):
        count = len(files) - int(np.sum(folds == k))
        training = distribute.training_input(setup, config.batch_size, count, lambda batch_size, drop: fold_data(
            k, batch_size, drop)[0])
        weights = data.class_weights(labels[folds != k], len(class_names)) if config.class_weights else None
        distribute.fit(network, setup, training, None, epochs=epochs, callbacks=fit_callbacks,
                       class_weight=weights, verbose=verbose)

    # -- measure: K fits, each fold scored after every epoch by the network that never saw it ----------------
    curves, widening = [], []
    for k in range(config.folds):
        network = new_network()
        if k == 0:
            network.summary(print_fn=print)
        held = folds == k
        _, held_out, _, order = fold_data(k, global_batch)
        curve = callbacks.HeldOutCurve(held_out, order, window)
        mark = time.time()
        fit(network, k, fold_epochs(config, curves, labels, folds), [curve], verbose=0)
        curves.append(np.stack(curve.probabilities))
        losses = crossval.pooled_losses(curves, labels, folds, [k])
        print(f"fold {k + 1}/{config.folds}: {len(losses)} epochs on {len(files) - int(held.sum())} images in "
              f"{time.time() - mark:.0f} s; its {int(held.sum())} images' lowest log loss {min(losses):.3f}, "
              f"after epoch {int(np.argmin(losses)) + 1}")
        curve.average()  # its last epochs averaged, as each fold was scored and as the saved network will be
        widening.append(domain_widening(network, fold_data, k, labels, global_batch, len(class_names),
                                        config.far_share))
    measurement = crossval.epochs_cross_validated(curves, labels, folds, config.arch, config.threshold)
    cross_validated = measurement.summary(labels, class_names)
    choice = measurement.final
    pooled = [loss for _, loss in sorted(measurement.scores.items())]
    warn_if_nothing_learnt(pooled, "the folds' pooled held-out loss")
    epochs_text = f"{choice.epochs} epoch{'s' * (choice.epochs > 1)}"
    averaged = min(choice.epochs, window)
    averaged_text = f"the mean of the weights of its last {averaged}" if averaged > 1 else "its last weights"
    print(f"chosen on every fold: {epochs_text} (the lowest pooled held-out log loss, {min(pooled):.3f}, of "
          f"{averaged_text}), {scaling_text(choice.scaling, len(class_names))}")
    print(cross_validation_line(cross_validated, class_names))

    # -- the saved network: trained on every photo for the chosen epochs, with TensorBoard -------------------
    run_dir = run_folder(config.logdir, config.run_name)  # one machine: multiworker trains on partitions
    hyperparameters = {**config.hyperparameters(), "folds": config.folds, "data": config.data, "strategy": setup.name,
                       "replicas": setup.replicas, "global_batch_size": global_batch, "precision": precision,
                       "epochs_chosen": choice.epochs, "averaged_epochs": averaged, "class_weight": class_weight,
                       "calibration": choice.scaling.to_record()}
    history = keras.callbacks.History()
    network = new_network()
    averaging = callbacks.AveragedWeights(window)
    mark = time.time()
    fit(network, None, choice.epochs,
        [callbacks.EpochTiming(len(files)),
         *callbacks.tensorboard(run_dir, hyperparameters, files, None, [], class_names, preprocessing, config.seed),
         history, averaging], verbose=2)
    averaging.average()  # what the folds were scored with
    final_seconds = time.time() - mark
    summaries.write_held_out_curve(run_dir, pooled)
    calibration.apply_to_network(network, choice.scaling)
    model_metrics = {"cross_validation": cross_validated, "train_seconds": time.time() - started,
                     "final_fit_seconds": final_seconds, "epoch_seconds": history.history["epoch_seconds"],
                     "fold_epochs": [len(curve) for curve in curves], "domain_widening": widening}
    if len(test):
        tested = metrics.class_probabilities(network.predict(data.make_dataset(
            test, preprocessing, global_batch, binary=binary), verbose=0))
        model_metrics["test"] = metrics.summarize(test.labels, tested, class_names, choice.threshold)
        print(test_line(model_metrics["test"], class_names))
    summaries.write_measured(run_dir, model_metrics, step=choice.epochs - 1)
    reports.plot_curves({**history.history, "val_loss": pooled}, run_dir / "curves.png",
                        held_out="held-out folds, pooled")

    run_record = run_record_of(
        config, run_dir,
        class_names=class_names,
        preprocessing=preprocessing,
        domain=saved_domain(network, fold_data, labels, global_batch, len(class_names), config.far_share,
                            widening).to_record(),
        **cross_validated_fields(config, choice, files, test),
        near_copies=copies,
        metrics=model_metrics,
        history={key: [float(value) for value in values] for key, values in history.history.items()},
        hyperparameters=hyperparameters,
    )
    save_run(network, run_record, config, f"trained on all {len(files)} photos for {epochs_text}, "
                                          f"{averaged_text}")
    return {"record": run_record, "measurement": measurement, "run_dir": run_dir, "network": network,
            "history": history.history}


def fold_epochs(config: TrainConfig, curves: list, labels, folds) -> int:
    """How many epochs the next fold's fit runs. The first runs all of --epochs; each later one --patience
    epochs past the lowest pooled log loss of the folds before it. So no fold's own photos decide when its fit
    ends, and where the folds are scored (crossval.epochs_cross_validated) owes nothing to their own labels."""
    if not curves or not config.patience:
        return config.epochs
    pooled = crossval.pooled_losses(curves, labels, folds, range(len(curves)))
    return min(config.epochs, int(np.argmin(pooled)) + 1 + config.patience)


def domain_widening(fold_network, fold_data, k: int, labels, batch_size: int, num_classes: int,
                    far_share: float) -> float:
    """How much farther from a fold network's class centres its own fold's photos lie than the photos it
    trained on: the ratio of their marks.far_limit. A ratio compares distances within one network, where they
    mean the same (across networks they do not: a limit taken from the fold networks' distances alone marked
    0 to 15 % of unseen web photos from one split to the next)."""
    training, fold, seen, _ = fold_data(k, batch_size, shuffle=False)
    reader = models.domain_reader(fold_network, models.domain_reads(fold_network))
    vectors = models.outputs(reader, training)
    centres = marks.class_centres(vectors, labels[seen], num_classes)
    return (marks.far_limit(marks.distances(models.outputs(reader, fold), centres), far_share)
            / marks.far_limit(marks.distances(vectors, centres), far_share))


def saved_domain(network, fold_data, labels, batch_size: int, num_classes: int, far_share: float,
                 widening: list) -> marks.Domain:
    """Fits no class for the network trained on every photo: the centres of its features (models.domain_reads)
    of every photo, and its own limit on them widened by the median of the fold networks'
    `domain_widening`, so that it stands for photos it never saw."""
    everything, _, seen, _ = fold_data(None, batch_size, shuffle=False)
    reads = models.domain_reads(network)
    vectors = models.outputs(models.domain_reader(network, reads), everything)
    centres = marks.class_centres(vectors, labels[seen], num_classes)
    limit = marks.far_limit(marks.distances(vectors, centres), far_share) * float(np.median(widening))
    return marks.Domain(centres, limit, reads=reads)


def candidates_table(measurement: crossval.Measurement) -> str:
    """Each candidate's cross-validated log loss at its best penalty, on every photo: what the choice was."""
    best = {}
    for (name, penalty), loss in measurement.scores.items():
        if name not in best or loss < best[name][1]:
            best[name] = (penalty, loss)
    return console.table([("candidate", "log loss (lower: better)", "C (higher: less penalty)", "")] + [
        (name, f"{loss:.3f}", f"{penalty:g}", "<- chosen" if name == measurement.final.features else "")
        for name, (penalty, loss) in best.items()], indent="  ")


def cross_validation_line(summary: dict, class_names) -> str:
    interval, recalls = measured_parts(summary, class_names, "saved threshold")
    return (f"cross-validated accuracy {summary['accuracy']:.3f} {interval} on all {summary['count']} photos, each "
            "scored by a model that never saw it or its near copies "
            f"({summary['folds']} folds, choices made inside each)  {recalls}\n"
            + calibration.errors_text(summary))


def scaling_text(scaling: calibration.Scaling, num_classes: int) -> str:
    return f"calibration: {calibration.describe(scaling, num_classes)}"


def train_on_partitions(config: TrainConfig) -> dict:
    """The CNN, or a backbone to fine-tune: fits on images, measured on a held-out test partition."""
    # -- setup: devices, precision, seeds ------------------------------------------------------------------
    setup = distribute.make(config.strategy)  # first: multi-worker collectives must exist before TF starts
    precision = distribute.set_precision(config.mixed_precision)
    if setup.replicas > 1:
        print(setup.describe())
    keras.utils.set_random_seed(config.seed)

    # -- data: class folders -> near-copy groups -> leak-free split ---------------------------------------
    folder = read_folder(config)
    class_names, files, digests, groups = folder.class_names, folder.files, folder.digests, folder.groups
    preprocessing = config.preprocessing()
    parts = data.split(files, config.partition_split, config.seed, groups=groups)
    copies = near_copy_lists(files, groups, config.data)
    binary = models.is_binary(len(class_names))
    print_partitions(copies, "partition", parts, class_names)
    class_weight = data.class_weights(parts["train"].labels, len(class_names)) if config.class_weights else None
    if class_weight:
        print("class weights (from the training partition): " + "  ".join(
            f"{name}={class_weight[i]:.3f}" for i, name in enumerate(class_names)))

    # -- network -------------------------------------------------------------------------------------------
    # A pretrained backbone fits on images only to fine-tune: its head trains first, on stored features.
    fine_tuning = bool(config.fine_tune)
    with setup.strategy.scope():
        network = models.compile_model(
            models.build(config.arch, len(class_names), preprocessing.image_size, augment=config.augment,
                         dropout=config.dropout, weights=config.weights),
            len(class_names), config.learning_rate, jit=config.jit)
    network.summary(print_fn=print)
    hyperparameters = {**config.hyperparameters(), "data": config.data,
                       "weights": config.weights if config.arch != "cnn" else None, "class_weight": class_weight,
                       "split": list(config.partition_split),
                       "strategy": setup.name,
                       "replicas": setup.replicas, "global_batch_size": setup.global_batch(config.batch_size),
                       "precision": precision}

    # -- inputs: decoded-image pipelines, and for fine-tuning's first stage stored backbone features --------
    labels = {name: np.asarray(parts[name].labels, np.float32 if binary else np.int32) for name in data.PARTITIONS}
    extractor, head = models.split_at_pool(network) if fine_tuning else (None, None)
    stored = stored_features(config, extractor, parts, preprocessing, digests) if fine_tuning else None
    datasets = image_datasets(config, setup, parts, preprocessing, binary)

    # -- callbacks: timing, early stopping, TensorBoard ----------------------------------------------------
    backup = resume_backup(config) if setup.is_chief else None
    if backup and backup.run_dir:
        run_dir = backup.run_dir
    else:
        run_dir = run_folder(config.logdir, config.run_name) if setup.is_chief else distribute.scratch_folder(setup)
    timing = callbacks.EpochTiming(len(parts["train"]))
    scalars, summaries_callback, hparams = callbacks.tensorboard(
        run_dir, hyperparameters, parts["train"], datasets.get("validation"), parts["validation"].labels,
        class_names, preprocessing, seed=config.seed)
    if fine_tuning:
        summaries_callback.watch(features.dataset(stored["validation"][0], labels["validation"], config.batch_size),
                           matrix_every_epoch=False)
    checkpoint = run_dir / f"checkpoint{Path(config.model).suffix}" if config.checkpoint and setup.is_chief else None
    history = keras.callbacks.History()  # one for every fit of the run: Keras appends each stage's epochs
    run_callbacks = [*callbacks.stopping(config.patience), timing, scalars, summaries_callback, hparams, history]
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
        provisional = record.Record(class_names, preprocessing, seed=config.seed, run_dir=str(run_dir))
        write_atomic(record.sidecar_path(checkpoint), provisional.to_json())

    # -- fit: the whole CNN; or the head on stored features, then the opened backbone on images -------------
    started = time.time()
    if fine_tuning:
        fit_head(config, head, len(class_names), stored, labels, run_callbacks, class_weight)
    else:
        distribute.fit(network, setup, datasets["train"], datasets["validation"], epochs=config.epochs,
                       callbacks=image_callbacks, class_weight=class_weight)
    if config.patience:  # early stopping kept the best epoch; without it the last one is saved
        warn_if_nothing_learnt(history.history.get("val_loss", []), "the validation loss")
    stage_start = len(history.history["loss"]) if fine_tuning else 0
    if fine_tuning:
        summaries_callback.watch(datasets["validation"])
        fine_tune(config, network, len(class_names), setup, datasets, image_callbacks, class_weight,
                  initial_epoch=stage_start)
    train_seconds = time.time() - started

    # -- evaluate: threshold on validation, metrics on the untouched test partition ------------------------
    def probabilities(name):
        return metrics.class_probabilities(network.predict(datasets[name], verbose=0))

    scaling = calibration.fit(probabilities("validation"), parts["validation"].labels)
    uncalibrated = probabilities("test")
    calibration.apply_to_network(network, scaling)
    threshold = crossval.decision_threshold(config.threshold, len(class_names))
    print(f"fitted on the validation partition: {scaling_text(scaling, len(class_names))}")
    tested = calibration.apply(scaling, uncalibrated)  # what the network now says, without a second pass
    test_metrics = {**metrics.summarize(parts["test"].labels, tested, class_names, threshold),
                    **calibration.errors(parts["test"].labels, tested, uncalibrated)}
    print(test_line(test_metrics, class_names))
    summaries.write_measured(run_dir, {"test": test_metrics}, step=len(history.history["loss"]) - 1)
    reports.plot_curves(history.history, run_dir / "curves.png")

    # -- record and save -----------------------------------------------------------------------------------
    final = {key: float(values[-1]) for key, values in history.history.items()}
    kept = saved_epoch(history.history, config, stage_start)
    saved = {"epoch": kept + 1, **{key: float(values[kept]) for key, values in history.history.items()}}
    run_record = run_record_of(
        config, run_dir,
        class_names=class_names,
        preprocessing=preprocessing,
        threshold=threshold,
        calibration={**scaling.to_record(), "fitted_on": "validation partition", "unsure_band": config.unsure_band},
        domain=partition_domain(network, parts, preprocessing, config.batch_size, len(class_names),
                                config.far_share).to_record(),
        split={name: data.relative(parts[name], config.data) for name in data.PARTITIONS},
        near_copies=copies,
        metrics={"test": test_metrics, "final_epoch": final, "saved_epoch": saved,
                 "epoch_seconds": history.history["epoch_seconds"],
                 "train_seconds": train_seconds},
        history={key: [float(value) for value in values] for key, values in history.history.items()},
        hyperparameters=hyperparameters,
    )
    if not setup.is_chief:
        print(f"worker {setup.worker_index}: done; the chief saves the model and the logs")
        return {"record": run_record, "history": history.history, "run_dir": None}
    save_run(network, run_record, config, f"trained on the {len(parts['train'])} training images")
    if backup:
        shutil.rmtree(backup.folder, ignore_errors=True)  # the run has ended: nothing left to resume
    return {"record": run_record, "history": history.history, "run_dir": run_dir}


def run_record_of(config: TrainConfig, run_dir, **fields) -> record.Record:
    """The record of a run: what its pipeline measured and chose (fields), with what every run records alike."""
    return record.Record(**fields, seed=config.seed, data_dir=str(Path(config.data).resolve()),
                         config=config.to_record(), run_dir=str(run_dir),
                         created=datetime.datetime.now().isoformat(timespec="seconds"))


def cross_validated_fields(config: TrainConfig, choice: crossval.Choice, files: data.Files,
                           test: data.Files) -> dict:
    """The record's threshold, calibration and file lists of a model measured out of fold and trained on
    every photo but the holdout."""
    return {"threshold": choice.threshold,
            "calibration": {**choice.scaling.to_record(), "fitted_on": "out-of-fold predictions",
                            "unsure_band": config.unsure_band},
            "split": {"train": data.relative(files, config.data), "validation": [],
                      "test": data.relative(test, config.data)}}


def print_partitions(copies: list, kept_in: str, parts: dict, class_names) -> None:
    """The near-copy groups and each partition's images per class, as both pipelines start."""
    if copies:
        print(f"near copies: {sum(map(len, copies))} images in {len(copies)} groups, each kept in one {kept_in}")
    for name, part in parts.items():
        print(f"{name:>10}: {len(part):5d} images  " + "  ".join(
            f"{c}={n}" for c, n in zip(class_names, part.count_per_class(len(class_names)))))


def save_run(network, run_record: record.Record, config: TrainConfig, trained_on: str) -> None:
    """The model and its record, atomically (a failed save keeps the previous model), and the record's copy
    in the run folder, as both pipelines end."""
    record.save(network, config.model, run_record)
    write_atomic(Path(run_record.run_dir) / "record.json", run_record.to_json())
    print(f"saved {config.model} ({trained_on}) and {record.sidecar_path(config.model)}; run logs in "
          f"{run_record.run_dir} (tensorboard --logdir {config.logdir})")


def image_datasets(config: TrainConfig, setup, parts, preprocessing, binary) -> dict:
    """tf.data pipelines of decoded images: validation and test whole, training sharded over the workers."""
    # Each worker trains on its own share of the training files; all of them validate and test on all.
    train_files = parts["train"].shard(setup.worker_index, setup.num_workers)
    caches = cache.choose_caches(config.cache, {**parts, "train": train_files}, preprocessing)
    global_batch = setup.global_batch(config.batch_size)
    datasets = {
        name: data.make_dataset(parts[name], preprocessing, global_batch, binary=binary, cache=caches[name])
        for name in ("validation", "test")
    }
    datasets["train"] = distribute.training_input(
        setup, config.batch_size, len(train_files), lambda batch_size, drop_remainder: data.make_dataset(
            train_files, preprocessing, batch_size, binary=binary, shuffle_seed=config.seed, cache=caches["train"],
            drop_remainder=drop_remainder))
    return datasets


def stored_features(config: TrainConfig, extractor, parts, preprocessing, digests: dict) -> dict:
    """{partition: (views, images, dim) backbone features}: every view for training, the image itself for the
    others. Read from the feature store where a run has computed them before."""
    store = cache.array_store(config.cache, features.FAMILY, features.extractor_id(config.arch, config.weights,
                                                                                 preprocessing))
    started = time.time()
    stored = {name: features.extract(extractor, parts[name].paths, store, preprocessing,
                                     features.VIEWS[config.views] if name == "train" else ("original",),
                                     digests=[digests[path] for path in parts[name].paths])
              for name in data.PARTITIONS}
    total = sum(array.shape[0] * array.shape[1] for array in stored.values())
    print(f"backbone features: {total} image views in {time.time() - started:.1f} s "
          f"({'from the store ' + str(store.folder) if store.folder else 'kept for this run only'})")
    return stored


def fit_head(config: TrainConfig, head, num_classes: int, stored, labels, callbacks, class_weight) -> None:
    """Train the network's head (its own layers: model.split_at_pool) on the stored features (every view of
    every training image), in place."""
    views, count, dim = stored["train"].shape
    # A step costs microseconds: run a whole epoch per call into the graph, not one Python round trip a batch.
    models.compile_model(head, num_classes, config.learning_rate,
                         steps_per_execution=-(-views * count // config.batch_size))
    train_set = features.dataset(stored["train"].reshape(views * count, dim), np.tile(labels["train"], views),
                                config.batch_size, shuffle_seed=config.seed)
    validation_set = features.dataset(stored["validation"][0], labels["validation"], config.batch_size)
    started = time.time()
    result = head.fit(train_set, validation_data=validation_set, epochs=config.epochs, callbacks=callbacks,
                      class_weight=class_weight, shuffle=False, verbose=0)
    best = int(np.argmin(result.history["val_loss"]))
    print(f"head: {len(result.history['loss'])} epochs on stored features in {time.time() - started:.1f} s; "
          f"best epoch {best + 1}: val loss {result.history['val_loss'][best]:.3f}, "
          f"val accuracy {result.history['val_accuracy'][best]:.3f}")


def fine_tune(config: TrainConfig, network, num_classes: int, setup, datasets, callbacks, class_weight,
              initial_epoch: int) -> None:
    """Open the backbone's top --fine-tune layers and train the whole model on augmented images, continuing
    the epoch count of the first stage (its History, among the callbacks, appends the new epochs)."""
    with setup.strategy.scope():
        opened = models.unfreeze_top(network, config.fine_tune)
        models.compile_model(network, num_classes, config.learning_rate / 10, jit=config.jit)
    print(f"fine-tuning the top {opened} layers of {config.arch} at learning rate {config.learning_rate / 10:g}")
    distribute.fit(network, setup, datasets["train"], datasets["validation"], epochs=config.fine_tune_epochs,
                   callbacks=callbacks, class_weight=class_weight, initial_epoch=initial_epoch)


def partition_domain(network, parts, preprocessing, batch_size: int, num_classes: int,
                     far_share: float) -> marks.Domain:
    """The centres of the training images' features (models.domain_reads), and the distance limit from the
    validation images, which the network never trained on."""
    reads = models.domain_reads(network)
    reader = models.domain_reader(network, reads)

    def vectors(name):
        dataset = data.make_dataset(parts[name], preprocessing, batch_size, binary=models.is_binary(num_classes))
        return reader.predict(dataset, verbose=0)

    centres = marks.class_centres(vectors("train"), parts["train"].labels, num_classes)
    return marks.Domain(centres, marks.far_limit(marks.distances(vectors("validation"), centres), far_share),
                        reads=reads)


def saved_epoch(history: dict, config, stage_start: int) -> int:
    """The epoch whose weights the model kept: early stopping restores the last stage's best, else the last."""
    losses = history["val_loss"][stage_start:]
    return stage_start + int(np.argmin(losses)) if config.patience else len(history["val_loss"]) - 1


def warn_if_nothing_learnt(losses, what: str) -> None:
    """Say so when the best epoch was the first: every later epoch made the held-out loss worse."""
    if len(losses) > 1 and int(np.argmin(losses)) == 0:
        print(f"warning: {what} was lowest after the first epoch, so the saved model learnt almost nothing; try "
              "a lower --learning-rate, more images per class, or a pretrained backbone (--arch auto)")


def test_line(summary: dict, class_names) -> str:
    interval, recalls = measured_parts(summary, class_names, "threshold")
    return (f"test ({summary['count']} images never used in training): accuracy {summary['accuracy']:.3f} "
            f"{interval}  f1 {summary['f1']:.3f}  {recalls}" + (
                "\n" + calibration.errors_text(summary) if "calibration_error" in summary else ""))


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


def resume_backup(config: TrainConfig) -> Backup:
    """The backup of an interrupted run to continue (--resume), or a fresh one for this run."""
    model = Path(config.model)
    folder = model.with_name(f".{model.name}.resume")
    state_file = folder / "state.json"
    settings_file = folder / "settings.json"  # the command's settings: a resumed run must be the same one
    settings = {name: value for name, value in config.to_record().items() if name != "resume"}
    if config.resume:
        if not state_file.exists():
            raise data.DataError(f"`resume`: there is no interrupted run to continue ({folder} does not exist; "
                                 "it is removed when a run ends)")
        started = json.loads(settings_file.read_text()) if settings_file.exists() else settings
        differ = [f"`{name}` {started.get(name)!r}, not {value!r}" for name, value in settings.items()
                  if started.get(name) != value]
        if differ:  # another seed or split would train on the first run's test photos; another size, crash
            raise data.DataError(f"`resume`: the interrupted run was started with {'; '.join(differ)}: resume it "
                                 "with its own settings, or leave out `resume` to start over")
        print(f"resuming the interrupted run from {folder}")
        return Backup(folder, json.loads(state_file.read_text()))
    if folder.exists():
        print(f"note: {folder} holds the backup of an interrupted run; starting over (add --resume to continue it)")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_atomic(settings_file, json.dumps(settings))
    return Backup(folder, {})


def fit(data=defaults.DATA, arch: str = "auto", **settings):
    """The one-call API, `happysad.train(data="photos", arch="auto")`: train as the command does and return
    the saved model (a classifier.Classifier: .predict(paths), .record). Each setting is a field of
    config.TrainConfig, the command's option by its name (folds=5, faces=True, augment=False,
    model="models/faces.h5"...); a wrong one raises a ValueError that names it."""
    run_config = TrainConfig.build(data=data, arch=arch, **settings)
    enable_memory_growth()
    train(run_config)
    return classifier.load(run_config.model)


def main(argv=None) -> None:
    run_config = parse_args(argv)
    try:
        data.find_classes(run_config.data)  # a wrong folder is said before TensorFlow takes seconds to start
        enable_memory_growth()
        train(run_config)
    except errors.SettingError as error:  # the folder, the network or the devices, named as settings
        sys.exit(f"happysad.train: error: {errors.for_command(error)}")


class CallableModule(types.ModuleType):
    """Makes `happysad.train(...)` call fit(): the module a reader finds the command in is the API too."""

    def __call__(self, *args, **kwargs):
        return fit(*args, **kwargs)


sys.modules[__name__].__class__ = CallableModule

if __name__ == "__main__":
    main()
