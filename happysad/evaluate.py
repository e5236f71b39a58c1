"""python -m happysad.evaluate: measure a trained model on its held-out test images or on any labelled folder.

By default the model's own test partition (the file list its record kept, never used in training) is scored;
`--data DIR` scores a folder laid out like the training data (DIR/<class>/...). Every image is decoded once
(happysad.images, in parallel with tf.data) and scored in batches; files that cannot be decoded are skipped
and listed. The report (report.json, PNG pictures, a self-contained index.html) goes to
reports/<model>-<partition or folder>/, a table to the terminal, and scalars and pictures to the run's
TensorBoard folder when it still exists.

For two classes, `--store-threshold T` sets the decision threshold predict uses, written into the model's
record; train's own is 0.5 on calibrated probabilities (happysad.calibration), where the classes' meet.
"""
import argparse
import datetime
import html
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from happysad import (calibration, classifier, console, data, defaults, explain, marks, metrics, record, reports,
                      summaries)
from happysad.files import sha256_each
from happysad.runtime import enable_memory_growth, tf

PROGRESS_FROM = 500  # images: fewer are scored in a few seconds


class EvaluateError(Exception):
    """A problem with the model, its record or the images, reported as one line."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = console.ArgumentParser(prog="python -m happysad.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=defaults.MODEL)
    parser.add_argument("--data", help="a labelled folder DIR/<class>/... to score instead of the model's "
                                       "own partition; its class folders must match the model's classes")
    parser.add_argument("--partition", default="test", choices=data.PARTITIONS,
                        help="which of the model's own partitions to score when --data is not given")
    parser.add_argument("--out", help="report folder (default: reports/<model>-<partition or folder>)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--store-threshold", metavar="T", type=float,
                        help="two classes only: store the decision threshold T on the second class's calibrated "
                             "probability in the model's record (train's is 0.5, where the probabilities meet; "
                             "a higher T asks for more evidence before naming the second class)")
    parser.add_argument("--mistakes", type=int, default=16, help="how many worst mistakes to picture")
    parser.add_argument("--no-tensorboard", action="store_true", help="do not log to the run's folder")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.mistakes < 0:
        parser.error(f"--mistakes must be 0 or more, got {args.mistakes}")
    if args.store_threshold is not None and not 0 < args.store_threshold < 1:
        parser.error(f"--store-threshold must be between 0 and 1, got {args.store_threshold}")
    return args


@dataclass
class Target:
    """The images to score: where they come from, their paths and labels, and files already left out."""

    name: str
    files: data.Files
    skipped: list = field(default_factory=list)


@dataclass
class Mistake:
    path: str
    true: int
    predicted: int
    probability: float
    loss: float
    pixels: np.ndarray


@dataclass
class Scores:
    paths: list
    labels: np.ndarray
    probabilities: np.ndarray
    skipped: list
    mistakes: list
    far: np.ndarray = None  # (images,) marked "fits no class", where the model's record knows its domain


def partition_target(model_record: record.Record, partition: str) -> Target:
    """The files of one of the model's own partitions, labelled by their class folder."""
    relative_paths = model_record.split.get(partition)
    if not relative_paths:
        cross_validated = "cross_validation" in model_record.metrics
        why = ""
        if cross_validated and partition == "test":
            why = (" (train cross-validated it on every photo, and its record holds those figures; train with "
                   "--holdout F to keep a test partition)")
        elif cross_validated:
            why = " (a cross-validated model has no validation partition: its folds played that part)"
        raise EvaluateError(f"the model's record lists no {partition} images{why}; pass --data DIR")
    data_dir = Path(model_record.data_dir)
    if not data_dir.is_dir():
        raise EvaluateError(f"the model's data folder {data_dir} is gone; pass --data DIR")
    index = {name: i for i, name in enumerate(model_record.class_names)}
    paths, labels, skipped = [], [], []
    for relative_path in relative_paths:
        path = data_dir / relative_path
        if path.is_file():
            paths.append(str(path))
            labels.append(index[relative_path.split("/")[0]])
        else:
            skipped.append((str(path), "no such file (removed since training)"))
    return Target(partition, data.Files(paths, labels), skipped)


