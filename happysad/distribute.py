"""Where training runs: one device, every GPU of this machine, or several machines; and at what precision.

    --strategy default      one device (the first GPU, else the CPU)
    --strategy mirrored     tf.distribute.MirroredStrategy over every GPU of this machine (without GPUs: every
                            logical CPU device, which is one unless the process configured more)
    --strategy multiworker  tf.distribute.MultiWorkerMirroredStrategy over the machines listed in the standard
                            TF_CONFIG environment variable; run the same command on every machine
    --strategy auto         mirrored when more than one GPU is visible, else default

--batch-size is per replica: a step trains on batch × replicas images (the global batch), so the same flag
means the same work per device on one GPU or sixteen. On several machines each worker decodes only its own
share of the training files (data.Files.shard: a strided slice, not tf.data auto-sharding, which would make every worker decode
every image and throw most away); validation and test images are held by every worker (callbacks predict on
them) and evaluated a share each.

With more than one replica, training batches are always full: a replica handed an empty slice of a short last
batch breaks the step (TensorFlow's oneDNN kernels reject the empty gradient; without them the loss of that
step is NaN), so the images past the last full global batch sit out that epoch. They are different images
each epoch, since the order is reshuffled. Workers get shares of equal size (a short share repeats one of its
own files), so they all take the same number of steps, as their collective ops require.

Keras 3's `fit` does not work under MultiWorkerMirroredStrategy (keras-team/keras#20585; on the pinned
tensorflow 2.21 / keras 3.15 it fails in `_maybe_symbolic_build` and again when it reduces the step's scalar
metrics), so `fit` below trains multi-worker runs with its own loop: Keras' own `train_step`/`test_step` run
on every replica under the strategy, metrics are Keras' (summed across workers when read), and the same Keras
callbacks (History, progress bar, TensorBoard, early stopping...) are driven epoch by epoch as `fit` does.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from happysad.errors import SettingError, first_line
from happysad.runtime import keras, tf

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


class DistributeError(SettingError):
    """A strategy or precision that cannot run here, reported as one line."""


@dataclass
class Setup:
    """The strategy a run trains under, and this process's place in the cluster."""

    strategy: tf.distribute.Strategy
    name: str
    is_chief: bool = True
    worker_index: int = 0
    num_workers: int = 1

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def global_batch(self, per_replica_batch: int) -> int:
        return per_replica_batch * self.replicas

    def describe(self) -> str:
        where = f", worker {self.worker_index} of {self.num_workers}" if self.num_workers > 1 else ""
        role = " (chief)" if self.is_chief and self.num_workers > 1 else ""
        return f"strategy {self.name}: {self.replicas} replica(s){where}{role}"


def read_tf_config(environ=None) -> dict:
    """The cluster description in TF_CONFIG: {"cluster": {"worker": [host:port, ...]}, "task": {...}}."""
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "")
    if not text.strip():
        raise DistributeError("`strategy` multiworker needs the TF_CONFIG environment variable, e.g. "
                              '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                              '"task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise DistributeError(f"TF_CONFIG is not valid JSON: {error}") from None
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict) or "type" not in task:
        raise DistributeError('TF_CONFIG needs a "cluster" of host:port lists and a "task" with a "type" '
                              'and an "index"')
    members = cluster.get(task["type"], [])
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(members):
        raise DistributeError(f"TF_CONFIG task {task['type']}:{index} is not in the cluster {cluster}")
    return config


def is_chief(config: dict) -> bool:
    """The chief writes the model, record and logs: task type "chief", or worker 0 when there is no chief."""
    task, cluster = config["task"], config["cluster"]
    if task["type"] == "chief":
        return True
    return "chief" not in cluster and task["type"] == "worker" and task.get("index", 0) == 0


def worker_position(config: dict) -> tuple:
    """(index of this task among all training tasks, number of training tasks): chief first, then workers."""
    ordered = [("chief", i) for i in range(len(config["cluster"].get("chief", [])))] + \
              [("worker", i) for i in range(len(config["cluster"].get("worker", [])))]
    return ordered.index((config["task"]["type"], config["task"].get("index", 0))), len(ordered)


def make(name: str = "auto") -> Setup:
    """Create the strategy. Call first thing: multi-worker collectives must be set up before TF starts."""
    if name not in STRATEGIES:
        raise DistributeError(f"`strategy` must be one of {', '.join(STRATEGIES)}, got {name!r}")
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return Setup(tf.distribute.get_strategy(), name)
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
        return Setup(tf.distribute.MirroredStrategy(devices), name)
    config = read_tf_config()
    index, count = worker_position(config)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as error:
        raise DistributeError(f"cannot start MultiWorkerMirroredStrategy: {first_line(error)}") from None
    return Setup(strategy, name, is_chief(config), index, count)


def set_precision(mixed: bool) -> str:
    """Set Keras' global dtype policy; returns its name.

    Mixed precision computes in float16 and keeps float32 weights (and a float32 output layer, see
    happysad.model.head); Keras wraps the optimizer in a LossScaleOptimizer by itself. It only pays on GPUs
    with float16 units. CPUs without native bfloat16 (most, including this project's CI) emulate it and train
    slower than float32, so it is refused there rather than silently making training slower.
    """
    if not mixed:
        keras.mixed_precision.set_global_policy("float32")
        return "float32"
    if not tf.config.list_physical_devices("GPU"):
        raise DistributeError("`mixed_precision` needs a GPU (float16 compute); on this CPU-only machine it "
                              "would be emulated and slower than float32, so train without it")
    keras.mixed_precision.set_global_policy("mixed_float16")
    return "mixed_float16"


