"""python -m happysad.export --format keras|savedmodel|tflite: the trained model in a format other runtimes load.

    python -m happysad.export --format keras                       # models/happysad-keras.keras
    python -m happysad.export --format savedmodel                  # models/happysad-savedmodel/ (TF Serving)
    python -m happysad.export --format tflite --quantize float16   # models/happysad-tflite-float16.tflite

Each export gets a copy of the model's record beside it (record.sidecar_path: models/happysad-keras.json ...)
naming the export's file and sha256, so predict and serve load it with its labels and threshold like the .h5:
`python -m happysad.predict face.jpg --model models/happysad-tflite.tflite`.

SavedModel and TFLite exports work alone: their input is raw RGB uint8 pixels (a SavedModel takes any height
and width, a TFLite file the model's input size), and the resizing and scaling happen inside, as every stage
of happysad prepares an image, so an app that feeds decoded pixels gets the probability predict gives. Only
--faces, the face crop, stays outside: OpenCV's detector is not a network layer, so such an app crops first.
The calibration is in the output layer already; the record beside the export keeps the rest (labels, marks).

The model is always read back from disk with compile=False, never taken from a training session in memory:
Keras 3's legacy .h5 saver changes a live model's compile state, and a .keras written from such a model can
carry a half-built optimizer. An inference export needs no optimizer, so none is written, whatever order
the formats are exported in. Every format runs the network in inference mode (training=False), so
augmentation layers are off and batch normalization uses its moving statistics. Before the export replaces
anything it is loaded back the way predict loads it and compared with the source model on probe images;
a float export that disagrees is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from happysad import classifier, console, defaults, files, record
from happysad.runtime import enable_memory_growth, keras, tf

SUFFIXES = {"keras": ".keras", "savedmodel": "", "tflite": ".tflite"}
QUANTIZATIONS = ("none", "dynamic", "float16")
# Float exports run the same float32 graph: anything beyond rounding noise means a broken export.
MAX_FLOAT_DIFFERENCE = 1e-4
PROBE_IMAGES = 8


class ExportError(Exception):
    """An export that cannot be made or would be wrong, reported as one line."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = console.ArgumentParser(prog="python -m happysad.export", description=__doc__.splitlines()[0])
    parser.add_argument("--format", required=True, choices=tuple(SUFFIXES))
    parser.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                        help="tflite only: dynamic-range int8 weights or float16 weights (default: none)")
    parser.add_argument("--model", default=defaults.MODEL, help="the Keras model to export (.h5 or .keras)")
    parser.add_argument("--out", help="where to write it (default: beside --model, named after the format)")
    args = parser.parse_args(argv)
    if args.quantize != "none" and args.format != "tflite":
        parser.error("--quantize applies to --format tflite only")
    return args


def default_out(model_path, fmt: str, quantize: str = "none") -> Path:
    model_path = Path(model_path)
    tag = fmt if quantize == "none" else f"{fmt}-{quantize}"
    return model_path.with_name(f"{model_path.stem}-{tag}{SUFFIXES[fmt]}")


def litert_options(quantize: str) -> dict:
    """TFLite converter settings, passed through by Keras's LiteRT export."""
    if quantize == "none":
        return {}
    options = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    return options


def with_pixel_input(network, image_size: int, any_size: bool) -> keras.Model:
    """The network behind its own preprocessing: raw uint8 RGB pixels in (of any height and width where
    `any_size`, else image_size x image_size), resized bilinearly and scaled to [0, 1] as
    happysad.images.Preprocessing does, so an app feeding decoded pixels gets the probability predict gives.
    A network reading the face beside the picture takes six channels: the picture's RGB, then the face's."""
    side = None if any_size else image_size
    pixels = keras.Input((side, side, network.inputs[0].shape[-1]), dtype="uint8", name="pixels")
    x = keras.layers.Resizing(image_size, image_size, interpolation="bilinear", name="resize")(pixels)
    x = keras.layers.Rescaling(1 / 255, name="scale")(x)
    return keras.Model(pixels, network(x, training=False), name=f"{network.name}_pixels")


def write_saved_model(network, path: Path) -> None:
    """Like network.export(format="tf_saved_model"), but in inference mode: Keras 3.15's export traces
    network.__call__ without training=False, which leaves augmentation layers (RandomFlip...) switched on."""
    (image,) = network.inputs
    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.add_endpoint("serve", functools.partial(network.__call__, training=False),
                         input_signature=[tf.TensorSpec(image.shape, image.dtype, name=image.name)])
    archive.write_out(str(path), verbose=False)


