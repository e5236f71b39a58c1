"""Writing a file so that no reader ever sees half of it, a free name, and a file's sha256: one implementation each.

Every file happysad writes over something a user relies on (a model's record, clean's manifest and converted
copies, stored features) goes through write_atomic: the bytes go to a hidden temporary file beside the target
(same filesystem, so the rename is atomic), reach the disk (fsync), and only then replace the target. A crash
at any moment leaves the old file or the new one, never a mix. Hidden, because training and clean skip names
starting with "." should a killed run leave the temporary file behind. free_path finds a name that no file
has yet, for commands that add files beside a user's own (quarantine moves, heatmaps).
"""
import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def read_umask() -> int:
    """The process's umask, once, at import: from /proc on Linux; elsewhere by setting it and setting it back
    (another thread creating a file in that instant would get the wrong mode)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = read_umask()


def mode_for(path: Path) -> int:
    """The permission bits a file written at path should get: those of the file it replaces, else those a
    file written with open() gets."""
    return path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~UMASK


def write_atomic(path, content, durable: bool = True) -> None:
    """Write bytes or text to path atomically; durable=False skips the fsync (for caches: a lost file is
    recomputed, so only atomicity matters there)."""
    path = Path(path)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file readable by its owner alone; give it the mode a file written with open() gets
        # (or the one it replaces), so a record stays readable by whoever can read its model.
        os.chmod(temp, mode_for(path))
        with os.fdopen(handle, "wb") as out:
            out.write(content.encode() if isinstance(content, str) else content)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:  # including Ctrl-C: the temporary file is ours and holds nothing the user had
        Path(temp).unlink(missing_ok=True)
        raise


def sha256(path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def sha256_each(paths) -> list:
    """sha256 of each file's bytes, read on every core: what the stores find a moved or renamed file by."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        return list(pool.map(sha256, paths))


def free_path(path: Path) -> Path:
    """path, or path-1, path-2... with the same extension: the first name no file has yet."""
    candidate, number = path, 0
    while os.path.lexists(candidate):  # a link to nothing holds its name too
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate
