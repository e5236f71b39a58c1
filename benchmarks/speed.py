"""happysad against the classic tutorial, side by side on the same machine and data.

    python benchmarks/speed.py --data /work/shared/datasets/happysad-web --epochs 5
    python benchmarks/speed.py --generate 2000 --size 256            # generated faces, in a temporary folder
    python benchmarks/speed.py --data DIR --only matmul,train         # a subset of the measurements

Training: the tutorial's pipeline exactly as taught (image_dataset_from_directory at batch 32 and 256×256 with
shuffle=True, map(x/255), a take/skip 70/20/10 split by batches, the card's CNN, fit with validation, every
image decoded again every epoch, no cache, no prefetch) against happysad's (data.make_dataset +
model.build_cnn/compile_model as train.py uses them: split file lists, parallel decode, cache, prefetch).
Both report seconds per epoch (the first, and the median of the rest: steady state) including validation,
and training images per second. The model's FLOPs per image come from its layer shapes (2 per
multiply-add; training ≈ 3× forward, validation 1×) and are set against the float32 matmul rate measured here.
Cleaning: happysad.clean against the tutorial's loop (cv2.imread + imghdr.what, counting the files it would
delete instead of deleting), each on its own throwaway copy. Prediction: a folder scored in batches
(happysad) against the tutorial's cv2.imread + resize + model.predict per image, and the single-image latency
once the model is loaded. Every measurement runs in its own process, so each peak RSS is its own.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The environment before happysad loads TensorFlow (happysad.runtime sets TF_ENABLE_ONEDNN_OPTS then): the
# tutorial runs in it, with TensorFlow's defaults, as it would on this machine.
USER_ENV = dict(os.environ)
MEASUREMENTS = ("matmul", "layers", "train", "clean", "predict")


# ---- measurements, each run in a fresh process (python speed.py --worker NAME JSON) ----

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul(options) -> dict:
    """Best float32 GFLOP/s of tf.linalg.matmul on large square matrices: what this CPU's cores can do."""
    import tensorflow as tf

    n = options["matmul_size"]
    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    rates, cpu_rates = [], []
    for _ in range(12):
        started, cpu = time.perf_counter(), time.process_time()
        tf.linalg.matmul(a, b).numpy()
        rates.append(2 * n**3 / (time.perf_counter() - started) / 1e9)
        cpu_rates.append(2 * n**3 / (time.process_time() - cpu) / 1e9)
    return {"gflops": max(rates[1:]), "gflops_median": statistics.median(rates[1:]),
            "gflops_per_cpu_second": max(cpu_rates[1:])}


def faster_matmul(first: dict, second: dict) -> dict:
    """The better of two matmul measurements, both kept under "runs"."""
    best = max(first, second, key=lambda result: result["gflops"])
    return {**best, "gflops_per_cpu_second": max(first["gflops_per_cpu_second"], second["gflops_per_cpu_second"]),
            "runs": [first, second]}


def layers(options) -> dict:
    """Each block of happysad's network alone: one training step (forward and backward) on a batch, timed.

    Shows where an epoch goes and how close each kind of layer gets to the matmul rate: a convolution with
    few channels moves more memory than it computes. The first block needs no gradient for its input.
    """
    import keras
    import tensorflow as tf

    from happysad import model as models

    size, batch = options["image_size"], options["batch_size"]
    network = models.build_cnn(2, size)
    rows, shape = [], (batch, size, size, 3)
    blocks = [network.layers[i:i + 2] for i in (0, 2, 4)] + [network.layers[6:8], network.layers[8:]]
    for number, block in enumerate(blocks):
        inputs = tf.random.uniform(shape)
        step = training_step(block, input_gradient=number > 0)
        step(inputs)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            [gradient.numpy() for gradient in step(inputs)]
            times.append(time.perf_counter() - started)
        forward = sum(layer_flops(layer) for layer in block) * batch
        work = forward * (2 if number == 0 else 3)
        rows.append({"block": " + ".join(type(layer).__name__ for layer in block), "input": list(shape[1:]),
                     "ms": 1000 * min(times), "gflops": work / min(times) / 1e9})
        shape = (batch, *block[-1].output.shape[1:])
    keras.backend.clear_session()
    return {"blocks": rows, "batch_size": batch}


def training_step(block: list, input_gradient: bool):
    """A traced forward + backward pass through `block` (a list of layers), returning the gradients."""
    import tensorflow as tf

    variables = [v for layer in block for v in layer.trainable_variables]

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = x
            for layer in block:
                y = layer(y)
            total = tf.reduce_sum(y)
        return tape.gradient(total, variables + [x] if input_gradient else variables)

    return step


