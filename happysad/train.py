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

from happysad import data, gpu, metrics, model as models, record


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m happysad.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data", help="folder with one subfolder of images per class")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256, help="images are resized to N×N")
    parser.add_argument("--seed", type=int, default=1337, help="same seed and data: same split and init")
    parser.add_argument("--split", default="0.7,0.2,0.1", help="train,validation,test fractions")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--model", default="models/happysad.h5", help="where to save the model (.h5)")
    parser.add_argument("--logdir", default="logs", help="TensorBoard runs go to LOGDIR/RUN_NAME")
    parser.add_argument("--run-name", help="run folder name (default: the start time)")
    parser.add_argument("--cache", default="auto",
                        help="decoded-image cache: auto, memory, disk[:PATH] or none (default: auto)")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
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


def choose_cache(setting: str, files, image_size: int, preprocessing: str):
    """'memory', a tf.data cache file prefix, or None, for one partition's files."""
    if setting == "none":
        return None
    if setting == "memory":
        return "memory"
    if setting == "auto":
        return "memory" if data.decoded_bytes(files, image_size) < 2 * 1024**3 else choose_cache(
            "disk", files, image_size, preprocessing)
    if setting == "disk" or setting.startswith("disk:"):
        folder = Path(setting[5:] or ".cache/happysad") if setting.startswith("disk:") else Path(
            ".cache/happysad")
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder / f"images-{data.cache_key(files, image_size, preprocessing)}")
    raise SystemExit(f"happysad.train: error: --cache must be auto, memory, disk[:PATH] or none, "
                     f"got {setting!r}")


def plot_curves(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        epochs = range(1, len(history[metric]) + 1)
        axis.plot(epochs, history[metric], label="train")
        axis.plot(epochs, history[f"val_{metric}"], label="validation")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def train(args) -> dict:
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

    preprocessing = "v1"
    datasets = {
        name: data.make_dataset(
            parts[name], args.image_size, args.batch_size, binary=binary,
            shuffle_seed=args.seed if name == "train" else None,
            cache=choose_cache(args.cache, parts[name], args.image_size, preprocessing))
        for name in data.PARTITIONS
    }

    network = models.compile_model(models.build_cnn(len(class_names), args.image_size),
                                   len(class_names), args.learning_rate)
    network.summary(print_fn=print)

    run_dir = run_folder(args.logdir, args.run_name)
    timing = EpochTiming(len(parts["train"]))
    callbacks = [timing, keras.callbacks.TensorBoard(log_dir=str(run_dir))]
    started = time.time()
    try:
        history = network.fit(datasets["train"], validation_data=datasets["validation"], epochs=args.epochs,
                              callbacks=callbacks, shuffle=False, verbose=2)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        bad = data.find_undecodable(files.paths, args.image_size)
        if not bad:
            raise
        listing = "; ".join(f"{path} ({reason})" for path, reason in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise data.DataError(f"{len(bad)} file(s) cannot be decoded by TensorFlow: {listing}{more}; "
                             f"run `python -m happysad.clean {args.data}` first") from None
    train_seconds = time.time() - started

    test_probabilities = network.predict(datasets["test"], verbose=0)
    if binary:
        test_probabilities = np.concatenate([1 - test_probabilities, test_probabilities], axis=1)
    test_metrics = metrics.summarize(parts["test"].labels, test_probabilities, class_names)
    print(f"test ({test_metrics['count']} images never used in training): "
          f"accuracy {test_metrics['accuracy']:.3f}  precision {test_metrics['precision']:.3f}  "
          f"recall {test_metrics['recall']:.3f}  f1 {test_metrics['f1']:.3f}")

    plot_curves(history.history, run_dir / "curves.png")
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
                         "arch": "cnn", "data": str(args.data)},
        run_dir=str(run_dir),
        created=datetime.datetime.now().isoformat(timespec="seconds"),
    )
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
    except data.DataError as error:
        sys.exit(f"happysad.train: error: {error}")


if __name__ == "__main__":
    main()
