"""Test accuracy of training configurations on one labelled folder, all on the same leak-free split.

    python benchmarks/accuracy.py --data /path/to/labelled/folder [--only default,mobilenet] [--seeds 1,2,3]
        [--weights-dir ../shared/weights]

Each configuration is a set of `happysad.train` flags, run as the command a user types (a fresh process,
start-up and feature extraction included, each run with an empty cache), once per seed. For one seed every
configuration gets the same train / validation / test file lists (happysad.data.split, near copies kept
together) and is scored on the same held-out test images, never seen in training nor used for early
stopping or the threshold; each seed is another split, so several seeds show how much a result is the luck
of one split. The pretrained configurations name only --arch and --weights: they measure the recipe train
picks for that backbone.

Prints, per seed, how many test images have a near copy among the training and validation images with the
near-copy-aware split and with a split that ignores the groups (as happysad split before); then a Markdown
table per run (accuracy, per-class recall, macro F1, test log loss, epochs, the whole command's wall time)
and the means per configuration with the paired accuracy difference to the first configuration named.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from happysad import data

PLAIN = ["--no-augment", "--dropout", "0", "--no-class-weights", "--patience", "0", "--threshold", "0.5"]
WEIGHTS = {"mobilenet": "mobilenet_1.0_imagenet_notop_converted.h5", "mobilenet025": "mobilenet_2_5_224_tf_no_top.h5",
           "mobilenetv2": "mobilenetv2_1.0_imagenet_notop_converted.h5"}
CONFIGS = {
    # The design card / tutorial: three-block CNN, 256 px, 20 epochs, nothing else.
    "card": ["--arch", "cnn", "--image-size", "256", "--epochs", "20", *PLAIN],
    # train's defaults: the card's network with augmentation and dropout, at 128 px, early stopping.
    "default": ["--arch", "cnn"],
    "default-t05": ["--arch", "cnn", "--threshold", "0.5"],
    **{arch: ["--arch", arch, "--weights", "{weights_dir}/" + name] for arch, name in WEIGHTS.items()},
    **{f"{arch}-t05": ["--arch", arch, "--weights", "{weights_dir}/" + name, "--threshold", "0.5"]
       for arch, name in WEIGHTS.items()},
    "mobilenet-views2": ["--arch", "mobilenet", "--weights", "{weights_dir}/" + WEIGHTS["mobilenet"], "--views", "2"],
    "mobilenet-views4": ["--arch", "mobilenet", "--weights", "{weights_dir}/" + WEIGHTS["mobilenet"], "--views", "4"],
    "mobilenet-160": ["--arch", "mobilenet", "--weights", "{weights_dir}/" + WEIGHTS["mobilenet"],
                      "--image-size", "160"],
}


def leaked_test_images(files: data.Files, groups: list, parts: dict) -> int:
    """Test images that share a near-copy group with a training or validation image."""
    group_of = dict(zip(files.paths, groups))
    seen = {group_of[path] for name in ("train", "validation") for path in parts[name].paths}
    return sum(group_of[path] in seen for path in parts["test"].paths)


def run(name: str, flags: list, data_dir: str, split: str, seed: int, work: Path) -> dict:
    model = work / name / "model.h5"
    command = [sys.executable, "-m", "happysad.train", "--data", data_dir, "--split", split, "--seed", str(seed),
               *flags, "--run-name", name, "--model", str(model), "--logdir", str(work / "logs"),
               "--cache", f"disk:{work / name / 'cache'}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    saved = json.loads(model.with_suffix(".json").read_text())
    test = saved["metrics"]["test"]
    return {"name": name, "count": test["count"], "accuracy": test["accuracy"], "f1": test["f1"],
            "log_loss": test["log_loss"], "recall": {c: v["recall"] for c, v in test["per_class"].items()},
            "threshold": saved["threshold"], "epochs": len(saved["metrics"]["epoch_seconds"]), "seconds": seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a labelled folder DIR/<class>/...")
    parser.add_argument("--only", help=f"comma-separated configurations (default: all of {', '.join(CONFIGS)})")
    parser.add_argument("--split", default="0.6,0.2,0.2",
                        help="train,validation,test fractions (default 0.6,0.2,0.2: a larger test partition than "
                             "train's default makes the accuracies less noisy)")
    parser.add_argument("--seeds", default="1337",
                        help="comma-separated seeds: each one is its own split and initialisation (default 1337)")
    parser.add_argument("--weights-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "weights"),
                        help="folder with the backbones' ImageNet weights files")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    fractions = tuple(float(x) for x in args.split.split(","))
    files, _ = data.list_images(args.data, data.find_classes(args.data))
    groups = data.near_copy_groups(files)
    load = os.getloadavg()[0]
    rows = []
    for seed in seeds:
        grouped = leaked_test_images(files, groups, data.split(files, fractions, seed, groups=groups))
        ungrouped = leaked_test_images(files, groups, data.split(files, fractions, seed))
        print(f"[accuracy] seed {seed}: test images with a near copy in training or validation: "
              f"{ungrouped} with a split that ignores near copies, {grouped} with happysad's", flush=True)
        with tempfile.TemporaryDirectory(prefix="happysad-accuracy-") as work:
            for name in names:
                flags = [flag.format(weights_dir=args.weights_dir) for flag in CONFIGS[name]]
                rows.append({**run(name, flags, args.data, args.split, seed, Path(work)), "seed": seed})
                print(f"[accuracy] {name}, seed {seed}: test accuracy {rows[-1]['accuracy']:.3f} "
                      f"in {rows[-1]['seconds']:.0f} s", flush=True)
    classes = list(rows[0]["recall"])
    print(f"\n{args.data}, split {args.split}, {rows[0]['count']} test images per seed; "
          f"load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end on {os.cpu_count()} CPUs\n")
    print("| configuration | seed | test accuracy | " + " | ".join(f"recall {c}" for c in classes)
          + " | threshold | macro F1 | test log loss | epochs | whole command |")
    print("|---" * (8 + len(classes)) + "|")
    for row in rows:
        print(f"| {row['name']} | {row['seed']} | {row['accuracy']:.3f} | "
              + " | ".join(f"{row['recall'][c]:.3f}" for c in classes)
              + f" | {row['threshold']:.2f} | {row['f1']:.3f} | {row['log_loss']:.3f} | {row['epochs']} | "
              f"{row['seconds']:.0f} s |")
    print(f"\nmeans over {len(seeds)} seed(s); the difference is paired (same split) against {names[0]}:\n")
    print("| configuration | test accuracy | " + " | ".join(f"recall {c}" for c in classes)
          + f" | macro F1 | test log loss | whole command | accuracy minus {names[0]} | flags |")
    print("|---" * (7 + len(classes)) + "|")
    baseline = [row["accuracy"] for row in rows if row["name"] == names[0]]
    for name in names:
        mine = [row for row in rows if row["name"] == name]
        differences = [row["accuracy"] - base for row, base in zip(mine, baseline)]
        spread = f" ± {statistics.stdev(differences) / len(differences) ** 0.5:.3f} (SE)" \
            if len(differences) > 1 else ""
        print(f"| {name} | {statistics.mean(r['accuracy'] for r in mine):.3f} | "
              + " | ".join(f"{statistics.mean(r['recall'][c] for r in mine):.3f}" for c in classes)
              + f" | {statistics.mean(r['f1'] for r in mine):.3f} | "
              f"{statistics.mean(r['log_loss'] for r in mine):.3f} | "
              f"{statistics.mean(r['seconds'] for r in mine):.0f} s | {statistics.mean(differences):+.3f}{spread} | "
              f"`{' '.join(CONFIGS[name])}` |")


if __name__ == "__main__":
    main()