def layer_flops(layer) -> int:
    """Forward FLOPs per image of one Conv2D or Dense layer (2 per multiply-add); 0 for the others."""
    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        return 0
    if len(kernel.shape) == 4:  # Conv2D: each output value is a k×k×C_in dot product
        _, height, width, _ = layer.output.shape
        return 2 * height * width * int(kernel.shape[0] * kernel.shape[1] * kernel.shape[2] * kernel.shape[3])
    return 2 * int(kernel.shape[0] * kernel.shape[1])


def model_flops(model) -> int:
    """Forward FLOPs per image from the layer shapes: convolutions and dense layers; pooling, activations and
    the loss are a fraction of a percent of it and left out."""
    return sum(layer_flops(layer) for layer in model.layers)


class EpochClock:
    """Wall-clock and CPU seconds (all of the process's threads) of each epoch, validation included: a Keras
    callback, built on demand. CPU seconds / (wall seconds × cores) shows how much of the machine a run got
    (the machine is shared), and work per CPU-second does not depend on what the neighbours do."""

    def __new__(cls):
        import keras

        class Clock(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds, self.cpu_seconds = [], []

            def on_epoch_begin(self, epoch, logs=None):
                self.started, self.cpu = time.perf_counter(), time.process_time()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.started)
                self.cpu_seconds.append(time.process_time() - self.cpu)

        return Clock()


def epoch_summary(clock, train_images, forward_flops, validation_images) -> dict:
    steady_epochs = range(1, len(clock.seconds)) if len(clock.seconds) > 1 else range(1)
    steady = statistics.median(clock.seconds[i] for i in steady_epochs)
    steady_cpu = statistics.median(clock.cpu_seconds[i] for i in steady_epochs)
    work = 3 * forward_flops * train_images + forward_flops * validation_images
    return {"epoch_seconds": clock.seconds, "epoch_cpu_seconds": clock.cpu_seconds, "first_epoch": clock.seconds[0],
            "steady_epoch": steady, "steady_epoch_cpu": steady_cpu, "cpu_share": steady_cpu / steady / os.cpu_count(),
            "train_images": train_images, "validation_images": validation_images,
            "train_images_per_second": train_images / steady, "achieved_gflops": work / steady / 1e9,
            "gflops_per_cpu_second": work / steady_cpu / 1e9, "forward_flops": forward_flops}


