"""python -m happysad.review DATA_DIR: find the photos that are probably in the wrong folder.

    python -m happysad.review data                        # report only: terminal, reports/review.html and .png
    python -m happysad.review data --move-to-suggested    # move confident suspects to the folder the model says
    python -m happysad.review data --quarantine           # or into data/.quarantine/review-*/ (clean --restore undoes)

A model cannot judge a photo it trained on: it has learnt that photo's label, right or wrong. So every image is
scored by a head that never saw it: the nested cross-validation train runs (happysad.crossval: the same folds,
the same logistic-regression head, its penalty chosen inside each fold, and with --arch auto the feature set),
on the stored features of pretrained backbones (happysad.features, shared with train: a review after a train
run, or a second review, skips the backbones). The folds are stratified per class and keep each group of near copies together
(data.make_folds), or a copy in the training folds would vouch for its twin's label.

Two kinds of finding, each image at most one:

    wrong folder   the out-of-fold prediction names another class: suggested = its arg-max, confidence = that
                   probability; listed most confident first
    fits no class  an unsure prediction, or a picture far from every class, by the rules predict and serve
                   mark them with (happysad.marks), on the out-of-fold probabilities and the distances to the
                   class centres of the other folds: --unsure-band and --far-share set them. Listed farthest
                   first. It takes precedence: a suggestion for a picture that looks like no class means nothing

Nothing moves unless asked. --move-to-suggested moves the wrong-folder images with confidence of at least
--min-confidence into the suggested class folder; --quarantine moves them (unless --move-to-suggested took them)
and every image far from every class into DATA_DIR/.quarantine/review-suspect/ or review-no-class/ (a
unsure prediction is listed, never moved: it is a doubt, not a finding). Both write a line to
happysad.clean's manifest before each move, so `python -m happysad.clean DATA_DIR --restore` puts every file
back, and never overwrite a file. A move to another class is recorded with the reason "review-relabel".
"""
from __future__ import annotations

import html
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from happysad import (cache, console, crossval, data, defaults, errors, explain, features, images, marks,
                      model as models, near_copies, quarantine, reports)
from happysad.config import ReviewConfig, add_options, from_command_line
from happysad.files import free_path, sha256_each
from happysad.runtime import enable_memory_growth, tf

THUMBNAIL = 160  # pixels of the longer side of a thumbnail on the page and the contact sheet
JPEG = "image/jpeg"  # the page's thumbnails and heatmaps: photos, where JPEG is a tenth of PNG's size
KINDS = {"wrong-folder": "probably in the wrong folder", "no-class": "fits no class"}
ORDER = {"wrong-folder": "most confident first", "no-class": "farthest first"}
REASONS = {"wrong-folder": "review-suspect", "no-class": "review-no-class"}  # quarantine folder of each kind


@dataclass
class Suspect:
    index: int  # into the file list
    kind: str  # "wrong-folder" or "no-class"
    suggested: int  # the out-of-fold arg-max
    confidence: float  # its probability
    why: str
    far: bool = False  # no-class: far from every class (not only unsure); --quarantine moves these


@dataclass
class Ranking:
    """Out-of-fold scores of every image, and the suspects among them (most certain first)."""

    probabilities: np.ndarray  # (images, classes)
    distances: np.ndarray  # (images,) cosine distance to the nearest class centre of the other folds
    far_limit: float  # beyond it an image fits no class (marks.far_limit)
    folds: np.ndarray  # (images,) the fold that scored each image
    penalty: float  # the head's C chosen on every image: the head the heatmaps are drawn with
    features: str  # the feature set chosen on every image (a backbone, or several joined with '+')
    suspects: list = field(default_factory=list)


def parse_args(argv=None) -> ReviewConfig:
    parser = console.ArgumentParser(prog="python -m happysad.review", description=__doc__.splitlines()[0])
    add_options(parser, ReviewConfig)
    return from_command_line(parser, ReviewConfig, argv)


# -- folds and scores: pure functions of a feature matrix ------------------------------------------------------

def rank(feature_sets: dict, labels, groups, n_classes: int, n_folds: int = 5, seed: int = defaults.SEED,
         far_share: float = marks.FAR_SHARE, band: float = marks.UNSURE_BAND, columns: dict = None,
         class_names=None) -> Ranking:
    """Score every image out of fold and pick the suspects, from features alone (see the module docstring).
    feature_sets: {name: (images, dim)}, each backbone's part unit length (crossval.joined); with several, the
    nested cross-validation chooses, as train's does. columns: {name: the columns "fits no class" measures}
    (features.domain_columns; all by default). class_names: what a fold error calls each class."""
    labels = np.asarray(labels, dtype=int)
    folds = data.make_folds(labels, groups, n_folds, seed, class_names)
    measurement = crossval.cross_validate({name: np.asarray(vectors, np.float32)
                                           for name, vectors in feature_sets.items()}, labels, folds)
    chosen = measurement.final.features
    seen = marks.picked(np.asarray(feature_sets[chosen], np.float32), (columns or {}).get(chosen, ()))
    distances = marks.out_of_fold_distances(seen, labels, folds, n_classes)
    ranking = Ranking(measurement.probabilities, distances, marks.far_limit(distances, far_share), folds,
                      measurement.final.penalty, chosen)
    ranking.suspects = find_suspects(ranking, labels, band)
    return ranking