def training_input(setup: Setup, per_replica_batch: int, images: int, make_dataset):
    """The training input for `fit`. make_dataset(batch_size, drop_remainder) builds this worker's batched
    tf.data pipeline over its `images` training images.

    One replica: batches of --batch-size. One worker with several replicas: full global batches, which Keras
    splits across the replicas. Several workers: tf.distribute's per-worker datasets in full per-replica
    batches (full per-worker batches cut in one per local replica), with auto-sharding off since
    make_dataset already reads only this worker's files.
    """
    if setup.replicas == 1:
        return make_dataset(per_replica_batch, False)
    local_replicas = setup.replicas // setup.num_workers
    if images < per_replica_batch * local_replicas:
        raise DistributeError(f"each worker has {images} training images, fewer than one full batch of "
                              f"{per_replica_batch} per replica × {local_replicas} replica(s): lower `batch_size`")
    if setup.num_workers == 1:
        return make_dataset(setup.global_batch(per_replica_batch), True)

    def per_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        dataset = make_dataset(per_replica_batch * local_replicas, True).with_options(options)
        return dataset.rebatch(per_replica_batch) if local_replicas > 1 else dataset

    return setup.strategy.distribute_datasets_from_function(per_worker)


def fit(network: keras.Model, setup: Setup, train, validation, *, epochs: int, callbacks: list,
        verbose: int = 2, class_weight: dict = None, initial_epoch: int = 0) -> keras.callbacks.History:
    """network.fit, or for several workers the same epochs, metrics and callbacks in a loop that works there.

    Trains `epochs` epochs numbered from `initial_epoch`, so a second stage (fine-tuning) continues the
    first one's epoch count in TensorBoard instead of drawing over it.
    """
    if setup.num_workers == 1:
        return network.fit(train, validation_data=validation, epochs=initial_epoch + epochs,
                         initial_epoch=initial_epoch, callbacks=callbacks, shuffle=False, verbose=verbose,
                         class_weight=class_weight)
    return _fit_multiworker(network, setup.strategy, train, validation, epochs, callbacks,
                            verbose if setup.is_chief else 0, class_weight, initial_epoch)


def _fit_multiworker(network, strategy, train, validation, epochs, callbacks, verbose, class_weight,
                     initial_epoch=0):
    with strategy.scope():
        network.optimizer.build(network.trainable_variables)
    weights = None if class_weight is None else tf.constant(
        [class_weight[i] for i in range(len(class_weight))], tf.float32)

    def replica_train_step(images, labels):
        if weights is None:
            return network.train_step((images, labels))
        # class_weight as fit applies it: each training image weighted by its class's weight.
        return network.train_step((images, labels, tf.gather(weights, tf.cast(tf.reshape(labels, [-1]), tf.int32))))

    @tf.function
    def train_step(batch):
        strategy.run(replica_train_step, args=batch)

    @tf.function
    def test_step(batch):
        strategy.run(network.test_step, args=(batch,))

    if isinstance(validation, tf.data.Dataset):
        # Every worker holds the whole validation set (so callbacks can predict on it); each evaluates its
        # share of the batches: tf.data's DATA sharding, since the pipeline reads files by name, not by reader.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        validation = strategy.experimental_distribute_dataset(validation.with_options(options))

    callback_list = keras.callbacks.CallbackList(callbacks, add_history=True, add_progbar=verbose != 0,
                                                 verbose=verbose, epochs=initial_epoch + epochs, steps=None, model=network)
    network.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, initial_epoch + epochs):
        network.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step, batch in enumerate(train):  # no early exit: every worker must take every step
            callback_list.on_train_batch_begin(step)
            train_step(batch)
            callback_list.on_train_batch_end(step)
        # Reading a metric's variables outside the replicas sums them over all workers (a collective op,
        # so every worker reads the same metrics in the same order and gets the same numbers).
        logs = {name: float(value) for name, value in network.get_metrics_result().items()}
        if validation is not None:
            network.reset_metrics()
            callback_list.on_test_begin()
            for step, batch in enumerate(validation):
                callback_list.on_test_batch_begin(step)
                test_step(batch)
                callback_list.on_test_batch_end(step)
            val_logs = {name: float(value) for name, value in network.get_metrics_result().items()}
            callback_list.on_test_end(val_logs)
            logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callback_list.on_epoch_end(epoch, logs)
        if network.stop_training:
            break
    callback_list.on_train_end(logs)
    return next(c for c in callback_list.callbacks if isinstance(c, keras.callbacks.History))


def scratch_folder(setup: Setup) -> Path:
    """Where a non-chief worker writes what only the chief keeps (TensorBoard logs): removed when it exits.

    Every worker must run the same callbacks in step (some run collective ops, e.g. a validation predict), but
    two workers writing the same event files would clobber each other.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"happysad-worker{setup.worker_index}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
