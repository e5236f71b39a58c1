"""What a run writes for TensorBoard, with TensorBoard's own summary APIs.

A run folder `logs/<run>/` holds (run names as TensorBoard shows them):
- `<run>/train`, `<run>/validation`: Keras' TensorBoard callback: per-epoch scalars `epoch_loss`,
  `epoch_accuracy`, `epoch_precision`, `epoch_recall`, `epoch_auc`, `epoch_learning_rate` (train),
  `epoch_epoch_seconds` and `epoch_images_per_second` (train, from callbacks.EpochTiming), and the conceptual
  Keras graph (tag `keras`). Keras 3 no longer writes the op graph although `write_graph=True` says so, so
  `callbacks.TrainingSummaries` writes it (the model's inference function, `tf.summary.graph`), together with a grid of
  training images with their labels (`samples`, once) in `train`, and every epoch in `validation` the
  confusion matrix as an image (`confusion_matrix`) and precision-recall curves (pr_curve plugin).
- `<run>`: the hyper-parameters for the HParams dashboard (`tensorboard.plugins.hparams.api`) and, after
  training, what the run measured as scalars `cross_validation/<metric>` (out of fold) and `test/<metric>`
  (a held-out partition), so the HParams table compares runs on them. A head fitted by cross-validation on
  stored features has no epochs: its run folder holds only these. A CNN trained after K fits on folds has no
  validation run; `<run>/folds` holds instead the folds' pooled held-out `epoch_loss` after each epoch, beside
  the training loss, with the epoch count chosen where it is lowest.
- `<run>/evaluate[-<folder>]`: what `python -m happysad.evaluate` measured: scalars, pictures, PR curve.
"""
import dataclasses
from pathlib import Path

import numpy as np

from happysad.runtime import deferred, tf

hparams_api = deferred("tensorboard.plugins.hparams.api")
pr_curve_summary = deferred("tensorboard.plugins.pr_curve.summary")

SCALAR_METRICS = ("accuracy", "precision", "recall", "f1", "log_loss", "roc_auc", "pr_auc")


def write_png(name: str, png: bytes, step: int) -> None:
    """A PNG picture (e.g. reports.png_bytes of a figure) as an image summary under the default writer."""
    tf.summary.image(name, tf.image.decode_png(png, channels=4)[tf.newaxis], step=step)


def write_pr_curves(labels, probabilities, class_names, step: int, prefix: str = "") -> None:
    """PR curve of the second class for two classes (its probability is the sigmoid output), one curve per
    class (one against the rest) for more."""
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    positives = [1] if len(class_names) == 2 else range(len(class_names))
    for index in positives:
        name = f"{prefix}pr_curve" if len(class_names) == 2 else f"{prefix}pr_curve/{class_names[index]}"
        summary = pr_curve_summary.pb(name, labels == index, np.clip(probabilities[:, index], 0, 1),
                                      num_thresholds=101, display_name=f"PR curve: {class_names[index]}")
        tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=step)


def hyperparameters(options: dict) -> dict:
    """The run's hyper-parameters (train's record) that the HParams dashboard can show: bools, numbers, text."""
    return {key: value for key, value in options.items() if isinstance(value, (bool, int, float, str))}


def write_hyperparameters(run_dir, options: dict, preprocessing, seed: int) -> None:
    """The run's hyper-parameters, preprocessing settings and seed, for the HParams dashboard."""
    writer = tf.summary.create_file_writer(str(run_dir))
    with writer.as_default():
        hparams_api.hparams(hyperparameters({**options, **dataclasses.asdict(preprocessing), "seed": seed}),
                            trial_id=Path(run_dir).name)
    writer.close()


def write_measured(run_dir, run_metrics: dict, step: int = 0) -> None:
    """What a run measured: `cross_validation/<metric>` (out of fold) and `test/<metric>` (a held-out
    partition) scalars in the run folder itself, where the HParams dashboard takes them as the run's results."""
    writer = tf.summary.create_file_writer(str(run_dir))
    with writer.as_default():
        for kind in ("cross_validation", "test"):
            if kind in run_metrics:
                write_scalars(run_metrics[kind], step, kind)
    writer.close()


def write_held_out_curve(run_dir, losses) -> None:
    """The folds' pooled held-out log loss after each epoch, as `epoch_loss` of the run `<run>/folds`, so
    TensorBoard draws it beside the training loss Keras writes."""
    writer = tf.summary.create_file_writer(str(Path(run_dir) / "folds"))
    with writer.as_default():
        for epoch, loss in enumerate(losses):
            tf.summary.scalar("epoch_loss", loss, step=epoch)
    writer.close()


def write_scalars(values: dict, step: int, prefix: str) -> None:
    """The metrics of one evaluation (metrics.summarize's dict) as scalars `<prefix>/<metric>` under the
    default writer."""
    for name in SCALAR_METRICS:
        if values.get(name) is not None:
            tf.summary.scalar(f"{prefix}/{name}", values[name], step=step)


def write_evaluation(log_dir, summary: dict, pictures: dict, labels, probabilities, class_names,
                     step: int = 0) -> None:
    """Scalars `evaluate/<metric>`, the report's pictures as images and the PR curves, in log_dir."""
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        write_scalars(summary, step, "evaluate")
        for name, png in pictures.items():
            write_png(f"evaluate/{name}", png, step=step)
        write_pr_curves(labels, probabilities, class_names, step=step, prefix="evaluate/")
    writer.close()