def find_suspects(ranking: Ranking, labels, band: float = marks.UNSURE_BAND) -> list:
    """Wrong-folder suspects, most confident first, then fits-no-class ones, farthest first."""
    suggested = ranking.probabilities.argmax(axis=1)
    confidence = ranking.probabilities.max(axis=1)
    unsure = marks.unsure(ranking.probabilities, 0.5, band)
    far = ranking.distances > ranking.far_limit
    wrong, lost = [], []
    for i in range(len(labels)):
        if far[i] or unsure[i]:
            why = (f"far from every class (distance {ranking.distances[i]:.2f}, limit {ranking.far_limit:.2f})"
                   if far[i]
                   else f"unsure (highest probability {confidence[i]:.2f})")
            lost.append(Suspect(i, "no-class", int(suggested[i]), float(confidence[i]), why, bool(far[i])))
        elif suggested[i] != labels[i]:
            wrong.append(Suspect(i, "wrong-folder", int(suggested[i]), float(confidence[i]),
                                 f"its folder's class at p {ranking.probabilities[i, labels[i]]:.3f}"))
    wrong.sort(key=lambda s: -s.confidence)
    lost.sort(key=lambda s: -ranking.distances[s.index])
    return wrong + lost


# -- the command: features, ranking, report, moves --------------------------------------------------------------

def thumbnail(path: str) -> np.ndarray:
    """The picture as training decodes it, at most THUMBNAIL pixels on its longer side (uint8 RGB)."""
    pixels = images.decode_pixels(tf.io.read_file(path))
    small = tf.image.resize(pixels, (THUMBNAIL, THUMBNAIL), preserve_aspect_ratio=True, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8).numpy()


def suspect_rows(ranking: Ranking, relative: list, labels, class_names) -> list:
    """One dict per suspect, in ranking order: what the table, the page, the JSON and the moves use."""
    return [{"path": relative[s.index], "kind": s.kind, "folder": class_names[labels[s.index]],
             "suggested": class_names[s.suggested], "confidence": round(s.confidence, 4), "why": s.why,
             "distance": round(float(ranking.distances[s.index]), 4), "far": s.far, "index": s.index}
            for s in ranking.suspects]


def of_kind(rows: list, kind: str, limit: int = None) -> list:
    return [row for row in rows if row["kind"] == kind][:limit]


def terminal_table(rows: list, top: int) -> str:
    """The first `top` suspects of each kind as aligned columns, and how many there are."""
    if not rows:
        return "no suspects: every image fits its folder"
    lines = []
    for kind, title in KINDS.items():
        chosen = of_kind(rows, kind)
        if not chosen:
            lines.append(f"{title}: none")
            continue
        lines.append(f"{title}: {len(chosen)}" + (f" (the first {top} here, all on the page)" if len(chosen) > top
                                                   else ""))
        lines.append(console.table([("path", "folder", "suggested", "confidence", "why")] + [
            (row["path"], row["folder"], row["suggested"], f"{row['confidence']:.3f}", row["why"])
            for row in chosen[:top]], indent="  "))
    return "\n".join(lines)


def looked(heatmaps: dict, row: dict) -> str:
    """The heatmap of the evidence for a suspect's suggested class, where there is one."""
    if row["path"] not in heatmaps:
        return ""
    return reports.image_html(heatmaps[row["path"]], "evidence for " + row["suggested"], JPEG)


def page_sections(rows: list, jpegs: dict, summary: str, heatmaps: dict) -> list:
    """(heading, html) sections of the page: a table per kind, an embedded thumbnail in each row, and beside
    it the heatmap of the evidence for the suggested class where there is one."""
    sections = [("summary", f"<p>{html.escape(summary)}</p>")]
    if not rows:
        return sections + [("suspects", "<p>No suspects: every image fits its folder.</p>")]
    for kind, title in KINDS.items():
        chosen = of_kind(rows, kind)
        body = "".join(
            f'<tr class="suspect"><td>{reports.image_html(jpegs[row["path"]], row["path"], JPEG)}</td>'
            f'<td>{looked(heatmaps, row)}'
            f'</td><td>{html.escape(row["path"])}</td>'
            f'<td>{html.escape(row["folder"])}</td><td>{html.escape(row["suggested"])}</td>'
            f'<td>{row["confidence"]:.3f}</td><td>{html.escape(row["why"])}</td></tr>' for row in chosen)
        table = ("<table><tr><th>picture</th><th>where the model looked</th><th>file</th><th>folder</th>"
                 f"<th>suggested</th><th>confidence</th><th>why</th></tr>{body}</table>" if chosen else "<p>None.</p>")
        sections.append((f"{title} ({ORDER[kind]}): {len(chosen)}", table))
    return sections


