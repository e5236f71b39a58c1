"""The Keras callbacks of a training run: early stopping, timing, TensorBoard summaries and the state
--resume needs. Defining them needs Keras, so the training command imports this module when it trains."""
import json
import time
from pathlib import Path

import numpy as np

from happysad import images, metrics, model as models, reports, summaries
from happysad.files import write_atomic
from happysad.runtime import keras, tf


def stopping(patience: int) -> list:
    """Early stopping (keeping the best epoch's weights) and learning-rate reduction on a plateau, both
    watching the validation loss; none for patience 0."""
    if not patience:
        return []
    return [keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True,
                                          verbose=1),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=max(1, patience // 2),
                                              min_lr=1e-6, verbose=1)]


class ResumeState(keras.callbacks.Callback):
    """What Keras' BackupAndRestore does not keep, saved after every epoch and put back when a run resumes:
    the run folder, this fit's epochs in the run's History, and the state of early stopping (with its best
    weights so far) and of the learning-rate reduction. Goes after those callbacks and the History, so it
    sees their updated state."""

    STATE = {keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
             keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter")}

    def __init__(self, backup, run_dir, callbacks, history: keras.callbacks.History):
        super().__init__()
        self.backup, self.run_dir, self.run_history = backup, run_dir, history
        self.watched = [c for c in callbacks if type(c) in self.STATE]
        self.stage_start = {}

    def on_train_begin(self, logs=None):
        state = self.backup.state
        # Epochs logged before this fit (the head's, when fine-tuning) were not interrupted: not saved here.
        self.stage_start = {key: len(values) for key, values in self.run_history.history.items()}
        for key, values in state.get("history", {}).items():
            self.run_history.history.setdefault(key, []).extend(values)
        for callback, values in zip(self.watched, state.get("callbacks", [])):
            for name, value in values.items():
                setattr(callback, name, value)
            best = self.backup.folder / "best.npz"
            if isinstance(callback, keras.callbacks.EarlyStopping) and best.exists():
                with np.load(best) as saved:
                    callback.best_weights = [saved[f"w{i}"] for i in range(len(saved.files))]
        self.save()

    def on_epoch_end(self, epoch, logs=None):
        for callback in self.watched:
            if isinstance(callback, keras.callbacks.EarlyStopping) and callback.best_epoch == epoch:
                np.savez(self.backup.folder / "best.npz", **{f"w{i}": w for i, w in enumerate(callback.best_weights)})
        self.save()

    def on_train_end(self, logs=None):
        self.backup.state = {}  # restored once: a later fit in this process starts afresh

    def save(self) -> None:
        epochs = {key: [float(value) for value in values[self.stage_start.get(key, 0):]]
                  for key, values in self.run_history.history.items()}
        state = {"run_dir": str(self.run_dir), "history": epochs,
                 "callbacks": [{name: json_number(getattr(callback, name)) for name in self.STATE[type(callback)]}
                               for callback in self.watched]}
        write_atomic(self.backup.folder / "state.json", json.dumps(state))


def json_number(value):
    return value if value is None or isinstance(value, int) else float(value)


class EpochTiming(keras.callbacks.Callback):
    """Adds epoch_seconds and images_per_second to each epoch's logs, so TensorBoard records them."""

    def __init__(self, train_images: int):
        super().__init__()
        self.train_images = train_images

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self.started
        if logs is not None:
            logs["epoch_seconds"] = elapsed
            logs["images_per_second"] = self.train_images / elapsed


class AveragedWeights(keras.callbacks.Callback):
    """Keeps the trainable weights after each of the last `window` epochs; `average()` puts their mean in the
    network (stochastic weight averaging). Adam at a fixed learning rate leaves a few hundred photos' CNN
    wandering from epoch to epoch (one fold's accuracy moved between 0.59 and 0.69 over ten epochs); the
    mean of its last epochs sits in the middle of where it wandered."""

    def __init__(self, window: int):
        super().__init__()
        self.window = window
        self.kept = []

    def on_epoch_end(self, epoch, logs=None):
        self.kept = [*self.kept, [variable.numpy() for variable in self.model.trainable_weights]][-self.window:]

    def average(self) -> None:
        self.put([np.mean(values, axis=0) for values in zip(*self.kept)])

    def put(self, weights: list) -> None:
        for variable, values in zip(self.model.trainable_weights, weights):
            variable.assign(values)


class HeldOutCurve(AveragedWeights):
    """A cross-validation fold's own images scored after every epoch of the fit on the other folds, by the
    mean of the weights of the last `window` epochs (AveragedWeights; 1: the weights as they are): their
    probabilities, in file order (`probabilities`: epochs × images × classes), what
    crossval.epochs_cross_validated chooses the epoch count from. The fit goes on from its own weights."""

    def __init__(self, dataset, order, window: int = 1):
        super().__init__(window)
        self.dataset, self.back = dataset, np.argsort(order)
        self.probabilities = []

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        current = self.kept[-1]
        self.average()
        self.probabilities.append(metrics.class_probabilities(models.outputs(self.model, self.dataset))[self.back])
        self.put(current)


class TrainingSummaries(keras.callbacks.Callback):
    """Op graph and sample images when training starts; validation confusion matrix and PR curves each epoch
    (when there is a validation set: the network trained on every photo after cross-validation has none).

    The validation predictions take one extra pass over the (cached) validation set per epoch. One instance
    may serve several fits of the same model (fine-tuning): the graph and the samples are written once.
    """

    def __init__(self, run_dir, train_files, validation_dataset, validation_labels, class_names,
                 preprocessing: images.Preprocessing, samples: int = 16, seed: int = 0):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.train_files = train_files
        self.validation_dataset = validation_dataset
        self.validation_labels = np.asarray(validation_labels, dtype=int)
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.samples = samples
        self.seed = seed
        self.began = False
        self.validation_writer = None
        self.matrix_every_epoch = True
        self.last_matrix = None

    def watch(self, validation_dataset, matrix_every_epoch: bool = True) -> None:
        """What the next fit validates on. A head trained on stored features runs an epoch in milliseconds,
        where drawing a confusion matrix takes a tenth of a second: it draws only the last epoch's."""
        self.validation_dataset = validation_dataset
        self.matrix_every_epoch = matrix_every_epoch

    def on_train_begin(self, logs=None):
        if self.began:
            return
        self.began = True
        train_writer = tf.summary.create_file_writer(str(self.run_dir / "train"))
        with train_writer.as_default():
            self.write_graph()
            self.write_samples()
        train_writer.close()
        if self.validation_dataset is not None:
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
        pixels = [self.preprocessing.load(self.train_files.paths[i]).numpy() for i in picked]
        titles = [self.class_names[self.train_files.labels[i]] for i in picked]
        summaries.write_png("samples", reports.png_bytes(reports.image_grid_figure(
            pixels, titles, title="training images as the model sees them, with their labels")), step=0)

    def on_epoch_end(self, epoch, logs=None):
        if self.validation_dataset is None:
            return
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
            summaries.write_pr_curves(self.validation_labels, probabilities, self.class_names, step=epoch)
        self.last_matrix = (matrix, epoch)
        if self.matrix_every_epoch:
            self.write_matrix()
        self.validation_writer.flush()

    def write_matrix(self) -> None:
        matrix, epoch = self.last_matrix
        with self.validation_writer.as_default():
            summaries.write_png("confusion_matrix", reports.png_bytes(reports.confusion_matrix_figure(
                matrix, self.class_names, f"validation, epoch {epoch + 1}")), step=epoch)
        self.last_matrix = None

    def on_train_end(self, logs=None):
        if self.last_matrix is not None:
            self.write_matrix()
        if self.validation_writer is not None:
            self.validation_writer.flush()


class HParams(keras.callbacks.Callback):
    """The run's hyper-parameters for the HParams dashboard, written in the run folder when training first
    starts. (hparams_api.KerasCallback does the same but refuses a second fit, which fine-tuning makes.)"""

    def __init__(self, run_dir, options: dict, preprocessing: images.Preprocessing, seed: int):
        super().__init__()
        self.run_dir, self.options, self.preprocessing, self.seed = run_dir, options, preprocessing, seed
        self.written = False

    def on_train_begin(self, logs=None):
        if not self.written:
            summaries.write_hyperparameters(self.run_dir, self.options, self.preprocessing, self.seed)
            self.written = True


def tensorboard(run_dir, options: dict, train_files, validation_dataset, validation_labels,
                class_names, preprocessing: images.Preprocessing, seed: int = 0) -> tuple:
    """Keras' TensorBoard callback (scalars, learning rate, Keras graph), TrainingSummaries and the HParams
    record. Put them after callbacks that add values to the epoch logs, so those values are written too."""
    return (
        keras.callbacks.TensorBoard(log_dir=str(run_dir), write_graph=True),
        TrainingSummaries(run_dir, train_files, validation_dataset, validation_labels, class_names,
                          preprocessing, seed=seed),
        HParams(run_dir, options, preprocessing, seed),
    )
