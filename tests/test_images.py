"""happysad.images owns two facts every stage reads: which formats training reads (FORMATS) and how a file
becomes a model's input (Preprocessing). These tests fail if a stage starts to disagree with them."""
import io
import struct
import zlib

import cv2
import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest

from happysad import clean, data, images, sample, serve
from happysad.runtime import tf

SIZE = 48


def encoded_face(extension: str) -> bytes:
    face = sample.draw_face(np.random.default_rng(0), "happy", 0, SIZE)
    ok, encoded = cv2.imencode(extension, face)
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize("image_format", images.FORMATS, ids=lambda image_format: image_format.name)
def test_every_format_training_reads_is_listed_kept_by_clean_and_accepted_by_serve(image_format, tmp_path):
    encoded = encoded_face(image_format.extensions[0])
    assert images.trainable_format(encoded) == image_format
    other = next(f for f in images.FORMATS if f is not image_format).extensions[0]
    folder = tmp_path / "happy"
    folder.mkdir()
    for extension in (*image_format.extensions, other):
        (folder / f"face{extension}").write_bytes(encoded)
    listed, skipped = data.list_images(tmp_path, ["happy"])
    assert len(listed) == len(image_format.extensions) + 1 and not skipped
    for extension in image_format.extensions:
        assert clean.check_file(tmp_path, f"happy/face{extension}", "happy", 32)[0] is None
    misnamed = clean.check_file(tmp_path, f"happy/face{other}", "happy", 32)[0]
    assert (misnamed.reason, misnamed.convert_to) == ("mis-extended", image_format.extensions[0])
    assert serve.header_size(encoded) == (image_format.name, SIZE * SIZE)
    assert images.Preprocessing(16).decode(encoded).shape == (16, 16, 3)


def test_a_format_training_skips_is_left_out_by_every_stage(tmp_path):
    encoded = encoded_face(".webp")
    assert images.trainable_format(encoded) is None and not images.is_trainable_name("face.webp")
    (tmp_path / "happy").mkdir()
    (tmp_path / "happy" / "face.webp").write_bytes(encoded)
    (tmp_path / "happy" / "face.jpg").write_bytes(encoded_face(".jpg"))
    listed, skipped = data.list_images(tmp_path, ["happy"])
    assert [p.endswith("face.jpg") for p in listed.paths] == [True] and len(skipped) == 1
    finding = clean.check_file(tmp_path, "happy/face.webp", "happy", 32)[0]
    assert (finding.reason, finding.convert_to) == ("mis-extended", ".png")
    with pytest.raises(serve.Rejected, match="JPEG, PNG, GIF or BMP"):
        serve.header_size(encoded)


def test_preprocessing_settings_name_their_caches_and_round_trip_through_the_record_form():
    settings = [images.Preprocessing(size, faces) for size in (32, 64) for faces in (False, True)]
    settings += [images.Preprocessing(32, face_beside=True), images.Preprocessing(32, upright=False)]
    assert len({preprocessing.key for preprocessing in settings}) == len(settings)
    with pytest.raises(ValueError, match="choose one"):  # a face crop cannot also keep the whole picture
        images.Preprocessing(32, faces=True, face_beside=True)
    for preprocessing in settings:
        assert images.Preprocessing.from_record(preprocessing.to_record()) == preprocessing
    with pytest.raises(AttributeError):
        settings[0].image_size = 128  # frozen: a stage cannot change it under the others


def with_orientation(pixels: np.ndarray, orientation: int, image_format: str) -> bytes:
    """RGB pixels saved by Pillow with an EXIF orientation tag, as a phone saves a photo it held sideways."""
    exif = PIL.Image.Exif()
    exif[images.ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, image_format, exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_photos_are_turned_as_their_exif_orientation_says_as_pillow_and_viewers_turn_them(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (12, 20, 3), dtype=np.uint8)  # not square
    encoded = with_orientation(pixels, orientation, "PNG")  # lossless: the turn is checked pixel for pixel
    shown = np.asarray(PIL.ImageOps.exif_transpose(PIL.Image.open(io.BytesIO(encoded))))
    np.testing.assert_array_equal(images.decode_pixels(encoded).numpy(), shown)
    np.testing.assert_array_equal(images.decode_pixels(encoded, upright=False).numpy(), pixels)


def test_every_stage_sees_a_sideways_jpeg_upright_and_older_models_keep_what_they_learnt(tmp_path):
    face = cv2.cvtColor(sample.draw_face(np.random.default_rng(0), "happy", 0, SIZE), cv2.COLOR_BGR2RGB)
    sideways = with_orientation(np.ascontiguousarray(np.rot90(face, 1)), 6, "JPEG")  # stored turned, tagged 6
    upright = images.Preprocessing(SIZE).decode(sideways).numpy()
    assert np.abs(upright * 255 - face).mean() < 5  # JPEG's loss alone
    for path_tensor_eagerly in (False, True):  # predict and serve read one file eagerly, training in tf.data
        path = tmp_path / "sideways.jpg"
        path.write_bytes(sideways)
        if path_tensor_eagerly:
            read = images.Preprocessing(SIZE).load(str(path)).numpy()
        else:
            read = next(iter(tf.data.Dataset.from_tensor_slices([str(path)]).map(images.Preprocessing(SIZE).load)))
        np.testing.assert_array_equal(np.asarray(read), upright)
    np.testing.assert_array_equal(images.Preprocessing(SIZE).decode(tf.constant(sideways)).numpy(), upright)  # serve
    old = images.Preprocessing.from_record({"image_size": SIZE, "faces": False})  # a 0.10 record says nothing
    assert not old.upright
    assert np.abs(old.decode(sideways).numpy() * 255 - face).mean() > 10
    assert images.exif_orientation(b"not an image") == 1


def test_a_header_pillow_refuses_to_open_is_read_as_stored():
    """Pillow's guard against huge images raises on a 400-megapixel header; TensorFlow decodes such files, so
    the orientation is taken as stored rather than failing the run."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(PIL.Image.DecompressionBombError):
        PIL.Image.open(io.BytesIO(png))
    assert images.exif_orientation(png) == 1