def contact_sheet(rows: list, pictures: dict, top: int):
    """The first `top` suspects of each kind as one figure; a figure that says so when there are none."""
    shown = [row for kind in KINDS for row in of_kind(rows, kind, top)]
    return reports.image_grid_figure(
        [pictures[row["path"]] / 255.0 for row in shown],
        [f"{Path(row['path']).name[:24]}\nfolder {row['folder']}\n"
         + (f"says {row['suggested']} ({row['confidence']:.2f})" if row["kind"] == "wrong-folder"
            else f"no class: {row['why'].split(' (')[0]}")
         for row in shown],
        colors=["firebrick" if row["kind"] == "wrong-folder" else "darkorange" for row in shown], columns=6,
        title="suspects: wrong folder (red), fits no class (orange)" if shown else "no suspects")


def move_to_class(data_dir: Path, row: dict, sha256: str, manifest) -> str:
    """Move a suspect into the suggested class folder (same path below it, a free name), recorded first in
    the quarantine's manifest so that `clean --restore` moves it back; returns where it went, relative to data_dir."""
    source = data_dir / row["path"]
    target = free_path(data_dir / row["suggested"] / Path(*Path(row["path"]).parts[1:]))
    quarantine.append_entry(manifest, quarantine.manifest_entry(
        data_dir, row["path"], target, "review-relabel",
        f"in {row['folder']}, the model says {row['suggested']} (p {row['confidence']:.3f})", sha256))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    return target.relative_to(data_dir).as_posix()


def act(data_dir: Path, rows: list, digests: list, config: ReviewConfig) -> list:
    """Carry out --move-to-suggested and --quarantine; [(path, where it went)] in the order done."""
    moves = []
    # An unsure prediction is a doubt, not a finding: only pictures far from every class, and wrong-folder
    # suspects the model is sure of, are moved.
    chosen = [row for row in rows
              if (row["far"] if row["kind"] == "no-class" else row["confidence"] >= config.min_confidence)]
    with quarantine.open_manifest(data_dir) as manifest:
        for row in chosen:
            sha256 = digests[row["index"]]
            if row["kind"] == "wrong-folder" and config.move_to_suggested:
                moves.append((row["path"], move_to_class(data_dir, row, sha256, manifest)))
            elif config.quarantine:
                found = quarantine.Finding(row["path"], row["folder"], REASONS[row["kind"]], row["why"], sha256)
                quarantine.move(data_dir, found, manifest)
                moves.append((row["path"], found.quarantine))
    return moves


