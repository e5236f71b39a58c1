"""Accuracy on photos training never saw, against the figure train prints about itself, per configuration.

    python benchmarks/accuracy.py --data ../shared/datasets/happysad-web [--only default,mobilenet] [--seeds 1,2,3]
        [--test-fraction 0.2] [--weights-dir ../shared/weights] [--no-warm] [--extra-flags "--epochs 2"]

Why: train measures itself on the folder it was given: its own held-out partition (or cross-validation), cut by
its own split, after choices it made on that same folder (the threshold; the backbone with --arch auto). This
says how far to trust that figure. Per seed the folder is cut once, before any configuration runs, into an
outer train side and an outer test side (happysad.data.split, every near-copy group on one side). train gets
only the train side, as if it were the user's whole folder; happysad.evaluate then scores the model on the test
side, which no run ever reads. The gap is the printed figure minus the unseen accuracy.

The folder is first copied and cleaned (happysad.clean on the copy, as a user would: broken files go to its
quarantine; the original is never touched), and each side is a folder of symlinks into the cleaned copy. Every
run is the command a user types, in a fresh process, timed twice with one disk cache: cold (empty cache, so
decoding and backbone features included) and warm (the same command again, everything stored). Keras' own
weights (the default --weights imagenet, --arch auto) come from a temporary KERAS_HOME whose models/ links the
shared weights files under Keras' file names (../shared/weights/README.md), so nothing is downloaded.

Prints the load average, each seed's photos per side and how many test photos have a near copy on the train
side (0, by construction), a progress line per run, then a Markdown table per run and the means over seeds
per configuration with the mean absolute gap, then per configuration the calibration error on the unseen
photos and how many of them, and of generated pictures unlike any photo, carry each mark.
"""
import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from happysad import data, record, sample

PLAIN = ["--no-augment", "--dropout", "0", "--no-class-weights", "--patience", "0", "--threshold", "0.5"]
WEIGHTS = {"mobilenet": "mobilenet_1.0_imagenet_notop_converted.h5", "mobilenet025": "mobilenet_2_5_224_tf_no_top.h5",
           "mobilenetv2": "mobilenetv2_1.0_imagenet_notop_converted.h5",
           "expression": "fer2013_mini_xception_emotion.hdf5"}
# The shared weights files under the names Keras looks for in $KERAS_HOME/models/.
KERAS_NAMES = {"mobilenet_1.0_imagenet_notop_converted.h5": "mobilenet_1_0_224_tf_no_top.h5",
               "mobilenetv2_1.0_imagenet_notop_converted.h5":
                   "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
               "mobilenet_2_5_224_tf_no_top.h5": "mobilenet_2_5_224_tf_no_top.h5",
               "fer2013_mini_xception_emotion.hdf5": "fer2013_mini_xception_emotion.hdf5"}
CONFIGS = {
    # The design card / tutorial: three-block CNN, 256 px, 20 epochs, nothing else.
    "card": ["--arch", "cnn", "--split", "0.7,0.2,0.1", "--image-size", "256", "--epochs", "20", *PLAIN],
    # train's defaults: the card's network with augmentation and dropout, at 128 px, early stopping.
    "default": ["--arch", "cnn"],
    # The CNN measured by one fit on partitions (train's default before release 0.7), and by 3 folds, not 5.
    "cnn-partitions": ["--arch", "cnn", "--split", "0.7,0.2,0.1"],
    "cnn-folds3": ["--arch", "cnn", "--folds", "3"],
    "default-t05": ["--arch", "cnn", "--threshold", "0.5"],
    **{arch: ["--arch", arch, "--weights", "{weights_dir}/" + name] for arch, name in WEIGHTS.items()},
    # Keras' imagenet weights, from the KERAS_HOME cache.
    "mobilenet-imagenet": ["--arch", "mobilenet"],
    "auto": ["--arch", "auto"],
    "mobilenet+mobilenetv2": ["--arch", "mobilenet+mobilenetv2"],
    "mobilenet+expression": ["--arch", "mobilenet+expression"],
    "expression-fine-tune": ["--arch", "expression", "--fine-tune", "20"],
}


