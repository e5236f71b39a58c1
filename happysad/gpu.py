"""Start-up for every command that touches TensorFlow devices."""
import tensorflow as tf


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
