"""The quarantine beside the data: where clean and review move files, and how --restore puts them back.

Quarantine: DATA_DIR/.quarantine/<reason>/<class>/<file>. It stays beside the data so moves are atomic renames
on one filesystem, and training never sees it because class folders are the non-hidden subfolders.
DATA_DIR/.quarantine/manifest.jsonl gets one JSON line per file, flushed to disk *before* the file is touched,
recording where it came from, where it goes, why, its sha256 and any converted copy; if a run is
interrupted every file is still either in place or in quarantine, and `clean --restore` reads the manifest to
put quarantined files back (never over an existing file) and remove the converted copies written beside
them, only while they are byte-identical to what was written.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from happysad import files
from happysad.data import DataError

QUARANTINE = ".quarantine"
MANIFEST = "manifest.jsonl"


@dataclass
class Finding:
    """A file that leaves its class folder. Paths are relative to DATA_DIR with "/" separators."""

    path: str
    label: str
    reason: str
    detail: str
    sha256: str
    convert_to: str = ""  # mis-extended only: extension of the readable copy to write
    quarantine: str = ""  # filled in when the file has been moved
    converted: str = ""  # filled in when the readable copy has been written


@dataclass
class Restored:
    restored: list = field(default_factory=list)  # original paths put back
    removed: list = field(default_factory=list)  # converted copies removed
    skipped: list = field(default_factory=list)  # "path: why" for what was left alone


def manifest_entry(data_dir: Path, original: str, target: Path, reason: str, detail: str, sha256: str,
                   copy_path: Path = None, copy_data: bytes = None) -> dict:
    """The manifest line of one move (by clean, or by happysad.review): what --restore reads to undo it."""
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "original": original,
            "quarantine": target.relative_to(data_dir).as_posix(), "reason": reason, "detail": detail,
            "sha256": sha256, "converted": copy_path and copy_path.relative_to(data_dir).as_posix(),
            "converted_sha256": copy_data and hashlib.sha256(copy_data).hexdigest()}


def append_entry(manifest, entry: dict):
    """One JSON line, on disk before the move it describes: an interrupted run can always be undone."""
    manifest.write(json.dumps(entry) + "\n")
    manifest.flush()
    os.fsync(manifest.fileno())


def move(data_dir: Path, found: Finding, manifest, copy_data: bytes = None):
    """Write the readable copy (copy_data, if any, beside the file with found.convert_to's extension), then move
    the file into DATA_DIR/.quarantine/<reason>/; both go into the manifest first."""
    source = data_dir / found.path
    target = files.free_path(data_dir / QUARANTINE / found.reason / found.path)
    copy_path = files.free_path(source.with_suffix(found.convert_to)) if copy_data is not None else None
    append_entry(manifest, manifest_entry(data_dir, found.path, target, found.reason, found.detail, found.sha256,
                                          copy_path, copy_data))
    if copy_path:
        files.write_atomic(copy_path, copy_data)
        found.converted = copy_path.relative_to(data_dir).as_posix()
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    found.quarantine = target.relative_to(data_dir).as_posix()


def open_manifest(data_dir: Path):
    """The manifest, opened to append entries (by clean, and by happysad.review for its moves)."""
    path = Path(data_dir) / QUARANTINE / MANIFEST
    path.parent.mkdir(exist_ok=True)
    manifest = open(path, "a", encoding="utf-8")
    if manifest.tell() and not path.read_bytes().endswith(b"\n"):
        manifest.write("\n")  # end a line torn by a killed run, so it cannot swallow the next entry
    return manifest


def read_manifest(path: Path) -> list:
    """The manifest's entries; a torn last line (a run killed while writing it) was never acted on."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"happysad: ignoring an unreadable manifest line: {line[:80]!r}", file=sys.stderr)
    return entries


def restore(data_dir, dry_run: bool = False) -> Restored:
    """Undo clean: move quarantined files back and remove the converted copies it wrote, newest first.

    Never overwrites: a file now at an original path is left alone and its entry kept for a later try.
    A converted copy is removed only once its original is back and only while it still has the exact bytes
    clean wrote. Records that are fully done leave the manifest; an empty quarantine folder is removed.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist or is not a folder")
    manifest = data_dir / QUARANTINE / MANIFEST
    result = Restored()
    if not manifest.exists():
        return result
    remaining = []
    for entry in reversed(read_manifest(manifest)):
        original, moved = data_dir / entry["original"], data_dir / entry["quarantine"]
        if os.path.lexists(moved) and os.path.lexists(original):  # lexists: a link to nothing is a file here
            result.skipped.append(f"{entry['original']}: a file exists there now; left at {entry['quarantine']}")
            remaining.append(entry)
            continue
        if os.path.lexists(moved):
            back = moved  # where the original's bytes are (still, in a dry run)
            if not dry_run:
                original.parent.mkdir(parents=True, exist_ok=True)
                os.replace(moved, original)
                back = original
            result.restored.append(entry["original"])
        elif os.path.lexists(original):
            back = original  # never moved (the run stopped first) or already put back by a newer entry
        else:
            result.skipped.append(f"{entry['original']}: missing from {entry['quarantine']}")
            remaining.append(entry)
            continue
        converted = entry["converted"] and data_dir / entry["converted"]
        if converted and converted.exists():
            if files.sha256(back) == entry["sha256"] and files.sha256(converted) == entry["converted_sha256"]:
                if not dry_run:
                    converted.unlink()
                result.removed.append(entry["converted"])
            else:
                result.skipped.append(f"{entry['converted']}: it or its original changed since clean; kept")
    if dry_run:
        return result
    if remaining:
        files.write_atomic(manifest, "".join(json.dumps(entry) + "\n" for entry in reversed(remaining)))
    else:
        manifest.unlink()
        for root, _, _ in sorted(os.walk(data_dir / QUARANTINE), key=lambda item: -len(item[0])):
            if not os.listdir(root):
                os.rmdir(root)
    return result
