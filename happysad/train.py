"""python -m happysad.train: train a classifier on data/<class>/ images.

folder → leak-free split (file lists) → cached tf.data pipelines → model → fit with TensorBoard →
test metrics on the held-out partition → models/happysad.h5 + models/happysad.json, and a run folder
logs/<run>/ with TensorBoard events, the training curves and a copy of the record.
"""
import argparse
import datetime
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from happysad import data, distribute, gpu, metrics, model as models, record, reports, tensorboard


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m happysad.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data", help="folder with one subfolder of images per class")
    parser.add_argument("--epochs", type=int, default=60, help="at most this many (see --patience)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128, help="images are resized to N×N")
    parser.add_argument("--seed", type=int, default=1337, help="same seed and data: same split and init")
    parser.add_argument("--split", default="0.7,0.2,0.1", help="train,validation,test fractions")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--arch", default="cnn", choices=models.ARCHITECTURES,
                        help="cnn: the design card's network; or a Keras Applications backbone under a new head")
    parser.add_argument("--weights", default="imagenet",
                        help="backbone weights: imagenet (downloaded once by Keras), none (train from scratch) "
                             "or PATH to a Keras *_notop.h5 file (default: imagenet)")
    parser.add_argument("--fine-tune", type=int, default=0, metavar="N",
                        help="after training the head, unfreeze the backbone's top N layers (BatchNorm stays "
                             "frozen) and train again at a tenth of the learning rate")
    parser.add_argument("--fine-tune-epochs", type=int, default=10)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="random flips, rotations, zooms, shifts and contrast while training")
    parser.add_argument("--dropout", type=float, default=0.5, help="dropout rate before the output layer")
    parser.add_argument("--class-weights", action=argparse.BooleanOptionalAction, default=True,
                        help="weigh each class by n_images / (n_classes * its count) in the training partition")
    parser.add_argument("--patience", type=int, default=10,
                        help="stop after N epochs without a lower validation loss and keep the best epoch's "
                             "weights; the learning rate drops 5x after N/2 such epochs (0: off)")
    parser.add_argument("--checkpoint", action="store_true",
                        help="also save the best epoch so far to the run folder as it trains (checkpoint.h5)")
    parser.add_argument("--faces", action="store_true",
                        help="crop each image to its largest face (OpenCV), the whole image when none is found")
    parser.add_argument("--model", default="models/happysad.h5", help="where to save the model (.h5)")
    parser.add_argument("--logdir", default="logs", help="TensorBoard runs go to LOGDIR/RUN_NAME")
    parser.add_argument("--run-name", help="run folder name (default: the start time)")
    parser.add_argument("--cache", default="auto",
                        help="decoded-image cache: auto (memory if it fits in half the free RAM, else disk), "
                             f"memory, disk[:PATH] (default PATH {data.DEFAULT_CACHE_DIR}) or none")
    parser.add_argument("--strategy", default="auto", choices=distribute.STRATEGIES,
                        help="auto: every GPU of this machine when it has several; multiworker: the machines in "
                             "TF_CONFIG (--batch-size is per replica)")
    parser.add_argument("--mixed-precision", action="store_true", help="float16 compute on GPUs")
    parser.add_argument("--jit", action="store_true", help="compile training steps with XLA")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "image_size", "fine_tune_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.image_size < 32:
        parser.error("--image-size must be at least 32 (smaller images vanish in the networks' pooling)")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.patience < 0 or args.fine_tune < 0:
        parser.error("--patience and --fine-tune must not be negative")
    if args.fine_tune and (args.arch == "cnn" or args.weights == "none"):
        parser.error("--fine-tune needs a backbone (--arch) with pretrained --weights (imagenet or a file)")
    try:
        args.fractions = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        parser.error(f"--split must be three comma-separated fractions, got {args.split!r}")
    return args


def run_folder(logdir, run_name) -> Path:
    name = run_name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, n = Path(logdir) / name, 2
    while folder.exists():
        folder, n = Path(logdir) / f"{name}-{n}", n + 1
    folder.mkdir(parents=True)
    return folder


