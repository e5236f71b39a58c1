"""What a run writes for TensorBoard, with TensorBoard's own summary APIs.

A run folder `logs/<run>/` holds (run names as TensorBoard shows them):
- `<run>/train`, `<run>/validation`: Keras' TensorBoard callback: per-epoch scalars `epoch_loss`,
  `epoch_accuracy`, `epoch_precision`, `epoch_recall`, `epoch_auc`, `epoch_learning_rate` (train),
  `epoch_epoch_seconds` and `epoch_images_per_second` (train, from train.EpochTiming), and the conceptual
  Keras graph (tag `keras`). Keras 3 no longer writes the op graph although `write_graph=True` says so, so
  `TrainingSummaries` writes it (the model's inference function, `tf.summary.graph`), together with a grid of
  training images with their labels (`samples`, once) in `train`, and every epoch in `validation` the
  confusion matrix as an image (`confusion_matrix`) and precision-recall curves (pr_curve plugin).
- `<run>`: the hyper-parameters for the HParams dashboard (`tensorboard.plugins.hparams.api`) and, after
  training, the test metrics as scalars `test/<metric>`, so the HParams table compares runs on them.
- `<run>/evaluate[-<folder>]`: what `python -m happysad.evaluate` measured: scalars, pictures, PR curve.
"""
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api
from tensorboard.plugins.pr_curve import summary as pr_curve_summary

from happysad import images, metrics, reports

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


class TrainingSummaries(keras.callbacks.Callback):
    """Op graph and sample images when training starts; validation confusion matrix and PR curves each epoch.

    The validation predictions take one extra pass over the (cached) validation set per epoch. One instance
    may serve several fits of the same model (fine-tuning): the graph and the samples are written once.
    """

    def __init__(self, run_dir, train_files, validation_dataset, validation_labels, class_names,
                 image_size: int, faces: bool = False, samples: int = 16, seed: int = 0):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.train_files = train_files
        self.validation_dataset = validation_dataset
        self.validation_labels = np.asarray(validation_labels, dtype=int)
        self.class_names = list(class_names)
        self.image_size = image_size
        self.faces = faces
        self.samples = samples
        self.seed = seed
        self.validation_writer = None
        self.matrix_every_epoch = True
        self.last_matrix = None

    def watch(self, validation_dataset, matrix_every_epoch: bool = True) -> None:
        """What the next fit validates on. A head trained on stored features runs an epoch in milliseconds,
        where drawing a confusion matrix takes a tenth of a second: it draws only the last epoch's."""
        self.validation_dataset = validation_dataset
        self.matrix_every_epoch = matrix_every_epoch

    def on_train_begin(self, logs=None):
        if self.validation_writer is not None:
            return
        train_writer = tf.summary.create_file_writer(str(self.run_dir / "train"))
        with train_writer.as_default():
            self.write_graph()
            self.write_samples()
        train_writer.close()
        self.validation_writer = tf.summary.create_file_writer(str(self.run_dir / "validation"))

    def write_graph(self) -> None:
        spec = tf.TensorSpec(self.model.input_shape, self.model.inputs[0].dtype, name="image")
        inference = tf.function(lambda batch: self.model(batch, training=False), autograph=False)
        tf.summary.graph(inference.get_concrete_function(spec).graph)

    def pick_samples(self) -> list:
        """Indices of up to `samples` training images, spread evenly over the classes, seeded."""
        labels = np.asarray(self.train_files.labels, dtype=int)
        per_class = -(-self.samples // len(self.class_names))
        rng = np.random.default_rng(self.seed)
        picked = []
        for label in range(len(self.class_names)):
            members = np.flatnonzero(labels == label)
            picked.extend(rng.choice(members, min(per_class, len(members)), replace=False).tolist())
        return picked[:self.samples]

    def write_samples(self) -> None:
        picked = self.pick_samples()
        pixels = [images.load(self.train_files.paths[i], self.image_size, self.faces).numpy() for i in picked]
        titles = [self.class_names[self.train_files.labels[i]] for i in picked]
        write_png("samples", reports.png_bytes(reports.image_grid_figure(
            pixels, titles, title="training images as the model sees them, with their labels")), step=0)

    def on_epoch_end(self, epoch, logs=None):
        if getattr(self, "traced_for", None) is not self.model:
            # One traced forward pass per model (the head, then the whole model when fine-tuning): `predict`
            # would trace anew at every epoch.
            model = self.traced_for = self.model
            self.forward = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
        outputs = np.concatenate([self.forward(batch).numpy() for batch, _ in self.validation_dataset])
        probabilities = metrics.class_probabilities(outputs)
        matrix = metrics.confusion_matrix(self.validation_labels, metrics.predicted_labels(probabilities),
                                          len(self.class_names))
        with self.validation_writer.as_default():
            write_pr_curves(self.validation_labels, probabilities, self.class_names, step=epoch)
        self.last_matrix = (matrix, epoch)
        if self.matrix_every_epoch:
            self.write_matrix()
        self.validation_writer.flush()

    def write_matrix(self) -> None:
        matrix, epoch = self.last_matrix
        with self.validation_writer.as_default():
            write_png("confusion_matrix", reports.png_bytes(reports.confusion_matrix_figure(
                matrix, self.class_names, f"validation, epoch {epoch + 1}")), step=epoch)
        self.last_matrix = None

    def on_train_end(self, logs=None):
        if self.last_matrix is not None:
            self.write_matrix()
        self.validation_writer.flush()


class HParams(keras.callbacks.Callback):
    """The run's hyper-parameters for the HParams dashboard, written in the run folder when training first
    starts. (hparams_api.KerasCallback does the same but refuses a second fit, which fine-tuning makes.)"""

    def __init__(self, run_dir, values: dict):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.values = values
        self.written = False

    def on_train_begin(self, logs=None):
        if self.written:
            return
        writer = tf.summary.create_file_writer(str(self.run_dir))
        with writer.as_default():
            hparams_api.hparams(self.values, trial_id=self.run_dir.name)
        writer.close()
        self.written = True


def training_callbacks(run_dir, options: dict, train_files, validation_dataset, validation_labels,
                       class_names, image_size: int, faces: bool = False, seed: int = 0) -> list:
    """Keras' TensorBoard callback (scalars, learning rate, Keras graph), TrainingSummaries and the HParams
    record. Put them after callbacks that add values to the epoch logs, so those values are written too."""
    return [
        keras.callbacks.TensorBoard(log_dir=str(run_dir), write_graph=True),
        TrainingSummaries(run_dir, train_files, validation_dataset, validation_labels, class_names,
                          image_size, faces=faces, seed=seed),
        HParams(run_dir, hyperparameters(options)),
    ]


def write_scalars(values: dict, step: int, prefix: str) -> None:
    """The metrics of one evaluation (metrics.summarize's dict) as scalars `<prefix>/<metric>` under the
    default writer."""
    for name in SCALAR_METRICS:
        if values.get(name) is not None:
            tf.summary.scalar(f"{prefix}/{name}", values[name], step=step)


def write_test_metrics(run_dir, test_metrics: dict, step: int) -> None:
    """Training's final test metrics as `test/<metric>` in the run folder itself, where the HParams
    dashboard takes them as the run's results."""
    writer = tf.summary.create_file_writer(str(run_dir))
    with writer.as_default():
        write_scalars(test_metrics, step, "test")
    writer.close()


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