def clean_copy(source: Path, work: Path) -> Path:
    """A writable copy of the folder, cleaned by happysad.clean (the shared original may be read-only)."""
    copy = work / "cleaned"
    for path in sorted(source.rglob("*")):
        if path.is_file():
            target = copy / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    subprocess.run([sys.executable, "-m", "happysad.clean", str(copy)], check=True, stdout=subprocess.DEVNULL)
    return copy


def keras_home(weights_dir: Path, work: Path) -> Path:
    """A KERAS_HOME whose models/ links each shared weights file present under Keras' name for it."""
    models = work / "keras" / "models"
    models.mkdir(parents=True)
    for name, keras_name in KERAS_NAMES.items():
        if (weights_dir / name).is_file():
            (models / keras_name).symlink_to((weights_dir / name).resolve())
    return models.parent


def outer_split(files: data.Files, groups: list, test_fraction: float, seed: int) -> tuple:
    """(train side, test side), no near-copy group on both.

    data.split takes three positive fractions, so this asks for the test side's fraction and halves the rest
    between train and validation, then merges those two. Per class the test cut falls at the group boundary
    closest to the test fraction after the other two partitions, whatever their ratio, as long as the
    train cut comes before it (halving leaves the most room).
    """
    rest = (1 - test_fraction) / 2
    parts = data.split(files, (rest, rest, test_fraction), seed, groups=groups)
    train = data.Files(parts["train"].paths + parts["validation"].paths,
                       parts["train"].labels + parts["validation"].labels)
    return train, parts["test"]


def link_side(files: data.Files, cleaned: Path, side: Path) -> Path:
    """side/<class>/<path under the class folder>: a symlink to each file of the cleaned copy."""
    for relative, path in zip(data.relative(files, cleaned), files.paths):
        link = side / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(path).resolve())
    return side


def leaked(files: data.Files, groups: list, train: data.Files, test: data.Files) -> int:
    """Test photos that share a near-copy group with a photo of the train side."""
    group_of = dict(zip(files.paths, groups))
    seen = {group_of[path] for path in train.paths}
    return sum(group_of[path] in seen for path in test.paths)


def timed(command: list, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def printed_figure(model: Path) -> dict:
    """The accuracy train reported about itself, and what it measured it on, from the model's record."""
    saved = json.loads(record.sidecar_path(model).read_text())
    cross_validation = saved["metrics"].get("cross_validation")
    return {"printed": (cross_validation or saved["metrics"]["test"])["accuracy"],
            "kind": "cross-validation" if cross_validation else "test",
            "arch": saved.get("hyperparameters", {}).get("arch"),
            "choice": cross_validation.get("choice") if cross_validation else None}


def unseen(model: Path, test_side: Path, unlike: Path, out: Path, env: dict) -> dict:
    """happysad.evaluate's accuracy, per-class recall, calibration error and marks of the model on the outer
    test side, and how many of the pictures unlike any photo (sample --unlike) predict marks "fits no class"."""
    command = [sys.executable, "-m", "happysad.evaluate", "--model", str(model), "--data", str(test_side),
               "--json", "--no-tensorboard", "--out", str(out)]
    report = json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE, env=env, text=True).stdout)
    measured = report["metrics"]
    predicted = subprocess.run([sys.executable, "-m", "happysad.predict", str(unlike), "--model", str(model),
                                "--json"], check=True, stdout=subprocess.PIPE, env=env, text=True).stdout
    unlike_rows = [json.loads(line) for line in predicted.splitlines()]
    return {"accuracy": measured["accuracy"], "scored": report["scored"],
            "recall": {name: c["recall"] for name, c in measured["per_class"].items()},
            "ece": measured["calibration_error"], "ece_before": measured["calibration_error_before"],
            "ece_chance": measured["calibration_error_chance"],
            "unsure": measured["unsure"] / report["scored"], "accuracy_unsure": measured["accuracy_unsure"],
            "accuracy_sure": measured["accuracy_sure"],
            "no_class": (measured["fits_no_class"] or 0) / report["scored"],
            "unlike_no_class": sum(row["fits_no_class"] for row in unlike_rows) / len(unlike_rows)}


