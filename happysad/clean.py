"""Move the files that would break training, or silently poison it, out of the class folders. Deletes nothing.

    python -m happysad.clean data              # check data/<class>/..., quarantine the bad files
    python -m happysad.clean data --dry-run    # only report
    python -m happysad.clean data --restore    # put every quarantined file back

Every file a class folder holds (recursively, skipping hidden names like the training loader) is read and
decoded once, on every core. A file in a format training reads (JPEG, PNG, GIF, BMP) is decoded by
happysad.images.decode_pixels, the very decoder training uses, so nothing that passes can crash an epoch
halfway (OpenCV forgives more: it opens truncated JPEGs that TensorFlow rejects). Any other file is decoded by
OpenCV, which reads the formats TensorFlow cannot and so makes converting them possible. A file leaves its
folder for one of these reasons:

    unreadable      the file cannot be read: a link to nothing, or no permission to read it
    empty           zero bytes
    not-image       no image signature, and OpenCV cannot read it (text, HTML, SVG...)
    corrupt         an image that a decoder rejects: truncated or damaged
    too-small       smallest side under --min-size pixels
    mis-extended    its content disagrees with its extension, or its format is one training skips (WebP,
                    TIFF, AVIF, no extension...). A readable copy is written next to it first: the same bytes
                    under the right extension where TensorFlow reads them, else a lossless PNG re-encoded by
                    OpenCV (8-bit colour, as training sees it)
    duplicate       the same bytes as another file of the same class (the first in sorted order stays,
                    preferring a file over a link to one, then a file that needs no conversion); it would
                    also leak across the splits
    label-conflict  the same image filed under two classes: no way to know which label is right, so all
                    copies go. The same bytes, or a near copy: the same photo resized, re-encoded, lightly
                    cropped or brightened (happysad.near_copies), with every other copy named in the detail

"The same bytes" compares what training would read: the file itself, or the PNG copy it would get. Near copies
within one class are not wrong and stay where they are; the summary lists them (training keeps each group in
one partition of the split, see happysad.data.split). The fingerprint comes from the decode that checks the
file, so finding near copies costs no second read.

Quarantine (happysad.quarantine, shared with review): DATA_DIR/.quarantine/<reason>/<class>/<file>, each move
written to its manifest before it happens, so --restore can always put every file back.

Python's imghdr, which the classic tutorial uses to filter images, returns None for valid JPEGs whose first
marker is not JFIF, Exif or a quantisation table (Adobe APP14, an ICC profile, a comment...), so the tutorial
deletes good photos. Here any file starting with the JPEG start-of-image bytes FF D8 FF counts as a JPEG.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from happysad import cache, console, images, near_copies, quarantine
from happysad.quarantine import QUARANTINE, Finding
from happysad.data import DataError, class_folders as subfolders, clean_command, walk_class
from happysad.runtime import enable_memory_growth, tf

with warnings.catch_warnings():
    # Python 3.11 and 3.12 warn that imghdr leaves the standard library in 3.13 (the standard-imghdr package
    # provides it from then on).
    warnings.simplefilter("ignore", DeprecationWarning)
    import imghdr

REASONS = ("unreadable", "empty", "not-image", "corrupt", "too-small", "mis-extended", "duplicate", "label-conflict")


@dataclass
class Summary:
    data_dir: str
    dry_run: bool
    min_size: int
    files: dict  # class -> number of files checked
    findings: list
    seconds: float
    near_copies: list = field(default_factory=list)  # groups of same-class near copies left in place: [[path]]
    hidden: list = field(default_factory=list)  # hidden files and folders skipped, as training skips them


def class_folders(data_dir) -> list:
    """The class names, found as the training loader finds them (happysad.data); at least one."""
    classes = subfolders(data_dir)
    if not classes:
        raise DataError(f"{data_dir} has no class folders (expected {data_dir}/<class>/<images>)")
    return classes


def list_files(data_dir) -> tuple:
    """({class: [relative paths]} of every non-hidden file under each class folder, recursively, sorted;
    the hidden files and folders passed over, like .DS_Store: training skips them too)."""
    data_dir = Path(data_dir)
    files, hidden = {}, []
    for label in class_folders(data_dir):
        found, passed_over = walk_class(data_dir / label)
        files[label] = sorted(Path(path).relative_to(data_dir).as_posix() for path in found)
        hidden += [Path(path).relative_to(data_dir).as_posix() for path in passed_over]
    return files, hidden


def sniff(data: bytes):
    """The image format named by the first bytes ("jpeg", "png", "webp", "tiff"...), or None.

    images.FORMATS for the formats training reads, imghdr (to name it) for any other. Not imghdr for all:
    it only knows JPEGs that open with JFIF, Exif or a quantisation table, while all JPEGs start with SOI
    (FF D8) followed by the FF of their first marker.
    """
    trainable = images.trainable_format(data)
    return trainable.kind if trainable else imghdr.what(None, h=data)


def training_pixels(data: bytes):
    """The uint8 RGB array training's decoder (happysad.images) makes of the bytes, or None if it rejects them.

    One eager op: it runs without the GIL, and costs less to call than a traced tf.function.
    """
    try:
        return images.decode_pixels(data).numpy()
    except tf.errors.OpError:
        return None


def readable_copy(data: bytes, pixels=None) -> bytes:
    """The bytes to train on: the file itself if TensorFlow reads its format, else a PNG re-encoded by OpenCV.

    OpenCV decodes to BGR and its encoder expects BGR, so the colours in the PNG are right.
    """
    if images.trainable_format(data):
        return data
    if pixels is None:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok, "OpenCV failed to encode a PNG"
    return encoded.tobytes()


def check_file(data_dir: Path, path: str, label: str, min_size: int) -> tuple:
    """Check one file: (its Finding or None if it trains as it is, sha256 of the bytes training would read,
    near-copy fingerprint of the pixels training would see).

    The last two are "" and None for files that cannot be used at all; duplicates are compared on the sha256,
    near copies on the fingerprint.
    """
    try:
        data = (data_dir / path).read_bytes()
    except OSError as error:
        return Finding(path, label, "unreadable", f"cannot be read ({error.strerror})", ""), "", None
    sha256 = hashlib.sha256(data).hexdigest()

    def finding(reason, detail, convert_to=""):
        return Finding(path, label, reason, detail, sha256, convert_to)

    if not data:
        return finding("empty", "zero bytes"), "", None
    kind, trainable = sniff(data), images.trainable_format(data)
    name = kind.upper() if kind else "image"
    pixels = None
    if trainable:
        rgb = training_pixels(data)
        if rgb is None:
            return finding("corrupt", f"{name} that TensorFlow cannot decode (truncated or damaged)"), "", None
    else:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if pixels is None and kind is None:
            return finding("not-image", "no image signature, and OpenCV cannot read it"), "", None
        if pixels is None:
            return finding("corrupt", f"{name} that OpenCV cannot decode, so it cannot be converted"), "", None
        rgb = pixels[..., ::-1]  # OpenCV decodes to BGR
    height, width = rgb.shape[:2]
    if min(height, width) < min_size:
        return finding("too-small", f"{width}x{height} pixels, under --min-size {min_size}"), "", None
    fingerprint = near_copies.fingerprint(rgb)
    extension = Path(path).suffix.lower()
    named = f"named {extension}" if extension else "without an extension"
    if trainable:
        if extension in trainable.extensions:
            return None, sha256, fingerprint
        return finding("mis-extended", f"{name} {named}", trainable.extensions[0]), sha256, fingerprint
    copy = readable_copy(data, pixels)
    why = f"{name} {named}, a format training skips" if kind else f"image {named} that training cannot read"
    return finding("mis-extended", why, ".png"), hashlib.sha256(copy).hexdigest(), fingerprint


PROGRESS_FROM = 500  # files: fewer are checked in a few seconds


def scan(data_dir, listing: dict, min_size: int = 32, progress: bool = False) -> tuple:
    """(every file of `listing` (list_files) that has to leave its class folder, as Findings sorted by path,
    the groups of same-class near copies that stay, as sorted lists of paths).

    Reads, never writes.
    """
    data_dir = Path(data_dir)
    files = [(path, label) for label, paths in listing.items() for path in paths]
    results = []
    # TensorFlow's and OpenCV's decoders release the GIL, so threads keep every core busy.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool, \
            console.progress(len(files), "file", PROGRESS_FROM if progress else math.inf) as shown:
        for result in pool.map(lambda item: check_file(data_dir, item[0], item[1], min_size), files):
            results.append(result)
            shown.update(1)

    findings = {path: found for (path, _), (found, _, _) in zip(files, results) if found}
    # (path, label, sha256 of the bytes training would read, fingerprint) of every file training can use
    usable = [(path, label, key, fingerprint) for (path, label), (_, key, fingerprint) in zip(files, results) if key]
    same_bytes = defaultdict(list)
    for path, label, key, _ in usable:
        same_bytes[key].append((path, label))
    for key, group in same_bytes.items():
        if len({label for _, label in group}) > 1:
            for path, label in group:
                others = ", ".join(other for other, _ in group if other != path)
                mark(findings, path, label, key, "label-conflict", f"same image also in {others}")
        elif len(group) > 1:
            (kept, _), *copies = sorted(group, key=lambda item: ((data_dir / item[0]).is_symlink(),
                                                                 item[0] in findings, item[0]))
            for path, label in copies:
                mark(findings, path, label, key, "duplicate", f"same image as {kept}")
    near = mark_near_copies(findings, usable)
    return sorted(findings.values(), key=lambda found: found.path), near


def mark_near_copies(findings: dict, usable: list) -> list:
    """Make every member of a group of near copies that spans classes a label-conflict; return the groups
    within one class, as sorted lists of the paths that stay (not quarantined as a duplicate).

    A member that is already a label-conflict (the same bytes in another class) keeps its detail.
    """
    # Stored by the sha256 of what training reads, in the store train and review use: a second run of any of
    # them checks only the pairs, and decodes only the files, that it has not seen.
    store = cache.array_store("auto", near_copies.FAMILY, near_copies.VERSION)
    digests = [key for _, _, key, _ in usable]
    for digest, (*_, fingerprint) in zip(digests, usable):
        if fingerprint is not None and near_copies.stored_fingerprint(store, digest) is None:
            near_copies.keep(store, digest, fingerprint)
    kept = []
    found = near_copies.groups([fingerprint for *_, fingerprint in usable], store=store, digests=digests)
    for indices in near_copies.members(found):
        group = [usable[i] for i in indices]
        if len({label for _, label, _, _ in group}) > 1:
            for path, label, key, _ in group:
                if path not in findings or findings[path].reason != "label-conflict":
                    others = ", ".join(other for other, *_ in group if other != path)
                    mark(findings, path, label, key, "label-conflict", f"near copy of {others}")
        else:
            staying = [path for path, *_ in group if path not in findings or findings[path].reason == "mis-extended"]
            if len(staying) > 1:
                kept.append(sorted(staying))
    return sorted(kept)


def mark(findings: dict, path: str, label: str, key: str, reason: str, detail: str):
    """Give a usable file a duplicate/conflict reason: update its Finding, or add a new one.

    A file with no Finding yet trains as it is, so key (the hash of what training reads) is its own sha256.
    """
    found = findings.setdefault(path, Finding(path, label, reason, detail, key))
    found.reason, found.detail, found.convert_to = reason, detail, ""


def clean(data_dir, min_size: int = 32, dry_run: bool = False, progress: bool = False) -> Summary:
    """Scan DATA_DIR and, unless dry_run, quarantine every finding (writing readable copies first)."""
    started = time.perf_counter()
    data_dir = Path(data_dir)
    listing, hidden = list_files(data_dir)
    files = {label: len(paths) for label, paths in listing.items()}
    findings, near = scan(data_dir, listing, min_size, progress)
    if findings and not dry_run:
        with quarantine.open_manifest(data_dir) as manifest:
            for found in findings:
                copy = readable_copy((data_dir / found.path).read_bytes()) if found.convert_to else None
                quarantine.move(data_dir, found, manifest, copy)
        # A mis-extended near copy stays as its readable copy, under the name the move gave it.
        renamed = {found.path: found.converted for found in findings if found.converted}
        near = sorted(sorted(renamed.get(path, path) for path in group) for group in near)
    return Summary(str(data_dir), dry_run, min_size, files, findings, time.perf_counter() - started, near, hidden)


def counts(summary: Summary) -> tuple:
    """({class: row}, totals row); a row counts "files", "kept" (untouched), each reason and "converted"."""
    table = {label: {"files": n, "kept": n, **dict.fromkeys(REASONS, 0), "converted": 0}
             for label, n in summary.files.items()}
    for found in summary.findings:
        row = table[found.label]
        row["kept"] -= 1
        row[found.reason] += 1
        row["converted"] += bool(found.convert_to)
    totals = {key: sum(row[key] for row in table.values()) for key in ("files", "kept", *REASONS, "converted")}
    return table, totals


def report(summary: Summary) -> str:
    """The human-readable summary: one line per finding, then a class x reason table."""
    lines = []
    for found in summary.findings:
        action = f"; readable copy {found.converted or 'as ' + found.convert_to}" if found.convert_to else ""
        lines.append(f"  {found.path}: {found.reason}: {found.detail}{action}")
    if summary.near_copies:
        copies = sum(len(group) for group in summary.near_copies)
        lines.append(f"near copies kept (same class): {len(summary.near_copies)} groups, {copies} files")
        lines += ["  " + ", ".join(group) for group in summary.near_copies]
    table, totals = counts(summary)
    columns = ["files", "kept"] + [reason for reason in REASONS if totals[reason]] + ["converted"]
    rows = [*table.items(), ("total", totals)]
    width = max(len(label) for label, _ in rows)
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{c:>6}" for c in columns))
    for label, row in rows:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{row[c]:>{max(6, len(c))}}" for c in columns))
    total = sum(summary.files.values())
    moved = len(summary.findings)
    rate = total / max(summary.seconds, 1e-9)
    lines.append(f"checked {total} files in {summary.seconds:.1f} s ({rate:.0f} files/s)")
    if summary.hidden:
        lines.append(f"skipped {len(summary.hidden)} hidden file(s) or folder(s) (e.g. {summary.hidden[0]}): "
                     "names starting with '.' are not images to training either")
    quarantine_dir = Path(summary.data_dir) / QUARANTINE
    if not moved:
        lines.append("nothing to clean")
    elif summary.dry_run:
        lines.append(f"dry run: {moved} files would move to {quarantine_dir}; nothing was changed")
    else:
        lines.append(f"moved {moved} files to {quarantine_dir} (undo: "
                     f"{clean_command(summary.data_dir, '--restore')})")
        if totals["converted"]:
            lines.append(f"{totals['kept'] + totals['converted']} images left to train on: {totals['kept']} kept "
                         f"as they were and {totals['converted']} readable copies")
    return "\n".join(lines)


def as_json(summary: Summary) -> dict:
    table, totals = counts(summary)
    return {"data_dir": summary.data_dir, "quarantine": str(Path(summary.data_dir) / QUARANTINE),
            "dry_run": summary.dry_run, "min_size": summary.min_size, "seconds": round(summary.seconds, 3),
            "classes": table, "totals": totals, "findings": [asdict(found) for found in summary.findings],
            "near_copies": summary.near_copies, "hidden": summary.hidden}


def main(argv=None):
    parser = console.ArgumentParser(prog="python -m happysad.clean", description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path, help="folder with one subfolder of images per class")
    parser.add_argument("--min-size", type=int, default=32,
                        help="quarantine images whose smallest side is under this many pixels (default 32)")
    parser.add_argument("--dry-run", action="store_true", help="report what would happen; change nothing")
    parser.add_argument("--restore", action="store_true",
                        help="put every quarantined file back and remove the converted copies")
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON to PATH ('-': stdout only)")
    args = parser.parse_args(argv)
    if args.min_size < 1:
        parser.error(f"--min-size must be at least 1, got {args.min_size}")
    try:
        if not args.restore:  # restore makes the class folders it needs
            class_folders(args.data_dir)  # a wrong folder is said before TensorFlow takes seconds to start
        enable_memory_growth()
        if args.restore:
            result = quarantine.restore(args.data_dir, args.dry_run)
            data = asdict(result)
            text = (f"{'would restore' if args.dry_run else 'restored'} {len(result.restored)} files, "
                    f"{'would remove' if args.dry_run else 'removed'} {len(result.removed)} converted copies"
                    + "".join(f"\n  skipped {line}" for line in result.skipped))
        else:
            summary = clean(args.data_dir, args.min_size, args.dry_run, progress=True)
            data, text = as_json(summary), report(summary)
    except DataError as error:
        raise SystemExit(f"happysad.clean: error: {error}") from None

    if args.json == "-":
        print(json.dumps(data, indent=2))
        return
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