def write(network, fmt: str, quantize: str, path: Path, image_size: int) -> None:
    """.keras: the Keras network itself, for Keras users (images prepared as the record says). SavedModel:
    raw pixels of any size. TFLite: raw pixels at the model's input size (one fixed shape per interpreter)."""
    if fmt == "keras":
        network.save(path)
    elif fmt == "savedmodel":
        write_saved_model(with_pixel_input(network, image_size, any_size=True), path)
    else:
        with_pixel_input(network, image_size, any_size=False).export(str(path), format="litert", verbose=False,
                                                                   **litert_options(quantize))


def sha256(path: Path) -> str:
    """A file's sha256; for a SavedModel folder, the sha256 of its files' relative paths and hashes."""
    if path.is_file():
        return files.sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{files.sha256(file)}\n".encode())
    return digest.hexdigest()


def size_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def compare(network, exported: Path, image_size: int) -> float:
    """Largest probability difference between the source network and the export loaded back from disk."""
    pixels = np.random.default_rng(0).integers(0, 256, (PROBE_IMAGES, image_size, image_size,
                                                        network.inputs[0].shape[-1]))
    probe = (pixels / 255.0).astype(np.float32)  # what the pixels become in every stage (and in the export)
    expected = np.asarray(network(probe, training=False), np.float64)
    got = np.asarray(classifier.load_network(exported)(probe, training=False), np.float64)
    if got.shape != expected.shape or not np.all(np.isfinite(got)):
        raise ExportError(f"the export's output has shape {got.shape}, expected {expected.shape}")
    return float(np.max(np.abs(got - expected)))


def check_out(model_path: Path, fmt: str, out: Path) -> None:
    if out.resolve() == model_path.resolve():
        raise ExportError(f"--out {out} is the model being exported")
    if record.sidecar_path(out).resolve() == record.sidecar_path(model_path).resolve():
        raise ExportError(f"--out {out} would share the record {record.sidecar_path(out)} of {model_path}: "
                          "choose another file name")
    if SUFFIXES[fmt] and out.suffix != SUFFIXES[fmt]:
        raise ExportError(f"--format {fmt} writes a {SUFFIXES[fmt]} file, got --out {out}")
    if fmt == "savedmodel" and out.exists() and not (out / "saved_model.pb").is_file():
        raise ExportError(f"{out} exists and is not a SavedModel folder: it is left alone")
    if fmt != "savedmodel" and out.is_dir():
        raise ExportError(f"{out} is a folder")


def replace(tmp: Path, out: Path) -> None:
    """Move the finished export into place; an old export is removed only once the new one is there."""
    if tmp.is_dir() and out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def export(model_path, fmt: str, quantize: str = "none", out=None) -> dict:
    """Write the export and its record; returns {"out", "record", "difference"}."""
    model_path = Path(model_path)
    out = Path(out) if out else default_out(model_path, fmt, quantize)
    check_out(model_path, fmt, out)
    model = classifier.load(model_path)
    if not isinstance(model.network, keras.Model):
        raise ExportError(f"{model_path} is already an export: export from the Keras model (.h5 or .keras)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{SUFFIXES[fmt]}")
    try:
        write(model.network, fmt, quantize, tmp, model.preprocessing.image_size)
        difference = compare(model.network, tmp, model.preprocessing.image_size)
        if quantize == "none" and difference > MAX_FLOAT_DIFFERENCE:
            raise ExportError(f"the {fmt} export differs from {model_path} by {difference:.2g} in probability "
                              f"(more than {MAX_FLOAT_DIFFERENCE:g}); nothing was written")
        replace(tmp, out)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        tmp.unlink(missing_ok=True)
    copy = dataclasses.replace(model.record, model_file=out.name, model_sha256=sha256(out))
    files.write_atomic(record.sidecar_path(out), copy.to_json())
    return {"out": out, "record": copy, "difference": difference}


def main(argv=None) -> None:
    args = parse_args(argv)
    enable_memory_growth()
    try:
        result = export(args.model, args.format, args.quantize, args.out)
    except (ExportError, classifier.ModelError) as error:
        sys.exit(f"happysad.export: error: {error}")
    out = result["out"]
    preprocessing = result["record"].preprocessing
    if preprocessing.faces and args.format != "keras":
        print("note: this model was trained on face crops (--faces): the export resizes and scales pixels, and "
              "the app crops each picture to its face first")
    if preprocessing.face_beside and args.format != "keras":
        size = preprocessing.image_size
        print("note: this model reads the face beside the picture: the app feeds six channels, the picture's RGB "
              f"and then its largest face's (the picture again when none is found), each resized to {size}x{size} "
              "as predict resizes them")
    print(f"saved {out} ({size_bytes(out) / 1e6:.2f} MB) and {record.sidecar_path(out)}; largest probability "
          f"difference from {args.model} on {PROBE_IMAGES} probe images: {result['difference']:.1e}")


if __name__ == "__main__":
    main()