def review(config: ReviewConfig) -> dict:
    """Score, rank, report and (when asked) move; returns the report that --json writes."""
    started = time.perf_counter()
    class_names = data.find_classes(config.data)
    files, skipped = data.list_images(config.data, class_names)
    if skipped:
        print(data.skipped_note(skipped, config.data))
    labels = np.asarray(files.labels, dtype=int)
    counts = "  ".join(f"{name}={n}" for name, n in zip(class_names, files.count_per_class(len(class_names))))
    print(f"{len(files)} images in {len(class_names)} classes: {counts}")

    data.check_readable(files.paths, config.data)
    digests = sha256_each(files.paths)
    per_backbone, _ = features.of_backbones(config, files, digests)  # train's stored features serve here
    feature_sets = features.candidate_sets(config.arch, per_backbone)
    columns = {name: features.domain_columns(tuple(name.split("+")), per_backbone) for name in feature_sets}
    seconds = {"features": time.perf_counter() - started}

    mark = time.perf_counter()
    groups = data.near_copy_groups(files, cache.array_store(config.cache, near_copies.FAMILY, near_copies.VERSION),
                                   digests)
    seconds["near_copies"], mark = time.perf_counter() - mark, time.perf_counter()
    ranking = rank(feature_sets, labels, groups, len(class_names), config.folds, config.seed, config.far_share,
                   config.unsure_band, columns, class_names)
    seconds["cross_validation"] = time.perf_counter() - mark
    accuracy = float(np.mean(ranking.probabilities.argmax(axis=1) == labels))
    print(f"cross-validation: {config.folds} folds, each group of near copies in one ({seconds['near_copies']:.1f} s "
          f"to find them), a logistic-regression head per fold, in {seconds['cross_validation']:.1f} s; out-of-fold "
          f"accuracy {accuracy:.3f}" + (f"; chosen: {ranking.features}" if len(feature_sets) > 1 else ""))
    if features.only_learnt_faces(tuple(ranking.features.split("+"))):
        print(f"note: {marks.FACE_FEATURES_CAVEAT}")

    relative = data.relative(files, config.data)
    rows = suspect_rows(ranking, relative, labels, class_names)
    print(terminal_table(rows, config.top))
    summary = (f"{len(files)} images of {config.data}, each scored by a head that never trained on it "
               f"({config.folds}-fold cross-validation on {ranking.features} features, out-of-fold accuracy "
               f"{accuracy:.3f}): "
               f"{len(of_kind(rows, 'wrong-folder'))} probably in the wrong folder, "
               f"{len(of_kind(rows, 'no-class'))} fit no class.")
    write_pictures(config, rows, files, summary, suspect_heatmaps(config, rows, files, class_names,
                                                                 feature_sets[ranking.features], labels, ranking))

    moves = []
    if config.move_to_suggested or config.quarantine:
        moves = act(Path(config.data), rows, digests, config)
        print(f"moved {len(moves)} file(s)" + (f" (undo: {data.clean_command(config.data, '--restore')})"
                                               if moves else "") + "".join(f"\n  {a} -> {b}" for a, b in moves))
    seconds["total"] = time.perf_counter() - started
    print(f"took {seconds['total']:.1f} s: features {seconds['features']:.1f} s, near copies "
          f"{seconds['near_copies']:.1f} s, cross-validation {seconds['cross_validation']:.1f} s")
    report = {
        "data_dir": str(config.data), "classes": class_names, "out_of_fold_accuracy": accuracy,
        "features": ranking.features,
        "settings": config.to_record() | {"far_ratio": marks.FAR_RATIO, "far_limit": ranking.far_limit},
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "images": [{"path": relative[i], "folder": class_names[labels[i]], "fold": int(ranking.folds[i]),
                    "group": int(groups[i]),
                    "probabilities": dict(zip(class_names, np.round(ranking.probabilities[i], 4).tolist())),
                    "distance": round(float(ranking.distances[i]), 4)} for i in range(len(files))],
        "suspects": [{key: value for key, value in row.items() if key != "index"} for row in rows],
        "moved": [{"from": source, "to": target} for source, target in moves],
    }
    if config.json:
        Path(config.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def suspect_heatmaps(config: ReviewConfig, rows: list, files: data.Files, class_names: list, vectors, labels,
                     ranking: Ranking) -> dict:
    """{path: JPEG} of the first --top wrong-folder suspects as the model sees them, with the heatmap of the
    evidence for the suggested class over them (happysad.explain). Drawn with the head trained on every image
    (the suspects included: a picture of where the evidence lies, not a measurement) in the network train
    would save, so the backbone runs only on these few pictures."""
    shown = of_kind(rows, "wrong-folder", config.top)
    if not shown:
        return {}
    head = crossval.fit_head(vectors, labels, ranking.penalty)
    chosen = tuple(ranking.features.split("+"))
    preprocessing = config.preprocessing(chosen)
    network = models.build_linear(chosen, len(class_names), config.image_size, config.weights,
                                  beside=preprocessing.face_beside)
    models.set_head(network, head.coef_, head.intercept_)
    pixels = np.stack([preprocessing.load(files.paths[row["index"]]).numpy() for row in shown])
    heatmaps = explain.heatmaps(network, pixels, [class_names.index(row["suggested"]) for row in shown])
    return {row["path"]: tf.io.encode_jpeg(explain.overlay(picture, heatmap), quality=85).numpy()
            for row, picture, heatmap in zip(shown, pixels, heatmaps)}


def write_pictures(config: ReviewConfig, rows: list, files: data.Files, summary: str, heatmaps: dict) -> None:
    """The page (every suspect, an embedded JPEG thumbnail each, and the heatmap of the first --top wrong-folder
    suspects) and the contact sheet (the first --top)."""
    pictures = {row["path"]: thumbnail(files.paths[row["index"]]) for row in rows}
    jpegs = {path: tf.io.encode_jpeg(pixels, quality=85).numpy() for path, pixels in pictures.items()}
    for path in (config.html, config.png):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    reports.write_page(config.html, f"review of {config.data}", page_sections(rows, jpegs, summary, heatmaps))
    Path(config.png).write_bytes(reports.png_bytes(contact_sheet(rows, pictures, config.top)))
    print(f"page {config.html}, contact sheet {config.png}")


def main(argv=None) -> None:
    config = parse_args(argv)
    try:
        data.find_classes(config.data)  # a wrong folder is said before TensorFlow takes seconds to start
        enable_memory_growth()
        with data.undecodable_explained(config.data):
            review(config)
    except errors.SettingError as error:  # the folder, the network or the devices, named as settings
        sys.exit(f"happysad.review: error: {errors.for_command(error)}")


if __name__ == "__main__":
    main()
