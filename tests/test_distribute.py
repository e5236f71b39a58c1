"""Strategies: TF_CONFIG handling, the chief, mirrored = single device, and a real two-process multi-worker run.

Mirrored and multi-worker runs need a fresh process each (logical devices and collectives must be configured
before TensorFlow starts), so they run `happysad.train` in subprocesses on the session's generated faces.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from happysad import classifier, data, distribute, metrics, record, train
from conftest import PARTITIONS

ROOT = Path(__file__).resolve().parent.parent
SIZE = "32"


def python(code_or_args, cwd, env=None):
    """The code or command in a process of its own, working in cwd (where train keeps its default stores)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.Popen([sys.executable, *code_or_args], env=environment, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index, chief=False):
    hosts = [f"127.0.0.1:{p}" for p in ports]
    if chief:
        return {"cluster": {"chief": hosts[:1], "worker": hosts[1:]}, "task": {"type": "chief", "index": 0}}
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


def test_tf_config_chief_and_position():
    ports = [1, 2, 3]
    assert [distribute.is_chief(tf_config(ports, i)) for i in range(3)] == [True, False, False]
    assert [distribute.worker_position(tf_config(ports, i)) for i in range(3)] == [(0, 3), (1, 3), (2, 3)]
    with_chief = tf_config(ports, 0, chief=True)
    assert distribute.is_chief(with_chief) and distribute.worker_position(with_chief) == (0, 3)
    worker0 = {**with_chief, "task": {"type": "worker", "index": 0}}
    assert not distribute.is_chief(worker0) and distribute.worker_position(worker0) == (1, 3)

    assert distribute.read_tf_config({"TF_CONFIG": json.dumps(tf_config(ports, 2))})["task"]["index"] == 2
    for bad, message in (({}, "needs the TF_CONFIG"), ({"TF_CONFIG": "{oops"}, "not valid JSON"),
                         ({"TF_CONFIG": json.dumps({"cluster": {}})}, '"task"'),
                         ({"TF_CONFIG": json.dumps(tf_config(ports, 3))}, "not in the cluster")):
        with pytest.raises(distribute.DistributeError, match=message):
            distribute.read_tf_config(bad)


class FakeStrategy:
    """Stands in for a tf.distribute strategy: a replica count, and the per-worker dataset function kept."""

    def __init__(self, replicas):
        self.num_replicas_in_sync = replicas

    def distribute_datasets_from_function(self, function):
        return function(tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0,
                                                   num_replicas_in_sync=self.num_replicas_in_sync))


def test_shards_cover_every_file_with_both_classes_and_equal_sizes():
    files = data.Files([f"{c}/{i}.jpg" for c in ("happy", "sad") for i in range(7)], [0] * 7 + [1] * 7)
    shards = [files.shard(i, 3) for i in range(3)]
    assert [len(s) for s in shards] == [5, 5, 5]  # 14 files: 5, 5 and 4 plus one repeated
    distinct = [set(s.paths) for s in shards]
    assert sorted(p for d in distinct for p in d) == sorted(files.paths)
    for s in shards:
        assert set(s.labels) == {0, 1}
        assert all(p.startswith(("happy", "sad")[label]) for p, label in zip(s.paths, s.labels))


def test_batches_are_per_replica_and_full_when_there_are_several_replicas():
    """The training input asks for the global batch, full batches only, as soon as replicas split batches."""
    asked = []

    def make_dataset(batch_size, drop_remainder):
        asked.append((batch_size, drop_remainder))
        return tf.data.Dataset.range(100).batch(batch_size, drop_remainder=drop_remainder)

    one = distribute.Setup(FakeStrategy(1), "default")
    mirrored = distribute.Setup(FakeStrategy(4), "mirrored")
    workers = distribute.Setup(FakeStrategy(4), "multiworker", True, 0, 2)  # two machines, two GPUs each
    distribute.training_input(one, 16, 100, make_dataset)
    distribute.training_input(mirrored, 16, 100, make_dataset)
    per_replica = distribute.training_input(workers, 16, 100, make_dataset)
    assert asked == [(16, False), (64, True), (32, True)]
    assert [len(batch) for batch in per_replica] == [16] * 6  # 100 images: 3 full batches of 2×16, cut in two
    with pytest.raises(distribute.DistributeError, match="fewer than one full batch"):
        distribute.training_input(mirrored, 16, 63, make_dataset)


def test_clear_errors_for_multiworker_without_tf_config_and_cpu_mixed_precision(faces_dir, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    common = ["--data", str(faces_dir), "--epochs", "1", "--image-size", SIZE, "--model", str(tmp_path / "m.h5"),
              "--logdir", str(tmp_path / "logs"), *PARTITIONS]
    with pytest.raises(SystemExit, match="happysad.train: error: --strategy multiworker needs the TF_CONFIG"):
        train.main(common + ["--strategy", "multiworker"])
    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(SystemExit, match="happysad.train: error: --mixed-precision needs a GPU"):
            train.main(common + ["--mixed-precision"])
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "logs").exists()


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from happysad import train
data, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
# No augmentation or dropout: their random draws differ between one device and two replicas.
common = ["--data", data, "--epochs", "2", "--image-size", "%s", "--seed", "5", "--logdir", out + "/logs",
          "--no-augment", "--dropout", "0", "--split", "0.7,0.2,0.1"]
