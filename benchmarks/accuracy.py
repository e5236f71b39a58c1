"""Test accuracy of training configurations on one labelled folder, all on the same leak-free split.

    PYTHONPATH=. python benchmarks/accuracy.py --data /path/to/labelled/folder [--only card,default] [--seeds 1,2,3]

Each configuration is a set of `happysad.train` flags, trained in-process once per seed. For one seed every
configuration gets the same train / validation / test file lists (happysad.data.split) and is scored on the
same held-out test images, never seen in training nor used for early stopping; each seed is another split,
so several seeds show how much a result is the luck of one split. Every flag that matters is spelled out, so
a change of train.py's defaults does not change what a row measures. Decoded images are cached on disk in a
temporary folder and shared by the configurations with the same image size and preprocessing.
Prints a Markdown table per run (test accuracy, macro F1, test log loss: how well the probabilities are
calibrated, an over-fitted model is confidently wrong; epochs trained; training time), then the means per
configuration with the paired accuracy difference to the first configuration named.
"""
import argparse
import os
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from happysad import gpu, train  # noqa: E402

PLAIN = ["--no-augment", "--dropout", "0", "--no-class-weights", "--patience", "0"]
TUNED = ["--augment", "--dropout", "0.5", "--class-weights", "--patience", "6"]
CONFIGS = {
    # The design card / tutorial: three-block CNN, 256 px, 20 epochs, nothing else.
    "card": ["--arch", "cnn", "--image-size", "256", "--epochs", "20", *PLAIN],
    # train's defaults: the card's network with augmentation and dropout, at 128 px, early stopping.
    "default": ["--arch", "cnn", "--image-size", "128", "--epochs", "60", "--augment", "--dropout", "0.5",
                "--class-weights", "--patience", "10"],
    "patience-15": ["--arch", "cnn", "--image-size", "128", "--epochs", "80", "--augment", "--dropout", "0.5",
                    "--class-weights", "--patience", "15"],
    "card-128": ["--arch", "cnn", "--image-size", "128", "--epochs", "20", *PLAIN],
    "tuned-128": ["--arch", "cnn", "--image-size", "128", "--epochs", "40", *TUNED],
    "tuned-64": ["--arch", "cnn", "--image-size", "64", "--epochs", "40", *TUNED],
    "tuned-128-faces": ["--arch", "cnn", "--image-size", "128", "--epochs", "40", *TUNED, "--faces"],
    # No ImageNet weights can be downloaded here: a backbone trained from scratch on a few hundred photos.
    "mobilenetv2-scratch-64": ["--arch", "mobilenetv2", "--weights", "none", "--image-size", "64",
                               "--epochs", "40", *TUNED],
}


def run(name: str, flags: list, data_dir: str, split: str, seed: int, work: str) -> dict:
    args = train.parse_args([
        "--data", data_dir, "--split", split, "--seed", str(seed), *flags, "--run-name", name,
        "--model", os.path.join(work, name, "model.h5"), "--logdir", os.path.join(work, "logs"),
        "--cache", f"disk:{os.path.join(work, 'cache')}"])
    result = train.train(args)
    test = result["record"].metrics["test"]
    return {"name": name, "flags": " ".join(flags), "count": test["count"], "accuracy": test["accuracy"],
            "f1": test["f1"], "log_loss": test["log_loss"], "epochs": len(result["history"]["loss"]),
            "minutes": result["record"].metrics["train_seconds"] / 60}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a labelled folder DIR/<class>/...")
    parser.add_argument("--only", help=f"comma-separated configurations (default: all of {', '.join(CONFIGS)})")
    parser.add_argument("--split", default="0.6,0.2,0.2",
                        help="train,validation,test fractions (default 0.6,0.2,0.2: a larger test partition than "
                             "train's default makes the accuracies less noisy)")
    parser.add_argument("--seeds", default="1337",
                        help="comma-separated seeds: each one is its own split and initialisation (default 1337)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    gpu.enable_memory_growth()
    load = os.getloadavg()[0]
    rows = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="happysad-accuracy-") as work:
            for name in names:
                rows.append({**run(name, CONFIGS[name], args.data, args.split, seed, work), "seed": seed})
                print(f"[accuracy] {name}, seed {seed}: test accuracy {rows[-1]['accuracy']:.3f}", flush=True)
    print(f"\n{args.data}, split {args.split}, {rows[0]['count']} test images per seed; "
          f"load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end on {os.cpu_count()} CPUs\n")
    print("| configuration | seed | test accuracy | macro F1 | test log loss | epochs | train time |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['seed']} | {row['accuracy']:.3f} | {row['f1']:.3f} | {row['log_loss']:.3f} | "
              f"{row['epochs']} | {row['minutes']:.1f} min |")
    print(f"\nmeans over {len(seeds)} seed(s); the difference is paired (same split) against {names[0]}:\n")
    print("| configuration | test accuracy | macro F1 | test log loss | accuracy minus " + names[0] + " | flags |")
    print("|---|---|---|---|---|---|")
    baseline = [row["accuracy"] for row in rows if row["name"] == names[0]]
    for name in names:
        mine = [row for row in rows if row["name"] == name]
        differences = [row["accuracy"] - base for row, base in zip(mine, baseline)]
        spread = f" ± {statistics.stdev(differences):.3f}" if len(differences) > 1 else ""
        print(f"| {name} | {statistics.mean(r['accuracy'] for r in mine):.3f} | "
              f"{statistics.mean(r['f1'] for r in mine):.3f} | {statistics.mean(r['log_loss'] for r in mine):.3f} | "
              f"{statistics.mean(differences):+.3f}{spread} | `{' '.join(CONFIGS[name])}` |")


if __name__ == "__main__":
    main()
