"""The record of a trained model: the JSON sidecar saved beside it, and the atomic save of both.

`models/happysad.h5` holds the network; `models/happysad.json` holds everything needed to use and audit it:
class names in label order, the preprocessing (image size, face crops), the decision threshold, the seed,
the exact file lists of each partition, the test metrics and the hyper-parameters. A copy of the record also
goes into the run's TensorBoard folder as `record.json`, so every run can be listed and compared later.
"""
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from happysad import defaults, files
from happysad.images import Preprocessing

# 2: near_copies and the per-epoch history. 3: `preprocessing` holds every setting (image_size and faces, the
# first at the top level before). 4: `calibration`, the scaling written into the output layer (already in the
# network: kept to undo it for reports), and `domain`, what "fits no class" is measured by. 5: `config`, every
# setting of the run (config.TrainConfig). 6: `preprocessing.face_beside` (the face crop beside the picture, six
# channels) and the domain's `columns`. 7: the domain's `reads` (the CNN's block statistics: an older happysad
# would compare other features with its centres). 8: `preprocessing.upright` (photos turned as their EXIF
# orientation says: an older happysad would feed the model photos lying on their side). Older records read
# as they are: missing fields empty, settings moved in.
FORMAT_VERSION = 8


class RecordError(Exception):
    """A record that cannot be read, as one line."""


@dataclass
class Record:
    class_names: list
    preprocessing: Preprocessing
    threshold: float = 0.5
    calibration: dict = field(default_factory=dict)  # calibration.Scaling's fields and what it was fitted on
    domain: dict = field(default_factory=dict)  # domain.Domain's fields: class centres and the distance limit
    seed: int = defaults.SEED
    data_dir: str = ""
    split: dict = field(default_factory=dict)
    near_copies: list = field(default_factory=list)  # groups of near-duplicate images, each in one partition
    metrics: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)  # per-epoch values as Keras logs them ("loss", "val_loss"...)
    hyperparameters: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # every setting of the run, as config.TrainConfig holds it
    run_dir: str = ""
    created: str = ""
    model_file: str = ""
    model_sha256: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def binary(self) -> bool:
        return len(self.class_names) == 2

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "preprocessing": self.preprocessing.to_record()}, indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> "Record":
        """A record as read (of any format version read() accepts), in the current format: written back, it
        says FORMAT_VERSION."""
        known = {f.name for f in dataclasses.fields(cls)} - {"preprocessing", "format_version"}
        settings = {"image_size": values.get("image_size"), **values.get("preprocessing", {})}  # versions 1-2
        if not isinstance(settings["image_size"], int):
            raise RecordError("the record names no image size")
        return cls(**{k: v for k, v in values.items() if k in known},
                   preprocessing=Preprocessing.from_record(settings))


MODEL_SUFFIXES = (".h5", ".keras", ".tflite")  # the model files happysad writes; anything else is a folder


def sidecar_path(model_path) -> Path:
    """models/happysad.h5 -> models/happysad.json, models/happysad.v2.h5 -> models/happysad.v2.json (also for
    .keras, .tflite and SavedModel folders): every model file has a record of its own."""
    model_path = Path(model_path)
    if model_path.suffix.lower() in MODEL_SUFFIXES:
        return model_path.with_suffix(".json")
    return model_path.with_name(model_path.name + ".json")  # a SavedModel folder, whatever dots its name has


def legacy_sidecar_path(model_path) -> Path:
    """Where releases up to 0.10 put the record: the name cut at its first dot, which models named
    happysad.h5 and happysad.v2.h5 shared."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name.split(".")[0] + ".json")


def read(model_path) -> Record:
    """The record beside a model; a record of an earlier release under its old name only if it names this
    model file."""
    path = sidecar_path(model_path)
    if not path.exists():
        legacy = legacy_sidecar_path(model_path)
        if legacy != path and legacy.exists():
            found = read_file(legacy)
            if found.model_file == Path(model_path).name:
                return found
        raise FileNotFoundError(f"no record {path} beside the model {model_path}")
    return read_file(path)


def check_belongs(model_path, saved: Record) -> None:
    """RecordError unless the model file is the one the record was written for (its sha256, where the record
    names one): a record beside another model would give it wrong classes, sizes and thresholds."""
    model_path = Path(model_path)
    if saved.model_sha256 and model_path.is_file() and files.sha256(model_path) != saved.model_sha256:
        raise RecordError(f"the record {sidecar_path(model_path)} was written for another model than "
                          f"{model_path} (their sha256 differ): train again, or put back the model it names "
                          f"({saved.model_file})")


def read_file(path) -> Record:
    """A record file (beside a model, or a run folder's record.json); RecordError for one this happysad cannot
    read."""
    try:
        values = json.loads(Path(path).read_text())
    except ValueError as error:
        raise RecordError(f"{path} is not a record ({error})") from None
    version = values.get("format_version", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise RecordError(f"{path} is a record of format version {version}; this happysad reads versions 1 to "
                          f"{FORMAT_VERSION}: upgrade happysad to use this model")
    try:
        return Record.from_dict(values)
    except (RecordError, TypeError) as error:
        raise RecordError(f"{path}: {error}") from None


def update(model_path, **changes) -> Record:
    """Change fields of a saved model's record (e.g. evaluate storing a threshold), atomically."""
    saved = read(model_path)
    for name, value in changes.items():
        setattr(saved, name, value)
    files.write_atomic(sidecar_path(model_path), saved.to_json())
    return saved


def save(network, model_path, record: Record) -> None:
    """Write the model and its record so that a crash at any moment leaves the previous pair usable.

    The model and its record go to temporary files in the same folder (same filesystem, so the final renames
    are atomic) and only replace the old pair once both are completely written. The record names the
    model's sha256, so a model and a record that do not belong together are told apart (check_belongs):
    should the process die in the instant between the two renames, the new record is left beside them as
    its hidden temporary file. A record replaced keeps its file mode.
    """
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(f".{model_path.stem}.tmp-{os.getpid()}{model_path.suffix}")
    record_path = sidecar_path(model_path)
    record_tmp = record_path.with_name(f".{record_path.name}.tmp-{os.getpid()}")
    model_replaced = False
    try:
        legacy_warning = logging.getLogger("absl")
        level = legacy_warning.level
        legacy_warning.setLevel(logging.ERROR)  # Keras calls .h5 "legacy"; the design card asks for it.
        try:
            # Without the optimizer's state an .h5 is a third of the size; happysad never resumes from it.
            options = {"include_optimizer": False} if model_path.suffix == ".h5" else {}
            network.save(tmp, **options)
        finally:
            legacy_warning.setLevel(level)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        record.model_file = model_path.name
        record.model_sha256 = files.sha256(tmp)
        files.write_atomic(record_tmp, record.to_json())
        os.chmod(record_tmp, files.mode_for(record_path))
        # Both are complete on disk before either replaces its old file: between the two renames the pair
        # disagrees for an instant, and the sha256 in the record tells (check_belongs).
        os.replace(tmp, model_path)
        model_replaced = True
        os.replace(record_tmp, record_path)
    finally:
        tmp.unlink(missing_ok=True)
        if not model_replaced:  # once the new model is in place, its record is kept whatever happens
            record_tmp.unlink(missing_ok=True)
