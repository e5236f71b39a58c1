"""serve over real HTTP: the server runs as a subprocess on a free loopback port, driven through httpx and,
when Debian's chromium and chromium-driver are installed, through a headless browser."""
import base64
import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import tensorflow as tf

from happysad import classifier, explain, images, record, serve

pytestmark = pytest.mark.slow  # whole module: its fixtures train or start a server (tens of seconds)

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES, MAX_PIXELS, MAX_FILES = 300_000, 1_000_000, 4
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


class Server:
    def __init__(self, process, url, log):
        self.process, self.url, self.log = process, url, log


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    yield from running(trained["model"], tmp_path_factory.mktemp("serve") / "serve.log")


def running(model_path, log):
    """The server on a free loopback port, up and answering /health, until the generator is closed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "happysad.serve", "--model", str(model_path), "--port", "0",
             "--max-bytes", str(MAX_BYTES), "--max-pixels", str(MAX_PIXELS), "--max-files", str(MAX_FILES)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while not (found := re.search(r"on (http://127\.0\.0\.1:\d+/)", log.read_text())):
            assert process.poll() is None and time.time() < deadline, f"server did not start:\n{log.read_text()}"
            time.sleep(0.2)
        url = found.group(1)
        while True:
            try:
                if httpx.get(url + "health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.time() < deadline, log.read_text()
                time.sleep(0.2)
        yield Server(process, url, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def model(trained):
    return classifier.load(trained["model"])


@pytest.fixture(scope="module")
def faces(trained):
    """{file name: JPEG bytes} for six of the model's test faces, both classes."""
    paths = [trained["data"] / p for p in record.read(trained["model"]).split["test"]]
    chosen = [p for p in paths if p.parent.name == "happy"][:3] + [p for p in paths if p.parent.name == "sad"][:3]
    return {p.name: p.read_bytes() for p in chosen}


def expected(model, named_bytes: dict) -> dict:
    predictions = model.predict(np.stack([model.decode(b) for b in named_bytes.values()]))
    return {name: p.to_json(name) for name, p in zip(named_bytes, predictions)}


def post(url, *files, client=httpx):
    return client.post(url + "predict", files=[("files", (name, data, "application/octet-stream"))
                                                for name, data in files])


def assert_same(got: dict, want: dict):
    assert set(got) == set(want) and got["path"] == want["path"] and got["label"] == want["label"]
    assert got["probability"] == pytest.approx(want["probability"], abs=2e-6)
    assert got["probabilities"] == pytest.approx(want["probabilities"], abs=2e-6)