train.main(common + ["--strategy", "default", "--batch-size", str(batch), "--model", out + "/default.h5"])
train.main(common + ["--strategy", "mirrored", "--batch-size", str(batch // 2), "--model", out + "/mirrored.h5"])
""" % SIZE


@pytest.mark.slow
def test_mirrored_over_two_devices_matches_one_device(faces_dir, tmp_path):
    """Same seed, data and global batch on one device and mirrored over two logical CPUs: same model.

    Each step here trains on the whole training partition (one batch per epoch), so the batch order, which
    tf.distribute's rebuilt input pipeline shuffles differently, does not matter, and the partition has an
    even size so both replicas get equal halves (Keras averages the replicas' mean losses). The only
    difference left is float32 summation order (two half-batch gradients all-reduced vs one sum): ~1e-7 on
    probabilities, hence the 1e-5 tolerance, while the probabilities differ by ~1e-2 from image to image and
    a wrong global batch (two steps per epoch instead of one) or unsynchronised replicas move them far more.
    """
    files, _ = data.list_images(faces_dir, data.find_classes(faces_dir))
    train_count = len(data.split(files, seed=5)["train"])
    assert train_count % 2 == 0, "the comparison needs an even training partition"
    process = python(["-c", MIRRORED, str(faces_dir), str(tmp_path), str(train_count)], tmp_path)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    assert "strategy mirrored: 2 replica(s)" in output
    one, two = classifier.load(tmp_path / "default.h5"), classifier.load(tmp_path / "mirrored.h5")
    hyper = two.record.hyperparameters
    assert (hyper["replicas"], hyper["global_batch_size"]) == (2, train_count)
    pixels = np.stack([one.load_image(p) for p in sorted(faces_dir.rglob("*.jpg"))])
    p_one, p_two = one.probabilities(pixels), two.probabilities(pixels)
    assert p_one[:, 1].std() > 1e-3
    np.testing.assert_allclose(p_two, p_one, atol=1e-5)


@pytest.mark.slow
def test_multiworker_two_processes_chief_saves_a_working_model(faces_dir, tmp_path):
    ports, epochs = free_ports(2), 2
    workers = []
    for index in range(2):
        out = tmp_path / f"worker{index}"
        (out / "tmp").mkdir(parents=True)
        workers.append(python(
            ["-m", "happysad.train", "--data", str(faces_dir), "--epochs", str(epochs), "--image-size", SIZE,
             "--batch-size", "32", "--strategy", "multiworker", "--model", str(out / "models" / "happysad.h5"),
             "--logdir", str(out / "logs"), "--run-name", "run", "--cache", "none", *PARTITIONS], out,
            env={"TF_CONFIG": json.dumps(tf_config(ports, index)), "TMPDIR": str(out / "tmp")}))
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    for w, output in zip(workers, outputs):
        assert w.returncode == 0, output[-3000:]

    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    assert not (other / "models").exists() and not (other / "logs").exists()
    assert list((other / "tmp").iterdir()) == []  # its scratch TensorBoard folder was removed
    assert (chief / "logs" / "run" / "record.json").exists()
    assert list((chief / "logs" / "run" / "train").glob("events.out.tfevents.*"))

    model = classifier.load(chief / "models" / "happysad.h5")
    hyper = model.record.hyperparameters
    assert (hyper["strategy"], hyper["replicas"], hyper["global_batch_size"]) == ("multiworker", 2, 64)
    assert len(model.record.metrics["epoch_seconds"]) == epochs
    # The saved model is the trained one: it reproduces the test metrics the chief measured in training.
    test_paths = [str(faces_dir / p) for p in model.record.split["test"]]
    labels = [model.class_names.index(Path(p).parent.name) for p in test_paths]
    probabilities = model.probabilities(np.stack([model.load_image(p) for p in test_paths]))
    recomputed = metrics.summarize(labels, probabilities, model.class_names, model.record.threshold)
    for key in ("accuracy", "precision", "recall", "f1"):
        assert recomputed[key] == pytest.approx(model.record.metrics["test"][key]), key
    # Both workers hold the same weights after training: the same test result is printed by each.
    test_lines = [[line for line in output.splitlines() if line.startswith("test (")] for output in outputs]
    assert test_lines[0] == test_lines[1] and len(test_lines[0]) == 1
    assert record.read(chief / "models" / "happysad.h5").model_sha256


MIRRORED_FOLDS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from happysad import train
data, out = sys.argv[1], sys.argv[2]
train.main(["--data", data, "--folds", "3", "--epochs", "2", "--image-size", "%s", "--batch-size", "16",
            "--strategy", "mirrored", "--model", out + "/m.h5", "--logdir", out + "/logs"])
""" % SIZE


@pytest.mark.slow
def test_the_cnns_fits_on_folds_run_mirrored_over_two_devices(faces_dir, tmp_path):
    process = python(["-c", MIRRORED_FOLDS, str(faces_dir), str(tmp_path)], tmp_path)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    assert "strategy mirrored: 2 replica(s)" in output and "fold 3/3: 2 epochs on 200 images" in output
    saved = record.read(tmp_path / "m.h5")
    assert (saved.hyperparameters["replicas"], saved.hyperparameters["global_batch_size"]) == (2, 32)
    assert saved.metrics["cross_validation"]["count"] == 300 and saved.metrics["fold_epochs"] == [2, 2, 2]