def run(name: str, flags: list, seed: int, seed_dir: Path, unlike: Path, warm: bool, env: dict) -> dict:
    """Train cold (and warm) on the seed's train side, score the cold model on its test side."""
    work = seed_dir / name

    def command(model: Path) -> list:
        return [sys.executable, "-m", "happysad.train", "--data", str(seed_dir / "train"), "--seed", str(seed),
                *flags, "--model", str(model), "--logdir", str(seed_dir / "logs"), "--run-name", name,
                "--cache", f"disk:{work / 'cache'}"]

    cold = timed(command(work / "cold.h5"), env)
    warm_seconds = timed(command(work / "warm.h5"), env) if warm else None
    return {"name": name, "seed": seed, "cold": cold, "warm": warm_seconds, **printed_figure(work / "cold.h5"),
            **unseen(work / "cold.h5", seed_dir / "test", unlike, work / "report", env)}


def seconds(value) -> str:
    return "–" if value is None else f"{value:.0f}"


def share(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def print_marks(rows: list, names: list) -> None:
    """Calibration and the marks, means over seeds: what the numbers a user is shown are worth."""
    print("\ncalibration and marks, means over seeds (ECE on the unseen photos; by chance: what perfectly "
          "calibrated probabilities would show on as many photos; unsure: share marked, and the accuracy inside and "
          "outside the band; fits no class: share of unseen photos and of unlike pictures):\n")
    print("| configuration | ECE | ECE uncalibrated | ECE by chance | unsure | accuracy unsure / sure "
          "| fits no class: photos | fits no class: unlike pictures |")
    print("|---" * 8 + "|")
    for name in names:
        mine = [row for row in rows if row["name"] == name]

        def mean(key):
            values = [row[key] for row in mine if row[key] is not None]
            return statistics.mean(values) if values else None
        print(f"| {name} | {share(mean('ece'))} | {share(mean('ece_before'))} | {share(mean('ece_chance'))} | "
              f"{share(mean('unsure'))} | "
              f"{share(mean('accuracy_unsure'))} / {share(mean('accuracy_sure'))} | {share(mean('no_class'))} | "
              f"{share(mean('unlike_no_class'))} |")


def print_tables(rows: list, names: list, classes: list) -> None:
    print("| configuration | seed | unseen accuracy | " + " | ".join(f"recall {c}" for c in classes)
          + " | printed figure (kind) | gap (points) | cold s | warm s |")
    print("|---" * (7 + len(classes)) + "|")
    for row in rows:
        chose = f" (chose {row['choice']})" if row["choice"] else ""
        print(f"| {row['name']}{chose} | {row['seed']} | {row['accuracy']:.3f} | "
              + " | ".join(f"{row['recall'][c]:.3f}" for c in classes)
              + f" | {row['printed']:.3f} ({row['kind']}) | {100 * (row['printed'] - row['accuracy']):+.1f} | "
              f"{seconds(row['cold'])} | {seconds(row['warm'])} |")
    print("\nmeans over seeds:\n")
    print("| configuration | seeds | unseen accuracy | " + " | ".join(f"recall {c}" for c in classes)
          + " | printed figure | mean gap (points) | mean absolute gap | cold s | warm s | flags |")
    print("|---" * (9 + len(classes)) + "|")
    for name in names:
        mine = [row for row in rows if row["name"] == name]
        gaps = [100 * (row["printed"] - row["accuracy"]) for row in mine]
        warm = [row["warm"] for row in mine if row["warm"] is not None]
        print(f"| {name} | {len(mine)} | {statistics.mean(r['accuracy'] for r in mine):.3f} | "
              + " | ".join(f"{statistics.mean(r['recall'][c] for r in mine):.3f}" for c in classes)
              + f" | {statistics.mean(r['printed'] for r in mine):.3f} | {statistics.mean(gaps):+.1f} | "
              f"{statistics.mean(abs(gap) for gap in gaps):.1f} | "
              f"{seconds(statistics.mean(r['cold'] for r in mine))} | "
              f"{seconds(statistics.mean(warm) if warm else None)} | `{' '.join(CONFIGS[name])}` |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="a labelled folder DIR/<class>/... (not modified)")
    parser.add_argument("--only", help=f"comma-separated configurations (default: all of {', '.join(CONFIGS)})")
    parser.add_argument("--seeds", default="1,2,3",
                        help="comma-separated seeds: each one is its own outer split and training seed (default 1,2,3)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of each class on the outer test side (default 0.2)")
    parser.add_argument("--weights-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "weights",
                        help="folder with the backbones' ImageNet weights files")
    parser.add_argument("--no-warm", dest="warm", action="store_false",
                        help="skip the second, warm-cache run of each command")
    parser.add_argument("--unlike", type=int, default=20,
                        help="pictures of each kind that fit no class (happysad.sample --unlike) scored per run "
                             "(default 20)")
    parser.add_argument("--extra-flags", default="",
                        help='train flags added to every configuration, e.g. "--epochs 2" for a quick check')
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if not 0 < args.test_fraction < 1:
        parser.error(f"--test-fraction must be between 0 and 1, got {args.test_fraction}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print(f"[accuracy] load average {os.getloadavg()[0]:.1f} at start on {os.cpu_count()} CPUs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="happysad-accuracy-") as work:
        work = Path(work)
        env = {**os.environ, "KERAS_HOME": str(keras_home(args.weights_dir, work))}
        cleaned = clean_copy(args.data, work)
        classes = data.find_classes(cleaned)
        files, _ = data.list_images(cleaned, classes)
        groups = data.near_copy_groups(files)
        unlike = work / "unlike"
        sample.write_unlike(unlike, args.unlike, size=256)
        print(f"[accuracy] {args.data}: {len(files)} photos after happysad.clean on a copy", flush=True)
        for seed in seeds:
            seed_dir = work / f"seed{seed}"
            train, test = outer_split(files, groups, args.test_fraction, seed)
            link_side(train, cleaned, seed_dir / "train")
            link_side(test, cleaned, seed_dir / "test")
            print(f"[accuracy] seed {seed}: train side {len(train)} photos {train.count_per_class(len(classes))}, "
                  f"test side {len(test)} photos {test.count_per_class(len(classes))} ({', '.join(classes)}); "
                  f"test photos with a near copy on the train side: {leaked(files, groups, train, test)}",
                  flush=True)
            for name in names:
                flags = [flag.format(weights_dir=args.weights_dir) for flag in CONFIGS[name]]
                rows.append(run(name, flags + shlex.split(args.extra_flags), seed, seed_dir, unlike, args.warm,
                                env))
                row = rows[-1]
                chose = f", chose {row['choice']}" if row["choice"] else ""
                print(f"[accuracy] {name}, seed {seed} (arch {row['arch']}{chose}): unseen accuracy "
                      f"{row['accuracy']:.3f} on {row['scored']} photos, printed {row['printed']:.3f} "
                      f"({row['kind']}); cold {row['cold']:.0f} s"
                      + (f", warm {row['warm']:.0f} s" if args.warm else ""), flush=True)
    print(f"\n{args.data}, outer test fraction {args.test_fraction}, seeds {args.seeds}"
          + (f", extra train flags `{args.extra_flags}`" if args.extra_flags else "")
          + f"; load average {os.getloadavg()[0]:.1f} at end on {os.cpu_count()} CPUs\n")
    print_tables(rows, names, classes)
    print_marks(rows, names)


if __name__ == "__main__":
    main()
