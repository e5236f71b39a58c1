"""runtime: every command lets each GPU's memory grow before it does anything that could start a device.

No GPU here: TensorFlow's device list is replaced by two stand-in GPUs, set_memory_growth records its calls,
and each command's first step that touches TensorFlow's devices records itself and stops the command.
"""
import pytest
import tensorflow as tf

from happysad import classifier, clean, evaluate, export, predict, review, serve, train

STAND_INS = ("GPU:0 stand-in", "GPU:1 stand-in")


class Stopped(Exception):
    pass


@pytest.mark.parametrize("command, first_step, argv", [
    (train, (train, "train"), []),
    (predict, (classifier, "load"), ["face.jpg"]),
    (evaluate, (evaluate, "evaluate"), []),
    (review, (review, "review"), ["data"]),
    (serve, (classifier, "load"), []),
    (export, (export, "export"), ["--format", "keras"]),
    (clean, (clean, "clean"), ["data"]),
], ids=lambda value: getattr(value, "__name__", "").rsplit(".", 1)[-1] or None)
def test_each_gpu_grows_its_memory_before_the_command_starts_work(command, first_step, argv, monkeypatch):
    events = []
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: list(STAND_INS) if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                        lambda device, enabled: events.append((device, enabled)))

    def work(*args, **kwargs):
        events.append("work")
        raise Stopped

    monkeypatch.setattr(*first_step, work)
    with pytest.raises(Stopped):
        command.main(argv)
    assert events == [(STAND_INS[0], True), (STAND_INS[1], True), "work"]
