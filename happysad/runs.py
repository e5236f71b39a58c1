"""python -m happysad.runs: list the training runs under logs/, newest first, or compare two of them.

Every finished run folder holds the `record.json` train wrote (hyper-parameters, cross-validated or per-epoch
metrics, test metrics, timing); that is all this reads, so it needs neither TensorFlow nor TensorBoard and
answers at once. The best run is marked by its cross-validated accuracy, or its validation accuracy for a run
that fitted on images; never by test accuracy, since choosing by the test figure spends the test.
"""
import argparse
import dataclasses
import datetime
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from happysad import calibration, console, defaults, record

KEY_HYPERPARAMETERS = ("arch", "epochs", "batch_size", "image_size", "learning_rate", "seed")
COMPARED_METRICS = (
    ("cross-validated accuracy", ("cross_validation", "accuracy")), ("cross-validated f1", ("cross_validation", "f1")),
    ("cross-validated log loss", ("cross_validation", "log_loss")),
    ("test accuracy", ("test", "accuracy")), ("test precision", ("test", "precision")),
    ("test recall", ("test", "recall")), ("test f1", ("test", "f1")), ("test log loss", ("test", "log_loss")),
    ("test ROC-AUC", ("test", "roc_auc")), ("test PR-AUC", ("test", "pr_auc")),
    ("val accuracy", ("saved_epoch", "val_accuracy")), ("val loss", ("saved_epoch", "val_loss")),
    ("train accuracy", ("saved_epoch", "accuracy")), ("train loss", ("saved_epoch", "loss")),
)


class RunsError(Exception):
    """A problem with the logs folder or a run name, reported as one line."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = console.ArgumentParser(prog="python -m happysad.runs", description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default=defaults.LOGDIR, help="the folder train wrote its runs into")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                        help="two run names (or run folders) to show side by side")
    return parser.parse_args(argv)


@dataclass
class Run:
    name: str
    folder: Path
    record: record.Record

    @property
    def finished(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.record.created)

    @property
    def seconds(self):
        return self.record.metrics.get("train_seconds")

    @property
    def started(self) -> datetime.datetime:
        """The record is written when training ends; the start is that minus the training time."""
        return self.finished - datetime.timedelta(seconds=self.seconds or 0)

    def metric(self, group: str, name: str):
        """A value of the record's metrics; "saved_epoch" (the epoch whose weights the model kept) falls back
        to the last epoch's for records written before it existed."""
        values = self.record.metrics.get(group) or (self.record.metrics.get("final_epoch", {})
                                                    if group == "saved_epoch" else {})
        return values.get(name)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "folder": str(self.folder),
            "started": self.started.isoformat(timespec="seconds"),
            "seconds": self.seconds,
            "epochs_run": len(self.record.metrics.get("epoch_seconds", [])),
            "classes": self.record.class_names,
            "hyperparameters": self.record.hyperparameters,
            "preprocessing": dataclasses.asdict(self.record.preprocessing),
            "validation": {key[4:]: value for key, value in (self.record.metrics.get("saved_epoch")
                                                             or self.record.metrics.get("final_epoch", {})).items()
                           if key.startswith("val_")},
            **{kind: {key: value for key, value in self.record.metrics.get(kind, {}).items()
                      if not isinstance(value, (dict, list))} for kind in ("cross_validation", "test")},
            "model_file": self.record.model_file,
        }


def read_run(folder: Path) -> Run:
    path = folder / "record.json"
    try:
        return Run(folder.name, folder, record.read_file(path))
    except (OSError, record.RecordError) as error:
        raise RunsError(f"cannot read {path}: {error}") from None


def find_runs(logdir) -> tuple:
    """(runs with a record, newest first; names of folders without one: unfinished or crashed runs; (name,
    reason) of runs whose record cannot be read: a newer happysad's, or a damaged file)."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise RunsError(f"logs folder {logdir} does not exist: train a model first "
                        "(python -m happysad.train --logdir ...)")
    runs, unfinished, unreadable = [], [], []
    for folder in sorted(p for p in logdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / "record.json").is_file():
            unfinished.append(folder.name)
            continue
        try:
            runs.append(read_run(folder))
        except RunsError as error:
            unreadable.append((folder.name, str(error)))
    runs.sort(key=lambda run: run.finished, reverse=True)
    return runs, unfinished, unreadable


def measured_accuracy(run: Run):
    """What a run measured of itself before any test: its cross-validated accuracy, or its validation accuracy
    at the saved epoch (a fit on images)."""
    cross_validated = run.metric("cross_validation", "accuracy")
    return cross_validated if cross_validated is not None else run.metric("saved_epoch", "val_accuracy")


def best_run(runs: list) -> tuple:
    """(the best run, the metric it was chosen by): measured_accuracy, never the test figure."""
    scored = [run for run in runs if measured_accuracy(run) is not None]
    if not scored:
        return None, None
    return max(scored, key=measured_accuracy), "cross-validated or validation accuracy"


def resolve(logdir, name: str) -> Run:
    """A run by its name under logdir, or by its folder's path."""
    for folder in (Path(logdir) / name, Path(name)):
        if (folder / "record.json").is_file():
            return read_run(folder)
    raise RunsError(f"no run {name!r} in {logdir} (a run folder holds the record.json train writes)")


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value else f"{value:.{digits}f}"
    return str(value)


