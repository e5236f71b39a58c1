"""python -m happysad.serve: a web page and a JSON API that label uploaded images with a trained model.

    python -m happysad.serve --model models/happysad.h5          # then open http://127.0.0.1:8000/
    curl -F files=@face.jpg http://127.0.0.1:8000/predict

The model (any format predict loads: .h5, .keras, .tflite or a SavedModel folder) is loaded once at start-up.
Uploads are prepared by happysad.images exactly as in training. Every upload is checked before it is decoded:
its size, its format (JPEG, PNG, GIF or BMP: what training reads) and its pixel count read from the file's
header, so a small file that would expand into gigabytes of pixels (a decompression bomb) is refused
without being decoded. Requests run in FastAPI's thread pool; the model call itself is serialized by a lock
(a TFLite interpreter is not thread-safe), decoding runs in parallel.
"""
import argparse
import base64
import socket
import struct
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from happysad import classifier, console, defaults, images
from happysad import explain as explain_module  # `explain` is also the API's query parameter
from happysad.runtime import enable_memory_growth, tf

STATIC = Path(__file__).with_name("static")
HEADER_BYTES = {"PNG": 24, "GIF": 13, "BMP": 26}
MULTIPART_OVERHEAD = 64 * 1024  # allowance per request for multipart boundaries and part headers


@dataclass
class Limits:
    max_bytes: int = 20_000_000
    max_pixels: int = 50_000_000
    max_files: int = 32

    @property
    def max_request_bytes(self) -> int:
        return self.max_files * self.max_bytes + MULTIPART_OVERHEAD


class Rejected(Exception):
    """An upload refused with an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_args(argv=None) -> argparse.Namespace:
    parser = console.ArgumentParser(prog="python -m happysad.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=defaults.MODEL,
                        help=".h5 or .keras, or an export: .tflite or a SavedModel folder (happysad.export)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (default: this one)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start-up)")
    parser.add_argument("--max-bytes", type=int, default=Limits.max_bytes, help="largest upload, in bytes")
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels,
                        help="largest image, width × height (× frames for a GIF), read from its header")
    parser.add_argument("--max-files", type=int, default=Limits.max_files, help="most images per request")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, got {args.port}")
    for name in ("max_bytes", "max_pixels", "max_files"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def gif_frames(data: bytes) -> tuple:
    """(frames, largest frame area) of a GIF, by walking its blocks: TensorFlow decodes every frame."""
    def skip_sub_blocks(pos):
        while pos < len(data) and data[pos]:
            pos += data[pos] + 1
        return pos + 1

    def color_table(flags):
        return 3 << ((flags & 7) + 1) if flags & 0x80 else 0

    pos, frames, area = 13 + color_table(data[10]), 0, 0
    while pos < len(data) and data[pos] != 0x3B:
        if data[pos] == 0x2C and pos + 10 <= len(data):
            width, height = struct.unpack_from("<HH", data, pos + 5)
            frames, area = frames + 1, max(area, width * height)
            pos = skip_sub_blocks(pos + 10 + color_table(data[pos + 9]) + 1)
        elif data[pos] == 0x21:
            pos = skip_sub_blocks(pos + 2)
        else:
            break  # corrupt: the decoder will say so
    return frames, area


def header_size(data: bytes) -> tuple:
    """(format, pixels) from the file's header alone, without decoding; Rejected for other formats."""
    trainable = images.trainable_format(data)
    if trainable is None:
        raise Rejected(415, f"not an image: send {images.FORMAT_NAMES}")
    fmt = trainable.name
    if fmt == "JPEG":
        try:
            height, width, _ = tf.image.extract_jpeg_shape(data).numpy()
        except tf.errors.OpError:
            raise Rejected(422, "a truncated or corrupt JPEG (its header cannot be read)") from None
        return fmt, int(width) * int(height)
    if len(data) < HEADER_BYTES[fmt]:
        raise Rejected(422, f"a truncated {fmt} (its header is incomplete)")
    if fmt == "PNG":
        width, height = struct.unpack_from(">II", data, 16)
        return fmt, width * height
    if fmt == "GIF":
        width, height = struct.unpack_from("<HH", data, 6)
        frames, area = gif_frames(data)
        return fmt, max(frames, 1) * max(width * height, area)
    if struct.unpack_from("<I", data, 14)[0] == 12:  # BMP's old OS/2 header has 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return fmt, abs(width) * abs(height)


def read_image(model: classifier.Classifier, data: bytes, limits: Limits) -> np.ndarray:
    """Checked, then decoded by happysad.images (via the classifier): pixels ready for the model."""
    if not data:
        raise Rejected(400, "an empty file")
    if len(data) > limits.max_bytes:
        raise Rejected(413, f"larger than the limit of {limits.max_bytes} bytes (--max-bytes)")
    fmt, pixels = header_size(data)
    if pixels > limits.max_pixels:
        raise Rejected(413, f"a {fmt} of {pixels} pixels, more than the limit of {limits.max_pixels} "
                            "(--max-pixels); it was not decoded")
    try:
        return model.decode(data)
    except tf.errors.OpError as error:
        raise Rejected(422, f"a truncated or corrupt {fmt} ({images.error_reason(error)})") from None


