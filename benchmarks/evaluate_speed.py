"""How fast evaluate scores a folder, and what the per-epoch TensorBoard summaries add to training.

    python benchmarks/evaluate_speed.py --model models/happysad.h5 --data /path/to/labelled/folder

Prints: images/s of evaluate's scoring (one parallel decode per image + batched inference), the time of the
whole evaluate command in-process (pictures, report, TensorBoard), and the seconds TrainingSummaries spends at
the end of an epoch (one prediction pass over the model's validation partition, the confusion-matrix picture
and the PR curve) next to the plain validation pass Keras itself makes.
"""
import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from happysad import callbacks, classifier, data, evaluate, runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    runtime.enable_memory_growth()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    model = classifier.load(args.model)
    target = evaluate.folder_target(args.data, model.class_names)
    warm_up = data.Files(target.files.paths[:64], target.files.labels[:64])
    evaluate.score(model, warm_up, args.batch_size)
    started = time.perf_counter()
    scores = evaluate.score(model, target.files, args.batch_size, keep_mistakes=16)
    seconds = time.perf_counter() - started
    print(f"score: {len(scores.labels)} images at {model.preprocessing.image_size} px in {seconds:.2f} s = "
          f"{len(scores.labels) / seconds:.0f} images/s ({len(scores.skipped)} skipped)")
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        evaluate.main(["--model", args.model, "--data", args.data, "--out", out, "--no-tensorboard",
                       "--batch-size", str(args.batch_size)])
        print(f"evaluate --data (in-process, TensorFlow already imported): {time.perf_counter() - started:.2f} s")

        validation = evaluate.partition_target(model.record, "validation").files
        dataset = data.make_dataset(validation, model.preprocessing, 32, binary=model.record.binary, cache="memory")
        model.network.compile(loss="binary_crossentropy" if model.record.binary else
                            "sparse_categorical_crossentropy")
        model.network.evaluate(dataset, verbose=0)  # fills the cache, as training's first epoch does
        started = time.perf_counter()
        model.network.evaluate(dataset, verbose=0)
        keras_seconds = time.perf_counter() - started
        callback = callbacks.TrainingSummaries(out, validation, dataset, validation.labels, model.class_names,
                                               model.preprocessing)
        callback.set_model(model.network)
        callback.on_train_begin()
        started = time.perf_counter()
        callback.on_epoch_end(0)
        print(f"per epoch on {len(validation)} validation images: Keras' validation pass "
              f"{keras_seconds:.2f} s, TrainingSummaries {time.perf_counter() - started:.2f} s")
        callback.on_train_end()


if __name__ == "__main__":
    main()