def class_weights(labels, num_classes: int) -> dict:
    """n_images / (n_classes * count) for each class, so every class weighs the same in the loss in total."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes)
    return {index: float(len(labels) / (num_classes * count)) for index, count in enumerate(counts)}


def stopping_callbacks(args, checkpoint_path) -> list:
    """Early stopping (keeping the best epoch's weights), learning-rate reduction on a plateau and the
    best-so-far checkpoint, all watching the validation loss."""
    callbacks = []
    if args.patience:
        callbacks += [keras.callbacks.EarlyStopping(monitor="val_loss", patience=args.patience,
                                                    restore_best_weights=True, verbose=1),
                      keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2,
                                                        patience=max(1, args.patience // 2), min_lr=1e-6,
                                                        verbose=1)]
    if checkpoint_path:
        callbacks.append(keras.callbacks.ModelCheckpoint(str(checkpoint_path), monitor="val_loss",
                                                         save_best_only=True))
    return callbacks


def train(args) -> dict:
    setup = distribute.make(args.strategy)  # first: multi-worker collectives must exist before TF starts
    precision = distribute.set_precision(args.mixed_precision)
    print(setup.describe())
    keras.utils.set_random_seed(args.seed)
    class_names = data.find_classes(args.data)
    files, skipped = data.list_images(args.data, class_names)
    if skipped:
        print(f"note: {len(skipped)} file(s) with extensions training does not read are ignored "
              f"(e.g. {skipped[0]}): run `python -m happysad.clean {args.data}` to convert or quarantine them")
    parts = data.split(files, args.fractions, args.seed)
    binary = models.is_binary(len(class_names))
    print(f"classes: {', '.join(f'{i}={name}' for i, name in enumerate(class_names))}")
    for name in data.PARTITIONS:
        counts = parts[name].count_per_class(len(class_names))
        print(f"{name:>10}: {len(parts[name]):5d} images  " + "  ".join(
            f"{c}={n}" for c, n in zip(class_names, counts)))
    class_weight = class_weights(parts["train"].labels, len(class_names)) if args.class_weights else None
    if class_weight:
        print("class weights (from the training partition): " + "  ".join(
            f"{name}={class_weight[i]:.3f}" for i, name in enumerate(class_names)))

    preprocessing = "v1-faces" if args.faces else "v1"
    # Each worker trains on its own share of the training files; all of them validate and test on all.
    train_files = distribute.shard(parts["train"], setup)
    caches = data.choose_caches(args.cache, {**parts, "train": train_files}, args.image_size, preprocessing)
    global_batch = setup.global_batch(args.batch_size)
    datasets = {
        name: data.make_dataset(parts[name], args.image_size, global_batch, binary=binary, cache=caches[name],
                                faces=args.faces)
        for name in ("validation", "test")
    }
    datasets["train"] = distribute.distribute(
        setup, args.batch_size, len(train_files), lambda batch_size, drop_remainder: data.make_dataset(
            train_files, args.image_size, batch_size, binary=binary, shuffle_seed=args.seed,
            cache=caches["train"], faces=args.faces, drop_remainder=drop_remainder))

    with setup.strategy.scope():
        network = models.compile_model(
            models.build(args.arch, len(class_names), args.image_size, augment=args.augment,
                         dropout=args.dropout, weights=args.weights),
            len(class_names), args.learning_rate)
    if args.jit:
        network.jit_compile = True
    network.summary(print_fn=print)

    run_dir = run_folder(args.logdir, args.run_name) if setup.is_chief else distribute.scratch_folder(setup)
    timing = EpochTiming(len(parts["train"]))
    callbacks = [timing, *tensorboard.training_callbacks(
        run_dir, vars(args), parts["train"], datasets["validation"], parts["validation"].labels, class_names,
        args.image_size, faces=args.faces, seed=args.seed)]
    checkpoint = run_dir / f"checkpoint{Path(args.model).suffix}" if args.checkpoint and setup.is_chief else None
    callbacks = stopping_callbacks(args, checkpoint) + callbacks
    if checkpoint:  # a record beside the checkpoint makes it usable by predict even if this run never ends
        provisional = record.Record(class_names, args.image_size, seed=args.seed, run_dir=str(run_dir))
        provisional.preprocessing["faces"] = args.faces
        record.write_json_atomic(record.sidecar_path(checkpoint), provisional.to_json())
    started = time.time()
    try:
        history = distribute.fit(network, setup, datasets["train"], datasets["validation"], epochs=args.epochs,
                                 callbacks=callbacks, class_weight=class_weight)
        if args.fine_tune:
            with setup.strategy.scope():
                opened = models.unfreeze_top(network, args.fine_tune)
                models.compile_model(network, len(class_names), args.learning_rate / 10)
            if args.jit:
                network.jit_compile = True
            print(f"fine-tuning the top {opened} layers of {args.arch} at learning rate "
                  f"{args.learning_rate / 10:g}")
            tuned = distribute.fit(network, setup, datasets["train"], datasets["validation"],
                                   epochs=args.fine_tune_epochs, callbacks=callbacks, class_weight=class_weight,
                                   initial_epoch=len(history.history["loss"]))
            for key, values in tuned.history.items():
                history.history.setdefault(key, []).extend(values)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
        bad = data.find_undecodable(files.paths, args.image_size)
        if not bad:
            raise
        listing = "; ".join(f"{path} ({reason})" for path, reason in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise data.DataError(f"{len(bad)} file(s) cannot be decoded by TensorFlow: {listing}{more}; "
                             f"run `python -m happysad.clean {args.data}` first") from None
    train_seconds = time.time() - started

    test_probabilities = metrics.class_probabilities(network.predict(datasets["test"], verbose=0))
    test_metrics = metrics.summarize(parts["test"].labels, test_probabilities, class_names)
    print(f"test ({test_metrics['count']} images never used in training): "
          f"accuracy {test_metrics['accuracy']:.3f}  precision {test_metrics['precision']:.3f}  "
          f"recall {test_metrics['recall']:.3f}  f1 {test_metrics['f1']:.3f}")

    tensorboard.write_test_metrics(run_dir, test_metrics, step=len(history.history["loss"]) - 1)
    reports.plot_curves(history.history, run_dir / "curves.png")
    final = {key: float(values[-1]) for key, values in history.history.items()}
    run_record = record.Record(
        class_names=class_names,
        image_size=args.image_size,
        seed=args.seed,
        data_dir=str(Path(args.data).resolve()),
        split={name: data.relative(parts[name], args.data) for name in data.PARTITIONS},
        metrics={"test": test_metrics, "final_epoch": final, "epoch_seconds": timing.seconds,
                 "train_seconds": train_seconds},
        hyperparameters={"epochs": args.epochs, "batch_size": args.batch_size, "image_size": args.image_size,
                         "learning_rate": args.learning_rate, "seed": args.seed, "split": list(args.fractions),
                         "arch": args.arch, "weights": None if args.arch == "cnn" else args.weights,
                         "augment": args.augment,
                         "dropout": args.dropout, "class_weight": class_weight, "patience": args.patience,
                         "fine_tune": args.fine_tune, "fine_tune_epochs": args.fine_tune_epochs,
                         "faces": args.faces, "data": str(args.data), "strategy": setup.name,
                         "replicas": setup.replicas, "global_batch_size": global_batch, "precision": precision,
                         "jit": args.jit},
        run_dir=str(run_dir),
        created=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    run_record.preprocessing["faces"] = args.faces
    if not setup.is_chief:
        print(f"worker {setup.worker_index}: done; the chief saves the model and the logs")
        return {"record": run_record, "history": history.history, "run_dir": None}
    record.save(network, args.model, run_record)
    record.write_json_atomic(run_dir / "record.json", run_record.to_json())
    print(f"saved {args.model} and {record.sidecar_path(args.model)}; run logs in {run_dir} "
          f"(tensorboard --logdir {args.logdir})")
    return {"record": run_record, "history": history.history, "run_dir": run_dir}


class EpochTiming(keras.callbacks.Callback):
    """Adds epoch_seconds and images_per_second to each epoch's logs, so TensorBoard records them."""

    def __init__(self, train_images: int):
        super().__init__()
        self.train_images = train_images
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self.started
        self.seconds.append(elapsed)
        if logs is not None:
            logs["epoch_seconds"] = elapsed
            logs["images_per_second"] = self.train_images / elapsed


def main(argv=None) -> None:
    args = parse_args(argv)
    gpu.enable_memory_growth()
    try:
        train(args)
    except (data.DataError, distribute.DistributeError, models.BuildError) as error:
        sys.exit(f"happysad.train: error: {error}")


if __name__ == "__main__":
    main()
