"""File size, load time, per-image latency and agreement of every export format against the source model.

    python benchmarks/export.py --model models/happysad.h5 --images /path/to/images [--count 64]

Exports the model to every format and quantization into a temporary folder, loads each through
happysad.classifier (as predict and serve do), and times it on the same decoded images: latency of one image
per call (what serve sees for a single upload; median over the images) and per image in batches of 32.
Agreement is against the source model on those images: labels equal, largest probability difference.
Prints a Markdown table.
"""
import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from happysad import classifier, export, images, record, runtime  # noqa: E402

FORMATS = (("keras", "none"), ("savedmodel", "none"), ("tflite", "none"), ("tflite", "dynamic"),
           ("tflite", "float16"))


def latencies(model: classifier.Classifier, pixels: np.ndarray) -> tuple:
    """(median ms for one image per call, ms per image in batches of 32), after a warm-up call of each."""
    model.probabilities(pixels[:1])
    model.probabilities(pixels[:32], batch_size=32)
    single = []
    for image in pixels:
        started = time.perf_counter()
        model.probabilities(image[None])
        single.append(time.perf_counter() - started)
    started = time.perf_counter()
    model.probabilities(pixels, batch_size=32)
    return 1000 * statistics.median(single), 1000 * (time.perf_counter() - started) / len(pixels)


def sample(folder, count: int) -> list:
    """`count` image files spread evenly over the folder's sorted list (so every class folder is represented)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and images.is_trainable_name(p.name))
    return [files[i] for i in np.linspace(0, len(files) - 1, min(count, len(files))).astype(int)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/happysad.h5")
    parser.add_argument("--images", required=True, help="a folder of images (searched recursively)")
    parser.add_argument("--count", type=int, default=64, help="how many of its images to time")
    args = parser.parse_args()
    runtime.enable_memory_growth()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / Path(args.model).name
        shutil.copy(args.model, source)
        shutil.copy(record.sidecar_path(args.model), record.sidecar_path(source))
        reference = classifier.load(source)
        pixels = np.stack([reference.load_image(path) for path in sample(args.images, args.count)])
        want = reference.probabilities(pixels)
        print(f"{len(pixels)} images from {args.images} at {reference.preprocessing.image_size} px\n")
        print("| format | file | size (MB) | load (s) | 1 image/call (ms) | batch 32 (ms/image) "
              "| labels = .h5 | max abs Δp |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        rows = [("h5 (source)", source)]
        for fmt, quantize in FORMATS:
            name = fmt if quantize == "none" else f"{fmt} {quantize}"
            rows.append((name, export.export(source, fmt, quantize)["out"]))
        for name, path in rows:
            started = time.perf_counter()
            model = classifier.load(path)
            load_seconds = time.perf_counter() - started
            single, batched = latencies(model, pixels)
            got = model.probabilities(pixels)
            same = np.mean([a.label == b.label for a, b in zip(map(reference.label, want), map(model.label, got))])
            print(f"| {name} | {path.name} | {export.size_bytes(path) / 1e6:.2f} | {load_seconds:.2f} | "
                  f"{single:.2f} | {batched:.2f} | {100 * same:.1f}% | {np.max(np.abs(got - want)):.1e} |")


if __name__ == "__main__":
    main()
