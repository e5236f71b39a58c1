"""Where things go and the seed, when the user does not say: one place for every command and module."""

DATA = "data"  # one subfolder of images per class
MODEL = "models/happysad.h5"  # the saved network; its record goes beside it (record.sidecar_path)
LOGDIR = "logs"  # TensorBoard runs, one folder each
SEED = 1337  # same seed and data: same split, folds and initialisation