def seen_in_training(model_record: record.Record, paths) -> int:
    """How many of the scored files hold the bytes of a file the model trained on (its record's training list,
    where those files still are), under any name or folder: their figures say how well it remembers, not how
    well it does on photos it has never seen."""
    trained = [Path(model_record.data_dir) / relative for relative in model_record.split.get("train", [])]
    trained_digests = set(sha256_each([path for path in trained if os.access(path, os.R_OK)]))
    return sum(digest in trained_digests for digest in sha256_each(paths))


def seen_warning(report: dict) -> str:
    seen = report["seen_in_training"]
    if not seen:
        return ""
    return (f"warning: the model trained on {seen} of these {report['scored']} images: their figures measure "
            "memory, not photos it has never seen (train's cross-validated figure does; or score a folder it "
            "never saw)")


def folder_target(folder, class_names) -> Target:
    """Every image under folder/<class>/, the class folders exactly the model's classes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluateError(f"{folder} is not a folder")
    found = data.class_folders(folder)
    expected = ", ".join(class_names)
    if not found:
        raise EvaluateError(f"{folder} has no class folders; expected one per class of the model: {expected}")
    if set(found) != set(class_names):
        raise EvaluateError(f"class folders in {folder} ({', '.join(found)}) do not match the model's "
                            f"classes ({expected})")
    try:
        files, other = data.list_images(folder, class_names)
    except data.DataError as error:
        raise EvaluateError(str(error)) from None
    skipped = [(path, "not an image type training reads (run happysad.clean)") for path in other]
    return Target(folder.resolve().name, files, skipped)


def score(model: classifier.Classifier, files: data.Files, batch_size: int, keep_mistakes: int = 0) -> Scores:
    """Decode every file once (in parallel), score in batches, keep the worst `keep_mistakes` mistakes.

    Files TensorFlow cannot decode are dropped from the stream and listed with the decoder's reason.
    """
    threshold = model.record.threshold
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(files.paths, tf.string), tf.range(len(files))))
    dataset = dataset.map(lambda path, i: (model.preprocessing.load(path), i),
                          num_parallel_calls=tf.data.AUTOTUNE)
    dataset = data.ends_at_once(dataset.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE))
    labels_all = np.asarray(files.labels, dtype=int)
    kept, probabilities, far, mistakes = [], [], [], []
    progress = console.progress(len(files), "image", PROGRESS_FROM)
    for pixels, indices in dataset:
        pixels, indices = pixels.numpy(), indices.numpy()
        batch, vectors = model.scores(pixels, batch_size)
        if vectors is not None:
            far.append(model.domain.far(vectors)[1])
        kept.extend(indices.tolist())
        probabilities.append(batch)
        labels = labels_all[indices]
        predicted = metrics.predicted_labels(batch, threshold)
        losses = metrics.image_losses(labels, batch)
        for row in np.flatnonzero(predicted != labels):
            mistakes.append(Mistake(files.paths[indices[row]], int(labels[row]), int(predicted[row]),
                                    float(batch[row, predicted[row]]), float(losses[row]), pixels[row].copy()))
        mistakes = sorted(mistakes, key=lambda m: m.loss, reverse=True)[:keep_mistakes]
        progress.update(len(indices))
    progress.close()
    lost = [files.paths[i] for i in sorted(set(range(len(files))) - set(kept))]
    reasons = dict(data.find_undecodable(lost))
    skipped = [(path, reasons.get(path, "could not be prepared for the model")) for path in lost]
    num_columns = model.record.num_classes
    return Scores([files.paths[i] for i in kept], labels_all[kept],
                  np.concatenate(probabilities) if probabilities else np.zeros((0, num_columns)),
                  skipped, mistakes, np.concatenate(far) if far else None)


def use_threshold(model: classifier.Classifier, value: float) -> dict:
    """Score with the threshold given to store (written into the record once the report is); how it was set."""
    if not model.record.binary:
        raise EvaluateError("--store-threshold needs a two-class model; "
                            f"this one has {model.record.num_classes} classes and uses the arg-max")
    model.record.threshold = value
    return {"threshold": value, "method": "given on the command line"}


def uncalibrated(scores: Scores, model: classifier.Classifier):
    """What the model said before the calibration written into it (None where its record has none)."""
    if not model.record.calibration:
        return None
    return calibration.undo(calibration.Scaling(model.record.calibration["scale"], model.record.calibration["shift"]),
                            scores.probabilities)


def marked_shares(scores: Scores, model: classifier.Classifier) -> dict:
    """How many scored images carry each mark, and how often the unsure and the other ones were right."""
    right = metrics.predicted_labels(scores.probabilities, model.record.threshold) == scores.labels
    unsure = marks.unsure(scores.probabilities, model.record.threshold, model.unsure_band)
    shares = {"unsure": int(unsure.sum()),
              "accuracy_unsure": float(right[unsure].mean()) if unsure.any() else None,
              "accuracy_sure": float(right[~unsure].mean()) if (~unsure).any() else None,
              "fits_no_class": None}
    if scores.far is not None:
        shares["fits_no_class"] = int(scores.far.sum())
    return shares


def build_figures(target_name: str, scores: Scores, model: classifier.Classifier, summary: dict,
                  sweep: list, history: dict, before) -> dict:
    """The report's pictures by name, as matplotlib figures."""
    names = model.class_names
    figures = {"confusion_matrix": reports.confusion_matrix_figure(
        summary["confusion_matrix"], names, f"{target_name}: {summary['count']} images")}
    if summary["count"]:
        figures["reliability"] = reports.reliability_figure(
            None if before is None else calibration.reliability(scores.labels, before),
            calibration.reliability(scores.labels, scores.probabilities),
            (summary["calibration_error_before"], summary["calibration_error"]))
    if model.record.binary and summary["count"]:
        positive = names[1]
        is_positive = (scores.labels == 1).astype(int)
        fpr, tpr, _ = metrics.roc_curve(is_positive, scores.probabilities[:, 1])
        figures["roc"] = reports.roc_figure(fpr, tpr, summary["roc_auc"], positive)
        precision, recall, _ = metrics.pr_curve(is_positive, scores.probabilities[:, 1])
        figures["pr"] = reports.pr_figure(precision, recall, summary["pr_auc"], positive,
                                          float(is_positive.mean()))
        figures["thresholds"] = reports.threshold_figure(sweep, positive, model.record.threshold)
    if scores.mistakes:
        pixels = np.stack([m.pixels for m in scores.mistakes])
        if model.can_explain:  # each mistake with the evidence for the wrong label laid over it
            heatmaps = model.heatmaps(pixels, [names[m.predicted] for m in scores.mistakes])
            pixels = [explain.overlay(picture, heatmap) / 255.0 for picture, heatmap in zip(pixels, heatmaps)]
        figures["mistakes"] = reports.image_grid_figure(
            list(pixels),
            [f"{Path(m.path).name[:24]}\ntrue {names[m.true]}, said {names[m.predicted]}\n"
             f"p({names[m.predicted]})={m.probability:.2f}" for m in scores.mistakes],
            colors=["firebrick"] * len(scores.mistakes),
            title="worst mistakes (highest loss first)" + (", with where the model looked" if model.can_explain else ""))
    if history.get("loss") and "val_loss" in history:
        figures["training_curves"] = reports.curves_figure(history)
    elif history.get("loss"):  # a CNN trained after K fits: the folds' pooled held-out loss after each epoch
        held_out = [c["log_loss"] for c in model.record.metrics.get("cross_validation", {}).get("candidates", [])]
        figures["training_curves"] = reports.curves_figure({**history, "val_loss": held_out},
                                                           held_out="held-out folds, pooled")
    return figures