def list_runs(logdir, as_json: bool = False) -> None:
    runs, unfinished, unreadable = find_runs(logdir)
    best, criterion = best_run(runs)
    command = f"tensorboard --logdir {shlex.quote(str(logdir))}"
    if as_json:
        print(json.dumps({"logdir": str(logdir), "best": best.name if best else None,
                          "best_by": criterion, "runs": [run.summary() for run in runs],
                          "unfinished": unfinished,
                          "unreadable": [{"run": name, "reason": reason} for name, reason in unreadable],
                          "tensorboard": command}, indent=2))
        return
    for name, reason in unreadable:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not runs:
        print(f"no finished runs in {logdir}" + (f" ({len(unfinished)} without a record.json)"
                                                 if unfinished else ""))
        return
    rows = [["", "run", "started", "minutes", *KEY_HYPERPARAMETERS, "cv acc", "val acc", "val loss", "test acc",
             "test f1"]]
    for run in runs:
        hyper = settings(run.record)
        rows.append(["*" if run is best else "", run.name, run.started.strftime("%Y-%m-%d %H:%M"),
                     fmt(run.seconds / 60 if run.seconds is not None else None, 1),
                     *(fmt(hyper.get(key)) for key in KEY_HYPERPARAMETERS),
                     fmt(run.metric("cross_validation", "accuracy")),
                     fmt(run.metric("saved_epoch", "val_accuracy")), fmt(run.metric("saved_epoch", "val_loss")),
                     fmt(run.metric("test", "accuracy")), fmt(run.metric("test", "f1"))])
    print(console.table(rows))
    if best:
        print(f"* best by {criterion}: {best.name}")
    if unfinished:
        print(f"{len(unfinished)} folder(s) without a record.json (unfinished or failed): {', '.join(unfinished)}")
    print(f"view them: {command}")


def shown(key: str, value, run_record: record.Record) -> str:
    """A hyper-parameter as the run printed it: the calibration in train's words, not its two numbers."""
    if key == "calibration" and isinstance(value, dict):
        scaling = calibration.Scaling(value.get("scale", 1.0), value.get("shift", 0.0))
        return calibration.describe(scaling, len(run_record.class_names)).split(" (")[0]
    return fmt(value)


def settings(run_record: record.Record) -> dict:
    """The hyper-parameters, the seed and the preprocessing settings (older records list all as hyper-parameters)."""
    return {**run_record.hyperparameters, "seed": run_record.seed, **dataclasses.asdict(run_record.preprocessing)}


def comparison(run_a: Run, run_b: Run) -> dict:
    metrics = {label: [run_a.metric(*key), run_b.metric(*key)] for label, key in COMPARED_METRICS}
    metrics["train minutes"] = [None if run.seconds is None else run.seconds / 60 for run in (run_a, run_b)]
    hyper_a, hyper_b = settings(run_a.record), settings(run_b.record)
    differing = {key: [hyper_a.get(key), hyper_b.get(key)] for key in sorted(set(hyper_a) | set(hyper_b))
                 if hyper_a.get(key) != hyper_b.get(key)}
    for name in ("class_names", "data_dir"):
        if getattr(run_a.record, name) != getattr(run_b.record, name) and name not in differing:
            differing[name] = [getattr(run_a.record, name), getattr(run_b.record, name)]
    return {"runs": [run_a.name, run_b.name], "metrics": metrics, "differing_hyperparameters": differing}


def compare(logdir, names, as_json: bool = False) -> None:
    run_a, run_b = (resolve(logdir, name) for name in names)
    result = comparison(run_a, run_b)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    rows = [["metric", run_a.name, run_b.name]]
    rows += [[label, fmt(a), fmt(b)] for label, (a, b) in result["metrics"].items() if (a, b) != (None, None)]
    print(console.table(rows))
    print()
    if result["differing_hyperparameters"]:
        print(console.table([["hyper-parameter", run_a.name, run_b.name]] + [
            [key, shown(key, a, run_a.record), shown(key, b, run_b.record)]
            for key, (a, b) in result["differing_hyperparameters"].items()]))
    else:
        print("same hyper-parameters")


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        if args.compare:
            compare(args.logdir, args.compare, args.json)
        else:
            list_runs(args.logdir, args.json)
    except RunsError as error:
        sys.exit(f"happysad.runs: error: {error}")


if __name__ == "__main__":
    main()
