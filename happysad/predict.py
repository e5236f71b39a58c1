"""python -m happysad.predict IMAGE [IMAGE or FOLDER ...]: label images with a trained model.

The model is loaded once and the images are prepared exactly as in training (happysad.images) and scored in
batches. Labels and the decision threshold come from the model's record (models/happysad.json).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from happysad import classifier, console, defaults, explain, images
from happysad.files import free_path
from happysad.runtime import enable_memory_growth, tf


def parse_args(argv=None) -> argparse.Namespace:
    parser = console.ArgumentParser(prog="python -m happysad.predict", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="image files, or folders searched recursively")
    parser.add_argument("--model", default=defaults.MODEL,
                        help=".h5 or .keras, or an export: .tflite or a SavedModel folder (happysad.export)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images decoded and scored at once (memory grows with it, not with the folder)")
    parser.add_argument("--top-k", type=int, metavar="K", help="also list the K most likely classes")
    parser.add_argument("--explain", metavar="OUT_DIR", type=Path,
                        help="also write each image as the model saw it with a heatmap of the evidence for its "
                             "label (Grad-CAM) to OUT_DIR/<name>.png")
    parser.add_argument("--category-names", metavar="JSON",
                        help='a JSON file mapping class folder names to display names, e.g. {"happy": "Happy"}')
    args = parser.parse_args(argv)
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def read_category_names(path) -> dict:
    """{folder name: display name} from a JSON object; a class it does not name keeps its folder name."""
    try:
        names = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read --category-names {path}: {error}") from None
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise ValueError(f"--category-names {path} must hold one JSON object of folder name -> display name")
    return names


def expand(paths) -> tuple:
    """(files as given, and in folders their image files (the extensions training reads, links to nothing
    included so that they are reported), sorted; the other files found in folders). Hidden files and folders
    (clean's .quarantine, macOS's ._ files) are left out, as training leaves them out."""
    found, other = [], []
    for path in map(Path, paths):
        if not path.is_dir():
            found.append(path)
            continue
        inside = sorted(p for p in path.rglob("*") if (p.is_file() or p.is_symlink() and not p.exists())
                        and not any(part.startswith(".") for part in p.relative_to(path).parts))
        found += [p for p in inside if images.is_trainable_name(p.name)]
        other += [p for p in inside if not images.is_trainable_name(p.name)]
    return found, other


def load_images(paths, model: classifier.Classifier):
    """Decode each file once; returns (paths that decoded, their pixels, [(path, reason)] for the rest)."""
    good, pixels, failed = [], [], []
    for path in paths:
        if not path.is_file():
            failed.append((path, "a link to nothing" if path.is_symlink() else "no such file"))
            continue
        try:
            pixels.append(model.load_image(path))
            good.append(path)
        except tf.errors.OpError as error:
            failed.append((path, f"not an image TensorFlow can decode ({images.error_reason(error)})"))
    return good, pixels, failed


def main(argv=None) -> None:
    args = parse_args(argv)
    enable_memory_growth()
    try:
        model = classifier.load(args.model)
        names = read_category_names(args.category_names) if args.category_names else {}
    except (classifier.ModelError, ValueError) as error:
        sys.exit(f"happysad.predict: error: {error}")
    if args.explain and not model.can_explain:
        sys.exit(f"happysad.predict: error: --explain: {classifier.EXPORTS_CANNOT_EXPLAIN}")
    if model.missing_mark_note:
        print(f"note: {model.missing_mark_note}", file=sys.stderr)
    paths, other = expand(args.paths)
    if other:
        print(f"note: {len(other)} file(s) in the folders are not in a format training reads and are skipped "
              f"(e.g. {other[0]}): `python -m happysad.clean` converts the images among them", file=sys.stderr)
    if not paths:
        sys.exit("happysad.predict: error: no images found in " + " ".join(args.paths))
    failed, written = [], []
    for start in range(0, len(paths), args.batch_size):
        good, pixels, unreadable = load_images(paths[start:start + args.batch_size], model)
        failed += unreadable
        if not good:
            continue
        pixels = np.stack(pixels)
        predictions = model.predict(pixels)
        show(args, model, names, good, predictions)
        if args.explain:
            written += write_heatmaps(args.explain, model, good, pixels, predictions)
    if written:
        print(f"heatmaps of the evidence for each label: {len(written)} pictures in {args.explain}", file=sys.stderr)
    for path, reason in failed:
        print(f"happysad.predict: error: {path}: {reason}", file=sys.stderr)
    if failed:
        sys.exit(1)


def show(args, model: classifier.Classifier, names: dict, paths, predictions) -> None:
    """Print each image's label, as a line or a JSON object."""
    for path, prediction in zip(paths, predictions):
        top = [{"label": entry["label"], "name": names.get(entry["label"], entry["label"]),
                "probability": round(entry["probability"], 6)} for entry in prediction.top(args.top_k or 0)]
        if args.json:
            row = {**prediction.to_json(path), "name": names.get(prediction.label, prediction.label)}
            print(json.dumps({**row, "top_k": top} if top else row))
        elif top:
            print(f"{path}: " + ", ".join(f"{entry['name']} {entry['probability']:.2f}" for entry in top)
                  + "".join(f"  [{note}]" for note in prediction.notes))
        else:
            print(f"{path}: {names.get(prediction.label, prediction.label)} (p={prediction.probability:.2f}"
                  f"{threshold_note(model, prediction, names)})" + "".join(f"  [{note}]" for note in prediction.notes))


def write_heatmaps(out_dir: Path, model: classifier.Classifier, paths, pixels, predictions) -> list:
    """OUT_DIR/<file name>.png per image: the picture as the model saw it, with the heatmap of the evidence for
    its label over it. A name that is taken (another image's heatmap, or any file already there, such as a
    photo when OUT_DIR is a photo folder) gets a number (files.free_path): nothing is ever overwritten."""
    heatmaps = model.heatmaps(pixels, [p.label for p in predictions])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, picture, heatmap in zip(paths, pixels, heatmaps):
        target = free_path(out_dir / f"{path.stem}.png")
        tf.io.write_file(str(target), tf.io.encode_png(explain.overlay(picture, heatmap)))
        written.append(target)
    return written


def threshold_note(model, prediction, names) -> str:
    """Why a two-class label can come with p < 0.5: the other class needs the record's threshold to win."""
    if not model.record.binary or prediction.probability >= 0.5:
        return ""
    other = model.class_names[1]
    return f"; {names.get(other, other)} needs p >= {model.record.threshold:.2f}"


if __name__ == "__main__":
    main()
