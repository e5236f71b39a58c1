"""The package installs with pip from the repository's own files and runs from any folder."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pip_install_gives_commands_that_run_from_any_folder(tmp_path):
    """`pip install .` (into a folder of its own, with this environment's packages as the dependencies, so
    nothing is downloaded); from another folder, `python -m happysad.sample` then runs the installed copy,
    which has its web page's files and the package's one version, and the console script works too."""
    # Built from a copy of what the package is made of: pip builds in the source folder, and a build/ left in
    # the repository would keep (and ship) modules that no longer exist.
    source = tmp_path / "source"
    shutil.copytree(REPO / "happysad", source / "happysad", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, cwd=tmp_path, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    found = subprocess.run([sys.executable, "-c", "import happysad, importlib.metadata, pathlib; "
                            "p = pathlib.Path(happysad.__file__).parent; print(p); "
                            "print((p / 'static' / 'index.html').is_file()); "
                            "print(importlib.metadata.version('happysad') == happysad.__version__)"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert Path(found[0]).resolve().is_relative_to(target.resolve()) and found[1:] == ["True", "True"]
    subprocess.run([sys.executable, "-m", "happysad.sample", "faces", "--per-class", "3", "--size", "32"],
                   cwd=elsewhere, env=env, check=True, capture_output=True)
    assert len(list((elsewhere / "faces" / "sad").iterdir())) == 3
    usage = subprocess.run([str(target / "bin" / "happysad-train"), "--help"], cwd=elsewhere, env=env, check=True,
                           capture_output=True, text=True).stdout
    assert usage.startswith("usage:") and "--arch" in usage
