"""Feature sets and the figure train prints, over many outer splits, on stored features: seconds a split.

    python benchmarks/feature_sets.py --data ../shared/datasets/happysad-web [--seeds 12] [--test-fraction 0.47]
        [--folds 5] [--sets auto,mobilenet,expression,mobilenet+expression] [--weights-dir ../shared/weights]

Why: on a few hundred unseen photos one split's accuracy moves by ±2 points, and the printed figure by as much,
so the three seeds of accuracy.py (which runs every command in full) cannot tell a 2-point change from noise.
This runs what train runs once the features are stored, on as many outer splits as asked, cut as accuracy.py
cuts them (its clean copy, KERAS_HOME and outer_split): the nested cross-validation (crossval.cross_validate),
the head the data chose on every photo of the train side, and the domain of "fits no class" (marks). It scores
that head on the outer test side directly: the saved network gives the head's probabilities
(tests/test_features.py), so this is what the command would score. `auto` is the choice among
model.AUTO_BACKBONES alone and together, as --arch auto makes it; the other sets are one candidate each, of
any backbones whose weights Keras' cache folder (KERAS_HOME, made from --weights-dir) holds.

Prints per set the means over seeds: the printed (out-of-fold) accuracy, the unseen accuracy and recalls, the
gap between the two (mean and standard deviation over seeds), the share of unseen photos and of pictures
unlike any photo (sample --unlike; and with --unlike-dir, of real pictures of other things) marked "fits no
class", and what the data chose.
"""
import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402  (the benchmark beside this one: its clean copy, KERAS_HOME and outer split)

from happysad import calibration, cache, crossval, data, features, marks, model as models, near_copies, sample  # noqa: E402
from happysad.config import TrainConfig  # noqa: E402
from happysad.files import sha256_each  # noqa: E402


def candidates(name: str) -> list:
    if name == models.AUTO:
        return features.auto_candidates(models.AUTO_BACKBONES)
    return [name]


def features_of(config: TrainConfig, paths: list, labels: list) -> dict:
    """{backbone: (images, dim)} of every backbone the configuration names, as train computes and stores them."""
    files = data.Files(paths, labels)
    return features.of_backbones(config, files, sha256_each(paths))[0]


def measure(per_backbone: dict, unlike: dict, names: list, labels, folds, train_side, test_side) -> dict:
    """One outer split: the nested cross-validation on the train side, then the chosen head on the test side.
    unlike: {kind: {backbone: features}} of pictures unlike any photo."""
    feature_sets = {name: crossval.joined(per_backbone, name.split("+")) for name in names}
    seen_labels = labels[train_side]
    measurement = crossval.cross_validate({name: v[train_side] for name, v in feature_sets.items()}, seen_labels,
                                          folds)
    choice = measurement.final
    chosen = feature_sets[choice.features]
    head = crossval.fit_head(chosen[train_side], seen_labels, choice.penalty)
    probabilities = calibration.apply(choice.scaling, head.predict_proba(chosen[test_side]))
    predicted = (probabilities[:, 1] >= choice.threshold).astype(int)
    truth = labels[test_side]
    domain = marks.out_of_fold_domain(chosen[train_side], seen_labels, folds, 2, marks.FAR_SHARE,
                                      features.domain_columns(tuple(choice.features.split("+")), per_backbone))
    return {"printed": float(np.mean(measurement.predicted == seen_labels)),
            "unseen": float(np.mean(predicted == truth)),
            "recall": [float(np.mean(predicted[truth == c] == c)) for c in (0, 1)],
            "far_photos": float(domain.far(chosen[test_side])[1].mean()),
            "far_unlike": {kind: float(domain.far(crossval.joined(pictures, choice.features.split("+")))[1].mean())
                           for kind, pictures in unlike.items()},
            "choice": choice.features}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="a labelled folder of two classes (not modified)")
    parser.add_argument("--seeds", type=int, default=12, help="outer splits, seeds 1..N")
    parser.add_argument("--test-fraction", type=float, default=0.47)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--sets", default="auto,mobilenet,expression,mobilenet+expression")
    parser.add_argument("--unlike-dir", type=Path,
                        help="a folder of real pictures unlike any photo (benchmarks/unlike_pictures.py writes one)")
    parser.add_argument("--weights-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "weights")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="happysad-feature-sets-") as folder:
        work = Path(folder)
        cleaned = accuracy.clean_copy(args.data, work)
        os.environ["KERAS_HOME"] = str(accuracy.keras_home(args.weights_dir.resolve(), work))
        named = {name: None for s in args.sets.split(",") for c in candidates(s) for name in c.split("+")}
        config = TrainConfig.build(data=str(cleaned), arch="+".join(named), cache=f"disk:{work / 'cache'}")
        class_names = data.find_classes(cleaned)
        files, _ = data.list_images(cleaned, class_names)
        groups = data.near_copy_groups(files, cache.array_store(config.cache, near_copies.FAMILY, near_copies.VERSION))
        per_backbone = features_of(config, files.paths, files.labels)
        sample.write_unlike(work / "unlike", per_kind=20, size=256)
        unlike_paths = sorted(str(path) for path in (work / "unlike").rglob("*.jpg"))
        unlike = {"generated": features_of(config, unlike_paths, [0] * len(unlike_paths))}
        if args.unlike_dir:
            real_paths = sorted(str(path) for path in args.unlike_dir.iterdir() if not path.name.startswith("."))
            unlike["real"] = features_of(config, real_paths, [0] * len(real_paths))
        labels, index = np.asarray(files.labels), {path: i for i, path in enumerate(files.paths)}
        rows = {name: [] for name in args.sets.split(",")}
        for seed in range(1, args.seeds + 1):
            train_files, test_files = accuracy.outer_split(files, groups, args.test_fraction, seed)
            train_side = np.array([index[path] for path in train_files.paths])
            test_side = np.array([index[path] for path in test_files.paths])
            folds = data.make_folds(labels[train_side], [groups[i] for i in train_side], args.folds, seed,
                                    class_names)
            for name in rows:
                rows[name].append(measure(per_backbone, unlike, candidates(name), labels, folds, train_side,
                                          test_side))
                print(f"[feature_sets] seed {seed} {name}: chose {rows[name][-1]['choice']}, unseen "
                      f"{rows[name][-1]['unseen']:.3f}, printed {rows[name][-1]['printed']:.3f}", file=sys.stderr)
    print(f"{args.data}: {len(files.paths)} photos, outer test fraction {args.test_fraction}, seeds 1-{args.seeds}, "
          f"{args.folds} folds\n")
    print(f"| feature set | unseen accuracy | recall {class_names[0]} / {class_names[1]} | printed | gap, mean (sd) "
          f"| fits no class: photos / {' / '.join(unlike)} unlike pictures | chose |")
    print("|---" * 7 + "|")
    for name, found in rows.items():
        gaps = [100 * (row["printed"] - row["unseen"]) for row in found]
        spread = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
        chose = ", ".join(f"{choice} ×{sum(r['choice'] == choice for r in found)}"
                          for choice in sorted({row["choice"] for row in found}))
        far_unlike = " / ".join(f"{statistics.mean(r['far_unlike'][kind] for r in found):.3f}" for kind in unlike)
        print(f"| {name} | {statistics.mean(r['unseen'] for r in found):.3f} | "
              f"{statistics.mean(r['recall'][0] for r in found):.3f} / {statistics.mean(r['recall'][1] for r in found):.3f} | "
              f"{statistics.mean(r['printed'] for r in found):.3f} | {statistics.mean(gaps):+.1f} ({spread:.1f}) | "
              f"{statistics.mean(r['far_photos'] for r in found):.3f} / {far_unlike} | "
              f"{chose} |")


if __name__ == "__main__":
    main()