def tutorial_train(options) -> dict:
    """The tutorial's training, as taught (only the epoch count and the save path are ours)."""
    import keras
    import tensorflow as tf
    from keras import layers

    data = keras.utils.image_dataset_from_directory(options["data"])
    data = data.map(lambda x, y: (x / 255, y))
    train_size = int(len(data) * .7)
    val_size = int(len(data) * .2)
    test_size = int(len(data) * .1)
    train = data.take(train_size)
    val = data.skip(train_size).take(val_size)
    data.skip(train_size + val_size).take(test_size)

    model = keras.Sequential([
        keras.Input((256, 256, 3)),
        layers.Conv2D(16, (3, 3), 1, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, (3, 3), 1, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(16, (3, 3), 1, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(256, activation="relu"),
        layers.Dense(1, activation="sigmoid"),
    ])
    model.compile("adam", loss=tf.losses.BinaryCrossentropy(), metrics=["accuracy"])
    clock = EpochClock()
    model.fit(train, epochs=options["epochs"], validation_data=val, callbacks=[clock], verbose=0)
    model.save(options["save"])
    # Only the dataset's last batch is partial, and it falls in the test part: the others are full.
    return epoch_summary(clock, train_size * 32, model_flops(model), val_size * 32)


def happysad_train(options) -> dict:
    """happysad's pipeline and model exactly as train.py builds them (without its TensorBoard callbacks)."""
    import keras

    from happysad import cache, data, images, model as models, record

    keras.utils.set_random_seed(1337)
    size, batch = options["image_size"], options["batch_size"]
    class_names = data.find_classes(options["data"])
    files, _ = data.list_images(options["data"], class_names)
    parts = data.split(files)
    binary = models.is_binary(len(class_names))
    preprocessing = images.Preprocessing(size)
    caches = cache.choose_caches(options["cache"], parts, preprocessing, folder=options["cache_dir"])
    datasets = {name: data.make_dataset(parts[name], preprocessing, batch, binary=binary, cache=caches[name],
                                        shuffle_seed=1337 if name == "train" else None)
                for name in ("train", "validation")}
    network = models.compile_model(models.build_cnn(len(class_names), size), len(class_names))
    if options["jit"]:
        network.jit_compile = True
    clock = EpochClock()
    network.fit(datasets["train"], validation_data=datasets["validation"], epochs=options["epochs"],
                callbacks=[clock], shuffle=False, verbose=0)
    record.save(network, options["save"], record.Record(class_names, preprocessing))
    result = epoch_summary(clock, len(parts["train"]), model_flops(network), len(parts["validation"]))
    result["cache"] = caches["train"] if caches["train"] in (None, "memory") else "disk"
    return result


def tutorial_clean(options) -> dict:
    """The tutorial's cleaning loop, counting what it would delete instead of deleting it."""
    import warnings

    import cv2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import imghdr

    data_dir = options["data"]
    image_exts = ["jpeg", "jpg", "bmp", "png"]
    checked = would_delete = 0
    started = time.perf_counter()
    for image_class in os.listdir(data_dir):
        for image in os.listdir(os.path.join(data_dir, image_class)):
            image_path = os.path.join(data_dir, image_class, image)
            checked += 1
            try:
                cv2.imread(image_path)
                tip = imghdr.what(image_path)
                if tip not in image_exts:
                    would_delete += 1
            except Exception:
                pass
    seconds = time.perf_counter() - started
    return {"images": checked, "seconds": seconds, "images_per_second": checked / seconds,
            "flagged": would_delete}


def happysad_clean(options) -> dict:
    from happysad import clean

    started = time.perf_counter()
    summary = clean.clean(options["data"])
    seconds = time.perf_counter() - started
    images = sum(summary.files.values())  # checked, before cleaning added any converted copy
    return {"images": images, "seconds": seconds, "images_per_second": images / seconds,
            "flagged": len(summary.findings)}


def tutorial_predict(options) -> dict:
    """The tutorial's prediction, one image per model.predict call, for a folder and for one image."""
    import cv2
    import keras
    import numpy as np
    import tensorflow as tf

    model = keras.models.load_model(options["model"])
    paths = options["paths"]
    latencies = []
    started = time.perf_counter()
    for path in paths:
        one = time.perf_counter()
        img = cv2.imread(path)
        resize = tf.image.resize(img, (256, 256))
        model.predict(np.expand_dims(resize / 255, 0), verbose=0)
        latencies.append(time.perf_counter() - one)
    seconds = time.perf_counter() - started
    return {"images": len(paths), "images_per_second": len(paths) / seconds,
            "latency_ms": 1000 * statistics.median(latencies[1:])}


def happysad_predict(options) -> dict:
    """happysad.predict's path: decode each file, score in batches; and one image at a time once loaded."""
    import numpy as np

    from happysad import classifier, predict

    model = classifier.load(options["model"])
    paths = [Path(p) for p in options["paths"]]
    model.predict(np.stack([model.load_image(p) for p in paths[:2]]))  # warm up: trace the model once
    started = time.perf_counter()
    good, pixels, _ = predict.load_images(paths, model)
    model.predict(np.stack(pixels))
    seconds = time.perf_counter() - started
    latencies = []
    for path in paths[:50]:
        one = time.perf_counter()
        model.predict(model.load_image(path)[None])
        latencies.append(time.perf_counter() - one)
    return {"images": len(good), "images_per_second": len(good) / seconds,
            "latency_ms": 1000 * statistics.median(latencies)}


WORKERS = {f.__name__: f for f in (matmul, layers, tutorial_train, happysad_train, tutorial_clean, happysad_clean,
                                   tutorial_predict, happysad_predict)}


def worker(name: str, options_json: str) -> None:
    if not name.startswith("tutorial"):  # the tutorial's processes never import happysad
        from happysad import runtime

        runtime.enable_memory_growth()
    result = WORKERS[name](json.loads(options_json))
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


# ---- the driver ----

def measure(name: str, options: dict, env: dict = None) -> dict:
    env = {**USER_ENV, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--worker", name, json.dumps(options)], env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"speed.py: {name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"  {name}: {time.perf_counter() - started:.0f} s wall, load {os.getloadavg()[0]:.1f}", flush=True)
    return result


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), load average {os.getloadavg()[0]:.2f}"


def ratio(ours, theirs) -> str:
    return f"{ours / theirs:.2f}×" if theirs else "-"


def report(results: dict, options: dict) -> str:
    rows = [("measurement", "tutorial", "happysad", "happysad/tutorial")]
    if "train" in results:
        tut, hap = results["train"]
        rows += [
            ("first epoch (s)", f"{tut['first_epoch']:.1f}", f"{hap['first_epoch']:.1f}",
             ratio(tut["first_epoch"], hap["first_epoch"]) + " faster"),
            ("steady epoch (s)", f"{tut['steady_epoch']:.1f}", f"{hap['steady_epoch']:.1f}",
             ratio(tut["steady_epoch"], hap["steady_epoch"]) + " faster"),
            ("training images/s", f"{tut['train_images_per_second']:.1f}", f"{hap['train_images_per_second']:.1f}",
             ratio(hap["train_images_per_second"], tut["train_images_per_second"])),
            ("achieved GFLOP/s", f"{tut['achieved_gflops']:.1f}", f"{hap['achieved_gflops']:.1f}",
             ratio(hap["achieved_gflops"], tut["achieved_gflops"])),
            ("GFLOP per CPU-second", f"{tut['gflops_per_cpu_second']:.1f}", f"{hap['gflops_per_cpu_second']:.1f}",
             ratio(hap["gflops_per_cpu_second"], tut["gflops_per_cpu_second"])),
            ("CPU share in steady epochs", f"{tut['cpu_share']:.0%}", f"{hap['cpu_share']:.0%}", ""),
            ("train peak RSS (MB)", f"{tut['peak_rss_mb']:.0f}", f"{hap['peak_rss_mb']:.0f}",
             ratio(hap["peak_rss_mb"], tut["peak_rss_mb"])),
        ]
    if "clean" in results:
        tut, hap = results["clean"]
        rows += [("clean images/s", f"{tut['images_per_second']:.0f}", f"{hap['images_per_second']:.0f}",
                  ratio(hap["images_per_second"], tut["images_per_second"])),
                 ("clean flagged files", str(tut["flagged"]), str(hap["flagged"]), ""),
                 ("clean peak RSS (MB)", f"{tut['peak_rss_mb']:.0f}", f"{hap['peak_rss_mb']:.0f}", "")]
    if "predict" in results:
        tut, hap = results["predict"]
        rows += [("predict images/s (folder)", f"{tut['images_per_second']:.1f}", f"{hap['images_per_second']:.1f}",
                  ratio(hap["images_per_second"], tut["images_per_second"])),
                 ("predict 1 image (ms)", f"{tut['latency_ms']:.1f}", f"{hap['latency_ms']:.1f}",
                  ratio(tut["latency_ms"], hap["latency_ms"]) + " faster"),
                 ("predict peak RSS (MB)", f"{tut['peak_rss_mb']:.0f}", f"{hap['peak_rss_mb']:.0f}", "")]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    notes = []
    if "train" in results:
        tut, hap = results["train"]
        notes.append(f"images: tutorial trains on {tut['train_images']} and validates on {tut['validation_images']}"
                     f" per epoch, happysad on {hap['train_images']} and {hap['validation_images']} "
                     f"(cache: {hap['cache']}); {options['epochs']} epochs; image size 256 for the tutorial, "
                     f"{options['image_size']} for happysad; happysad jit={options['jit']}")
        flops = hap["forward_flops"]
        notes.append(f"model FLOPs per image at {options['image_size']} px: forward {flops / 1e6:.0f} M, "
                     f"training ≈ 3× = {3 * flops / 1e6:.0f} M")
    if "tutorial_onednn" in results:
        steady = results["tutorial_onednn"]["steady_epoch"]
        notes.append(f"tutorial with TF_ENABLE_ONEDNN_OPTS=1: first epoch {results['tutorial_onednn']['first_epoch']:.1f}"
                     f" s, steady {steady:.1f} s; happysad's steady epoch is "
                     f"{ratio(steady, results['train'][1]['steady_epoch'])} faster than that")
    if "matmul" in results:
        rate = results["matmul"]["gflops"]
        runs = ", ".join(f"{run['gflops']:.1f} / {run['gflops_median']:.1f}"
                         for run in results["matmul"].get("runs", [results["matmul"]]))
        notes.append(f"float32 matmul ({options['matmul_size']}²): {rate:.1f} GFLOP/s best "
                     f"(best / median of each measurement: {runs}), "
                     f"{results['matmul']['gflops_per_cpu_second']:.1f} GFLOP per CPU-second")
        if "train" in results:
            hap = results["train"][1]
            allowed = rate * 1e9 / (3 * hap["forward_flops"])
            notes.append(f"happysad training: {hap['train_images_per_second']:.1f} images/s = "
                         f"{hap['train_images_per_second'] / allowed:.0%} of the {allowed:.1f} images/s the matmul "
                         f"rate allows; {hap['achieved_gflops'] / rate:.0%} of matmul GFLOP/s counting validation; "
                         f"per CPU-second (independent of the load): "
                         f"{hap['gflops_per_cpu_second'] / results['matmul']['gflops_per_cpu_second']:.0%}")
    if "layers" in results:
        blocks = results["layers"]["blocks"]
        notes.append(f"happysad's network block by block, one training step on a batch of "
                     f"{results['layers']['batch_size']} (forward + backward), total "
                     f"{sum(b['ms'] for b in blocks):.0f} ms:")
        notes += [f"  {b['block']} on {'x'.join(map(str, b['input']))}: {b['ms']:.1f} ms, {b['gflops']:.1f} GFLOP/s"
                  for b in blocks]
    return "\n".join(lines + [""] + notes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a folder of class folders (read only: cleaning runs on copies)")
    source.add_argument("--generate", type=int, metavar="N", help="N generated faces (half per class)")
    parser.add_argument("--size", type=int, default=256, help="generated image size (default 256)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=256, help="happysad's image size (the tutorial: 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="happysad's batch size (the tutorial: 32)")
    parser.add_argument("--cache", default="auto", help="happysad's --cache")
    parser.add_argument("--jit", action="store_true", help="happysad with XLA (train --jit)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--predict-images", type=int, default=200)
    parser.add_argument("--tutorial-onednn", action="store_true",
                        help="also train the tutorial with TF_ENABLE_ONEDNN_OPTS=1 (what happysad sets), to tell "
                             "the pipeline's gain from the kernels'")
    parser.add_argument("--only", default=",".join(MEASUREMENTS), help="comma-separated: " + ",".join(MEASUREMENTS))
    parser.add_argument("--json", help="also write every number to this file")
    args = parser.parse_args(argv)
    wanted = args.only.split(",")

    with tempfile.TemporaryDirectory(prefix="happysad-speed-") as scratch:
        scratch = Path(scratch)
        data_dir = args.data
        if args.generate:
            from happysad import sample

            data_dir = str(scratch / "generated")
            sample.write_faces(data_dir, per_class=args.generate // 2, size=args.size)
        options = {"data": data_dir, "epochs": args.epochs, "image_size": args.image_size,
                   "batch_size": args.batch_size, "cache": args.cache, "cache_dir": str(scratch / "cache"),
                   "jit": args.jit, "matmul_size": args.matmul_size, "predict_images": args.predict_images}
        print(f"machine: {machine()}", flush=True)
        results = {}
        if "matmul" in wanted:
            results["matmul"] = measure("matmul", options)
        if "layers" in wanted:
            results["layers"] = measure("layers", options)
        if "train" in wanted or "predict" in wanted:
            results["train"] = (measure("tutorial_train", {**options, "save": str(scratch / "tutorial.h5")}),
                                measure("happysad_train", {**options, "save": str(scratch / "happysad.h5")}))
            if args.tutorial_onednn:
                results["tutorial_onednn"] = measure("tutorial_train", {**options, "save": str(scratch / "t1.h5")},
                                                     env={"TF_ENABLE_ONEDNN_OPTS": "1"})
            if "matmul" in wanted:
                # Measured again after the training runs: the cores' speed drifts on a shared machine, and
                # the faster of the two is the fairer (stricter) ceiling.
                results["matmul"] = faster_matmul(results["matmul"], measure("matmul", options))
        if "clean" in wanted:
            copies = []
            for name in ("tutorial", "happysad"):
                copies.append(scratch / f"clean-{name}")
                shutil.copytree(data_dir, copies[-1], ignore=shutil.ignore_patterns(".quarantine"))
            results["clean"] = (measure("tutorial_clean", {**options, "data": str(copies[0])}),
                                measure("happysad_clean", {**options, "data": str(copies[1])}))
        if "predict" in wanted:
            from happysad import predict

            options["paths"] = [str(p) for p in predict.expand([data_dir])[:args.predict_images]]
            results["predict"] = (measure("tutorial_predict", {**options, "model": str(scratch / "tutorial.h5")}),
                                  measure("happysad_predict", {**options, "model": str(scratch / "happysad.h5")}))
        print(f"machine after: {machine()}")
        print(report(results, options))
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine(), "options": options, **results}, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