def model_info(model: classifier.Classifier, model_path, limits: Limits) -> dict:
    saved = model.record
    return {"name": Path(model_path).name, "class_names": model.class_names, "image_size": model.preprocessing.image_size,
            "threshold": saved.threshold, "created": saved.created,
            # what the model measured of itself: out of fold when cross-validated, else on its test partition
            "metrics_kind": "cross_validation" if "cross_validation" in saved.metrics else "test",
            "metrics": saved.metrics.get("cross_validation", saved.metrics.get("test", {})),
            "architecture": saved.hyperparameters.get("arch", ""), "limits": asdict(limits),
            "marks_fits_no_class": model.marks_far, "export": model.is_export}


def create_app(model: classifier.Classifier, model_path, limits: Limits) -> FastAPI:
    app = FastAPI(title="happysad", description="Label images with a trained happysad model.")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    model_lock = threading.Lock()
    info = model_info(model, model_path, limits)

    @app.middleware("http")
    async def limit_request_size(request: Request, call_next):
        """Refuse an oversized body from its Content-Length, before it is parsed and spooled to disk."""
        if request.method != "POST":
            return await call_next(request)
        length = request.headers.get("content-length", "0")
        if "chunked" in request.headers.get("transfer-encoding", ""):
            return JSONResponse({"detail": "send the request with a Content-Length, not chunked"}, status_code=411)
        if not length.isdigit():
            return JSONResponse({"detail": f"invalid Content-Length {length!r}"}, status_code=400)
        if int(length) > limits.max_request_bytes:
            async for _ in request.stream():  # read and drop it, so the client sees the answer, not a reset
                pass
            return JSONResponse({"detail": f"the request has {length} bytes, more than --max-files × "
                                           f"--max-bytes allows ({limits.max_request_bytes})"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        return JSONResponse({"detail": f"internal error: {type(error).__name__}"}, status_code=500)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/model")
    def describe() -> dict:
        """Class names in label order, image size, decision threshold, test metrics and upload limits."""
        return info

    @app.post("/predict")
    def predict(files: list[UploadFile] | None = File(None, description="one or more images"),
                explain: bool = False) -> dict:
        """One object per file, as `predict --json` prints them, with the uploaded file name as path; with
        ?explain=true each also has "heatmap": a PNG data URL of the picture as the model saw it, with the
        heatmap of the evidence for its label over it, and the face crop beside it where the model reads one
        (Grad-CAM; Keras models only)."""
        if explain and not model.can_explain:
            raise HTTPException(400, f"explain: {classifier.EXPORTS_CANNOT_EXPLAIN}")
        if not files:
            raise HTTPException(400, "no images: send them as multipart form field 'files'")
        if len(files) > limits.max_files:
            raise HTTPException(413, f"{len(files)} files, more than the limit of {limits.max_files} (--max-files)")
        pixels = []
        for upload in files:
            try:
                pixels.append(read_image(model, upload.file.read(limits.max_bytes + 1), limits))
            except Rejected as rejected:
                raise HTTPException(rejected.status, f"{upload.filename}: {rejected.reason}") from None
        batch = np.stack(pixels)
        with model_lock:
            predictions = model.predict(batch)
            heatmaps = model.heatmaps(batch, [p.label for p in predictions]) if explain else None
        rows = [p.to_json(upload.filename) for p, upload in zip(predictions, files)]
        if explain:
            for row, picture, heatmap in zip(rows, batch, heatmaps):
                png = tf.io.encode_png(explain_module.overlay(picture, heatmap)).numpy()
                row["heatmap"] = "data:image/png;base64," + base64.b64encode(png).decode()
        return {"predictions": rows}

    return app


def listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family)


def main(argv=None) -> None:
    args = parse_args(argv)
    enable_memory_growth()
    try:
        model = classifier.load(args.model)
    except classifier.ModelError as error:
        sys.exit(f"happysad.serve: error: {error}")
    size, channels = model.preprocessing.image_size, model.preprocessing.channels
    model.predict(np.zeros((1, size, size, channels), np.float32))  # trace before the first user
    limits = Limits(args.max_bytes, args.max_pixels, args.max_files)
    try:
        server_socket = listen(args.host, args.port)
    except OSError as error:
        sys.exit(f"happysad.serve: error: cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    host, port = server_socket.getsockname()[:2]
    if model.missing_mark_note:
        print(f"note: {model.missing_mark_note}", flush=True)
    print(f"happysad.serve: {args.model} on http://{host}:{port}/ (API docs: /docs)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(model, args.model, limits), log_level="info"))
    server.run(sockets=[server_socket])


if __name__ == "__main__":
    main()