def default_out(model_path, target_name: str) -> Path:
    return Path("reports") / f"{Path(model_path).stem}-{target_name}"


def evaluate(model_path=defaults.MODEL, *, data_dir=None, partition: str = "test", out=None, batch_size: int = 64,
             mistakes: int = 16, tensorboard: bool = True, threshold_to_store: float = None) -> dict:
    """Score the model on its own partition (or on data_dir), write the report folder, and return the report."""
    try:
        model = classifier.load(model_path)
    except classifier.ModelError as error:
        raise EvaluateError(str(error)) from None
    threshold_info = None if threshold_to_store is None else use_threshold(model, threshold_to_store)
    target = folder_target(data_dir, model.class_names) if data_dir else partition_target(model.record, partition)
    if len(target.files) == 0:
        raise EvaluateError(f"no images to score in {target.name}")
    scores = score(model, target.files, batch_size, mistakes)
    skipped = target.skipped + scores.skipped
    if len(scores.labels) == 0:
        raise EvaluateError(f"none of the {len(target.files)} images in {target.name} could be decoded "
                            f"(e.g. {skipped[0][0]}: {skipped[0][1]})")
    summary = metrics.summarize(scores.labels, scores.probabilities, model.class_names, model.record.threshold)
    before = uncalibrated(scores, model)
    summary.update(calibration.errors(scores.labels, scores.probabilities, before))
    summary.update(marked_shares(scores, model))
    sweep = metrics.threshold_sweep(scores.labels, scores.probabilities[:, 1]) if model.record.binary else []
    history = model.record.history
    pictures = {name: reports.png_bytes(figure)
                for name, figure in build_figures(target.name, scores, model, summary, sweep, history, before).items()}

    out = Path(out) if out else default_out(model_path, target.name)
    out.mkdir(parents=True, exist_ok=True)
    for name, png in pictures.items():
        (out / f"{name}.png").write_bytes(png)
    report = {
        "model": str(model_path),
        "model_sha256": model.record.model_sha256,
        "evaluated": target.name,
        "source": str(Path(data_dir).resolve()) if data_dir else f"{partition} partition of {model.record.data_dir}",
        "class_names": model.class_names,
        "threshold": model.record.threshold if model.record.binary else None,
        "stored_threshold": threshold_info,
        "scored": int(len(scores.labels)),
        "seen_in_training": seen_in_training(model.record, scores.paths),
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
        "metrics": summary,
        "cross_validation": {key: value for key, value in model.record.metrics.get("cross_validation", {}).items()
                             if key in ("accuracy", "accuracy_interval", "count", "folds", "f1", "log_loss")},
        "threshold_sweep": sweep,
        "worst_mistakes": [{"path": m.path, "true": model.class_names[m.true],
                            "predicted": model.class_names[m.predicted], "probability": m.probability,
                            "loss": m.loss} for m in scores.mistakes],
        "figures": [f"{name}.png" for name in pictures],
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "report_dir": str(out),
        "tensorboard": None,
    }
    run_dir = Path(model.record.run_dir) if model.record.run_dir else None
    if run_dir and run_dir.is_dir() and tensorboard:
        log_dir = run_dir / ("evaluate" if target.name == "test" and not data_dir else f"evaluate-{target.name}")
        summaries.write_evaluation(log_dir, summary, pictures, scores.labels, scores.probabilities,
                                     model.class_names)
        report["tensorboard"] = str(log_dir)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    write_page(out / "index.html", report, pictures)
    if threshold_info:  # only now: a run that failed before its report changes nothing predict and serve use
        record.update(model_path, threshold=threshold_to_store)
    return report


