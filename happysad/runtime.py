"""TensorFlow, loaded once, late, and the project's way.

Every module takes `tf` and `keras` from here. They are imported when first used, not when a module is
imported, so `import happysad` and every command's `--help` answer at once, and TensorFlow (about 5 s to
load) starts only in a stage that needs it. Loading applies the project's two start-up choices, the one place
they are made:
- oneDNN kernels on. TensorFlow turns them on by itself only on CPUs with AVX-512 VNNI/BF16 or AMX; on the
  AVX2 CPUs of most laptops and small servers they still train the card's CNN 2-3x faster than its default
  kernels (benchmarks/speed.py). Set TF_ENABLE_ONEDNN_OPTS=0 to opt out.
- TensorFlow's C++ start-up chatter silenced. Without CUDA it prints CUDA-probing notes and a "failed call to
  cuInit" error on every start, which would bury the tool's own output and alarm users for nothing. Python
  errors still raise as usual. Set TF_CPP_MIN_LOG_LEVEL yourself (e.g. 0) to see everything.
"""
import contextlib
import importlib
import os
import sys
import types


def load_tensorflow() -> None:
    """Import TensorFlow with the start-up choices above, unless something already has."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    with contextlib.ExitStack() as quiet:
        if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
            quiet.enter_context(stderr_silenced())
        importlib.import_module("tensorflow")


@contextlib.contextmanager
def stderr_silenced():
    """File descriptor 2 pointed at /dev/null: C++ code writes there directly, past Python's sys.stderr."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class Deferred(types.ModuleType):
    """A module imported when one of its public attributes is first used (after TensorFlow, for one that
    needs it). Private and special names (what inspect, copy or pytest probe an object for) do not import it."""

    def __init__(self, name: str, after_tensorflow: bool):
        super().__init__(name)
        self._after_tensorflow = after_tensorflow

    def __getattr__(self, attribute):
        if attribute.startswith("_") and self.__name__ not in sys.modules:
            raise AttributeError(attribute)
        if self._after_tensorflow:
            load_tensorflow()
        return getattr(importlib.import_module(self.__name__), attribute)


def deferred(name: str, after_tensorflow: bool = True) -> Deferred:
    """Module `name`, imported on first use: after TensorFlow (the default: one that needs it), or as it is
    (after_tensorflow=False: another slow import, such as matplotlib)."""
    return Deferred(name, after_tensorflow)


tf = deferred("tensorflow")
keras = deferred("keras")


def enable_memory_growth() -> list:
    """Let each GPU's memory grow on demand instead of TensorFlow grabbing it all at once.

    Must run before TensorFlow initialises a device, so every command calls it first thing in main().
    Returns the GPUs found (an empty list on a CPU-only machine, where it says nothing).
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            # Devices were already initialised in this process (e.g. a second call): growth is fixed by then.
            pass
    return gpus