def encode(extension: str, image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(extension, image)
    assert ok
    return encoded.tobytes()


def test_predict_returns_predict_json_objects_for_every_format(server, model, faces):
    face = cv2.imdecode(np.frombuffer(next(iter(faces.values())), np.uint8), cv2.IMREAD_COLOR)
    uploads = {"a.jpg": next(iter(faces.values())), "b.png": encode(".png", face), "c.bmp": encode(".bmp", face),
               "d.gif": encode(".gif", face)}
    response = post(server.url, *uploads.items())
    assert response.status_code == 200, response.text
    got = response.json()["predictions"]
    want = expected(model, uploads)
    assert [g["path"] for g in got] == list(uploads)
    for row in got:
        assert_same(row, want[row["path"]])


def test_explain_returns_the_heatmap_predict_writes_and_marks_a_flat_picture(server, model, faces, tmp_path):
    name, face = next(iter(faces.items()))
    flat = encode(".png", np.full((64, 64, 3), (40, 200, 90), np.uint8))  # no face: nothing like training
    response = httpx.post(server.url + "predict?explain=true",
                          files=[("files", (n, b, "application/octet-stream")) for n, b in ((name, face),
                                                                                           ("flat.png", flat))])
    assert response.status_code == 200, response.text
    face_row, flat_row = response.json()["predictions"]
    header = "data:image/png;base64,"
    assert face_row["heatmap"].startswith(header)
    shown = tf.io.decode_png(base64.b64decode(face_row["heatmap"][len(header):])).numpy()
    prediction = expected(model, {name: face})[name]
    want = explain.overlay(model.decode(face), model.heatmaps(model.decode(face)[None], [prediction["label"]])[0])
    np.testing.assert_array_equal(shown, want)
    assert flat_row["fits_no_class"] and not face_row["fits_no_class"]
    assert flat_row["notes"][-1].startswith("fits no class: unlike the training photos")
    assert "heatmap" not in post(server.url, (name, face)).json()["predictions"][0]


def test_health_model_and_page(server, trained):
    assert httpx.get(server.url + "health").json() == {"status": "ok"}
    info = httpx.get(server.url + "model").json()
    saved = record.read(trained["model"])
    assert info["name"] == "happysad.h5" and info["class_names"] == saved.class_names
    assert info["image_size"] == saved.preprocessing.image_size and info["threshold"] == saved.threshold
    assert info["metrics"] == saved.metrics["test"] and info["metrics"]["count"] > 0
    assert info["limits"] == {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS, "max_files": MAX_FILES}
    assert info["marks_fits_no_class"] is True and info["export"] is False  # an export: false, true
    page = httpx.get(server.url)
    assert page.status_code == 200 and 'id="files"' in page.text
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert httpx.get(server.url + asset[1:]).status_code == 200
    assert httpx.get(server.url + "openapi.json").json()["paths"]["/predict"]["post"]


def test_page_needs_nothing_from_the_internet():
    for file in (ROOT / "happysad" / "static").iterdir():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", file.read_text()), file.name


def jpeg_bomb(jpeg: bytes) -> bytes:
    """A real JPEG whose start-of-frame says 60000×60000: decoding it would allocate 10.8 GB."""
    sof = re.search(rb"\xff[\xc0\xc2]", jpeg).start()
    return jpeg[:sof + 5] + struct.pack(">HH", 60000, 60000) + jpeg[sof + 9:]


def png_bomb(png: bytes) -> bytes:
    ihdr = bytearray(png[12:29])
    ihdr[4:12] = struct.pack(">II", 30000, 30000)
    return png[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + png[33:]


def gif_bomb(frames: int = 15000) -> bytes:
    """10×10 pixels per frame, but 15000 frames: TensorFlow decodes every one."""
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, 10, 10) + b"\x00" + b"\x02" + b"\x02\x4c\x01" + b"\x00"
    return b"GIF89a" + struct.pack("<HH", 10, 10) + b"\x00\x00\x00" + frame * frames + b"\x3b"


def bmp_bomb(bmp: bytes) -> bytes:
    return bmp[:18] + struct.pack("<ii", 40000, 40000) + bmp[26:]


@pytest.fixture(scope="module")
def bad_uploads(faces):
    jpeg = next(iter(faces.values()))
    face = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    huge = encode(".png", np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    assert len(huge) > MAX_BYTES
    return {
        "text": ([("notes.jpg", b"just some text, not a picture")], 415, "not an image"),
        "truncated jpeg": ([("cut.jpg", jpeg[:len(jpeg) // 2])], 422, "truncated or corrupt JPEG"),
        "truncated header": ([("cut.png", encode(".png", face)[:20])], 422, "truncated PNG"),
        "empty": ([("empty.jpg", b"")], 400, "empty file"),
        "huge file": ([("huge.png", huge)], 413, "--max-bytes"),
        "jpeg bomb": ([("bomb.jpg", jpeg_bomb(jpeg))], 413, "3600000000 pixels"),
        "png bomb": ([("bomb.png", png_bomb(encode(".png", face)))], 413, "900000000 pixels"),
        "gif bomb": ([("bomb.gif", gif_bomb())], 413, "1500000 pixels"),
        "bmp bomb": ([("bomb.bmp", bmp_bomb(encode(".bmp", face)))], 413, "1600000000 pixels"),
        "too many files": ([(f"{i}.jpg", jpeg) for i in range(MAX_FILES + 1)], 413, "--max-files"),
        "one bad among good": ([("good.jpg", jpeg), ("notes.jpg", b"text")], 415, "notes.jpg: not an image"),
    }


@pytest.mark.parametrize("case", ["text", "truncated jpeg", "truncated header", "empty", "huge file", "jpeg bomb",
                                  "png bomb", "gif bomb", "bmp bomb", "too many files", "one bad among good"])
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_up(server, bad_uploads, faces, case):
    files, status, reason = bad_uploads[case]
    started = time.perf_counter()
    response = post(server.url, *files)
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert time.perf_counter() - started < 10  # a bomb is refused from its header, not decoded
    good = post(server.url, next(iter(faces.items())))
    assert good.status_code == 200 and server.process.poll() is None


def test_requests_without_files_or_too_large_in_total(server):
    response = httpx.post(server.url + "predict")
    assert response.status_code == 400 and "files" in response.json()["detail"]
    response = httpx.post(server.url + "predict", data={"other": "field"})
    assert response.status_code == 400
    body = b"x" * (MAX_FILES * MAX_BYTES + 100_000)
    response = post(server.url, ("a.jpg", body))
    assert response.status_code == 413 and "--max-files" in response.json()["detail"]
    response = httpx.post(server.url + "predict", content=iter([b"chunked", b"body"]))
    assert response.status_code == 411


def test_200_concurrent_requests_from_8_threads_all_answered_correctly(server, model, faces):
    want = expected(model, faces)
    names = list(faces)

    def worker(thread: int) -> list:
        answers = []
        with httpx.Client(timeout=60) as client:
            for i in range(25):
                name = names[(thread + i) % len(names)]
                response = post(server.url, (name, faces[name]), client=client)
                answers.append((name, response.status_code, response.json()))
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = [a for thread in pool.map(worker, range(8)) for a in thread]
    assert len(answers) == 200
    for name, status, body in answers:
        assert status == 200, body
        (row,) = body["predictions"]
        assert_same(row, want[name])


def test_header_sizes_match_what_the_decoder_produces():
    from PIL import Image

    image = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    frames = io.BytesIO()
    pictures = [Image.fromarray(np.roll(image, i, axis=1)) for i in range(3)]
    pictures[0].save(frames, format="GIF", save_all=True, append_images=pictures[1:])
    for data in (encode(".jpg", image), encode(".png", image), encode(".bmp", image), frames.getvalue()):
        decoded = tf.io.decode_image(data, expand_animations=True).shape
        pixels = int(np.prod(decoded[:-1]))
        assert serve.header_size(data)[1] == pixels and pixels in (1500, 4500)


def test_a_model_reading_the_face_beside_the_picture_serves_what_predict_says(face_beside_network, faces, tmp_path):
    path = tmp_path / "beside.h5"
    record.save(face_beside_network, path, record.Record(class_names=["happy", "sad"],
                                             preprocessing=images.Preprocessing(32, face_beside=True)))
    uploads = dict(list(faces.items())[:MAX_FILES])
    served = running(path, tmp_path / "serve.log")
    try:
        response = post(next(served).url, *uploads.items())
    finally:
        served.close()
    assert response.status_code == 200, response.text
    want = expected(classifier.load(path), uploads)
    assert len(response.json()["predictions"]) == len(uploads)
    for row in response.json()["predictions"]:
        assert_same(row, want[row["path"]])


def test_missing_model_and_busy_port_are_one_line_errors(trained, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--model", str(tmp_path / "none.h5")])
    assert str(exit_info.value).startswith("happysad.serve: error: model") and "not found" in str(exit_info.value)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            serve.main(["--model", str(trained["model"]), "--port", str(port)])
    assert str(exit_info.value).startswith(f"happysad.serve: error: cannot listen on 127.0.0.1:{port}")


def test_browser_upload_shows_each_label(server, model, trained, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Debian's browser: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1100"):
        options.add_argument(flag)
    test_files = {Path(p).name: (trained["data"] / p).read_bytes() for p in model.record.split["test"]}
    ranked = sorted(expected(model, test_files).values(), key=lambda row: row["probabilities"][model.class_names[1]])
    chosen = {row["path"]: row for row in ranked[:2] + ranked[-2:]}  # the surest of each side
    want = {name: f"{row['label']} ({100 * row['probability']:.1f}%)" for name, row in chosen.items()}
    names = list(want)
    for name in names:
        (tmp_path / name).write_bytes(test_files[name])
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        browser.get(server.url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "happysad.h5" in b.find_element(By.ID, "model-line").text)
        browser.find_element(By.ID, "files").send_keys("\n".join(str(tmp_path / n) for n in names))

        def labels(b):
            cards = b.find_elements(By.CSS_SELECTOR, "#results .card")
            shown = {c.find_element(By.CLASS_NAME, "name").text: c.find_element(By.CLASS_NAME, "label")
                     for c in cards}
            done = {n: e.text for n, e in shown.items() if e.get_attribute("data-label")}
            return done if len(done) == len(names) else None

        assert wait.until(labels) == want
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "accuracy" in page and ", ".join(model.class_names) in page
        browser.save_screenshot(str(tmp_path / "serve.png"))
        shutil.copy(tmp_path / "serve.png", "/tmp/serve-screenshot.png")
    finally:
        browser.quit()


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_port_out_of_range_is_one_line_before_the_model_loads(port, capsys):
    with pytest.raises(SystemExit):
        serve.parse_args(["--port", port])
    assert f"error: --port must be from 0 to 65535, got {port} (--help lists the options)" in capsys.readouterr().err
