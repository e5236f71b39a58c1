"""TensorFlow loads late and once: commands answer --help without it, and loading applies the project's
start-up choices (oneDNN default, no C++ chatter) wherever it first happens."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("sample", "clean", "train", "predict", "evaluate", "review", "runs", "serve", "export")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    environment.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          timeout=300)


def test_importing_the_package_and_asking_every_command_for_help_loads_no_tensorflow_and_no_matplotlib():
    result = run_python(f"""
import os, runpy, sys
before = dict(os.environ)
import happysad
unchanged_by_package = dict(os.environ) == before
for name in {COMMANDS!r}:
    sys.argv = [name, "--help"]
    try:
        runpy.run_module("happysad." + name, run_name="__main__")
    except SystemExit as stop:
        assert stop.code in (0, None), (name, stop.code)
import inspect
from happysad.runtime import keras, tf
inspect.unwrap(tf)  # introspection (pytest's fixture scan does this) must not load it either
hasattr(keras, "_mock_name")
print(sorted(m for m in ("tensorflow", "keras", "tensorboard", "matplotlib") if m in sys.modules))
tensorflow_settings = sorted(key for key in {{*os.environ, *before}}
                             if key.startswith("TF_") and os.environ.get(key) != before.get(key))
print(unchanged_by_package, tensorflow_settings)
""")
    assert result.returncode == 0, result.stderr
    *helps, loaded, environment = result.stdout.strip().splitlines()
    assert loaded == "[]"
    assert environment == "True []"  # (OpenCV's import adds to LD_LIBRARY_PATH: not the project's doing)
    assert sum(line.startswith("usage: python -m happysad.") for line in helps) == len(COMMANDS)


def test_first_use_loads_tensorflow_quietly_with_onednn_on_unless_the_user_chose():
    code = """
import os
from happysad.runtime import tf
print(int(tf.constant(2) * 3), os.environ["TF_ENABLE_ONEDNN_OPTS"])
"""
    default = run_python(code)
    assert default.stdout.split() == ["6", "1"]
    assert "cuda" not in default.stderr.lower() and "onednn" not in default.stderr.lower()
    assert run_python(code, TF_ENABLE_ONEDNN_OPTS="0").stdout.split() == ["6", "0"]