def metric_rows(report: dict) -> list:
    """(name, precision, recall, f1, accuracy, support) per class and for the macro average."""
    summary = report["metrics"]
    rows = [(name, c["precision"], c["recall"], c["f1"], c["accuracy"], c["support"])
            for name, c in summary["per_class"].items()]
    rows.append(("macro", summary["precision"], summary["recall"], summary["f1"], summary["accuracy"],
                 summary["count"]))
    return rows


def headline(report: dict) -> str:
    summary = report["metrics"]
    parts = [f"accuracy {summary['accuracy']:.3f}", f"log loss {summary['log_loss']:.3f}",
             calibration.errors_text(summary)]
    for key, label in (("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC")):
        if summary.get(key) is not None:
            parts.append(f"{label} {summary[key]:.3f}")
    if report["threshold"] is not None:
        parts.append(f"threshold {report['threshold']:.2f}")
    measured = report.get("cross_validation")
    if measured:
        low, high = measured["accuracy_interval"]
        parts.append(f"(train's cross-validated accuracy: {measured['accuracy']:.3f}, 95% interval {low:.2f}-"
                     f"{high:.2f}, on {measured['count']} photos)")
    return "  ".join(parts)


def write_page(path, report: dict, pictures: dict) -> None:
    names = report["class_names"]
    matrix = report["metrics"]["confusion_matrix"]
    warning = seen_warning(report)
    sections = [
        ("Summary", f"<p>{report['scored']} images scored, {len(report['skipped'])} skipped, from "
                    f"{html.escape(report['source'])}.<br>{html.escape(headline(report))}</p>"
                    + (f"<p><strong>{html.escape(warning)}</strong></p>" if warning else "")),
        ("Per class", reports.table_html(
            ["class", "precision", "recall", "f1", "accuracy", "images"],
            [(n, f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", f"{a:.3f}", s) for n, p, r, f, a, s in metric_rows(report)])),
        ("Confusion matrix (rows: true class, columns: predicted)",
         reports.table_html(["true \\ predicted", *names], [(n, *row) for n, row in zip(names, matrix)])),
    ]
    summary = report["metrics"]
    sections.append(("Marks", reports.table_html(["mark", "images", "of which right"], [
        ("unsure", summary["unsure"], "–" if summary["accuracy_unsure"] is None else f"{summary['accuracy_unsure']:.3f}"),
        ("not unsure", summary["count"] - summary["unsure"],
         "–" if summary["accuracy_sure"] is None else f"{summary['accuracy_sure']:.3f}"),
        ("fits no class", "unknown (no domain in the record)" if summary["fits_no_class"] is None
         else summary["fits_no_class"], "")])))
    if report["stored_threshold"]:
        sections.append(("Stored threshold", reports.table_html(
            ["setting", "value"], list(report["stored_threshold"].items()))))
    sections.append(("Pictures", '<div class="figures">' + "".join(
        reports.image_html(png, name) for name, png in pictures.items()) + "</div>"))
    if report["worst_mistakes"]:
        sections.append(("Worst mistakes", reports.table_html(
            ["file", "true", "predicted", "probability", "loss"],
            [(m["path"], m["true"], m["predicted"], f"{m['probability']:.3f}", f"{m['loss']:.3f}")
             for m in report["worst_mistakes"]])))
    if report["skipped"]:
        sections.append(("Skipped files", reports.table_html(
            ["file", "reason"], [(s["path"], s["reason"]) for s in report["skipped"]])))
    reports.write_page(path, f"{report['model']} on {report['evaluated']}", sections)


def print_table(report: dict) -> None:
    names = report["class_names"]
    print(f"{report['model']} on {report['evaluated']}: {report['scored']} images scored, "
          f"{len(report['skipped'])} skipped")
    if report["stored_threshold"]:
        info = report["stored_threshold"]
        print(f"stored threshold {info['threshold']:.2f} in the model's record ({info['method']})")
    print(console.table([["class", "precision", "recall", "f1", "accuracy", "images"]] + [
        [name, *(f"{value:.3f}" for value in values), str(count)] for name, *values, count in metric_rows(report)]))
    print(headline(report))
    if report["seen_in_training"]:
        print(seen_warning(report))
    summary = report["metrics"]
    print(f"marked unsure: {summary['unsure']} of {summary['count']}" + (
        f" ({summary['accuracy_unsure']:.0%} of them right, {summary['accuracy_sure']:.0%} of the others)"
        if summary["accuracy_unsure"] is not None and summary["accuracy_sure"] is not None else "")
          + ("" if summary["fits_no_class"] is None else f"; fits no class: {summary['fits_no_class']}"))
    print("confusion matrix (rows: true, columns: predicted)")
    print(console.table([["", *names]] + [[name, *map(str, row)]
                                          for name, row in zip(names, report["metrics"]["confusion_matrix"])]))
    for item in report["skipped"]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    print(f"report: {Path(report['report_dir']) / 'index.html'}" +
          (f"; TensorBoard: {report['tensorboard']}" if report.get("tensorboard") else ""))


def main(argv=None) -> None:
    args = parse_args(argv)
    enable_memory_growth()
    try:
        report = evaluate(args.model, data_dir=args.data, partition=args.partition, out=args.out,
                          batch_size=args.batch_size, mistakes=args.mistakes, tensorboard=not args.no_tensorboard,
                          threshold_to_store=args.store_threshold)
    except EvaluateError as error:
        sys.exit(f"happysad.evaluate: error: {error}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
