"""python -m happysad.predict IMAGE [IMAGE or FOLDER ...]: label images with a trained model.

The model is loaded once and the images are prepared exactly as in training (happysad.images) and scored in
batches. Labels and the decision threshold come from the model's record (models/happysad.json).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from happysad import classifier, gpu, images


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m happysad.predict", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="image files, or folders searched recursively")
    parser.add_argument("--model", default="models/happysad.h5")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args(argv)


def expand(paths) -> list:
    """Files as given; folders become their image files (the extensions training reads), sorted."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and images.is_trainable_name(p.name)))
        else:
            found.append(path)
    return found


def load_images(paths, image_size: int):
    """Decode each file once; returns (paths that decoded, their pixels, [(path, reason)] for the rest)."""
    good, pixels, failed = [], [], []
    for path in paths:
        if not path.is_file():
            failed.append((path, "no such file"))
            continue
        try:
            pixels.append(images.load(str(path), image_size).numpy())
            good.append(path)
        except tf.errors.OpError as error:
            failed.append((path, f"not an image TensorFlow can decode ({images.error_reason(error)})"))
    return good, pixels, failed


def main(argv=None) -> None:
    args = parse_args(argv)
    gpu.enable_memory_growth()
    try:
        model = classifier.load(args.model)
    except classifier.ModelError as error:
        sys.exit(f"happysad.predict: error: {error}")
    paths = expand(args.paths)
    if not paths:
        sys.exit("happysad.predict: error: no images found in " + " ".join(args.paths))
    good, pixels, failed = load_images(paths, model.image_size)
    predictions = model.predict(np.stack(pixels)) if pixels else []
    for path, prediction in zip(good, predictions):
        if args.json:
            print(json.dumps({"path": str(path), "label": prediction.label,
                              "probability": round(prediction.probability, 6),
                              "probabilities": {k: round(v, 6) for k, v in prediction.probabilities.items()}}))
        else:
            print(f"{path}: {prediction.label} (p={prediction.probability:.2f})")
    for path, reason in failed:
        print(f"happysad.predict: error: {path}: {reason}", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
