"""Generate the built-in sample dataset: synthetic cartoon faces, one folder of JPEGs per class.

    python -m happysad.sample data                  # data/happy, data/sad: 60 faces each at 128 px
    python -m happysad.sample data --broken         # plus one file of each kind happysad.clean must handle
    python -m happysad.sample /tmp/faces --classes happy sad neutral --per-class 200
    python -m happysad.sample /tmp/unlike --unlike 20 --size 256   # pictures that fit no class

A fresh clone can run clean -> train -> predict on it without downloading photos. Everything about a face
varies except its expression (shape, skin tone, position, size, rotation, background, eyes, noise, JPEG
quality), so a model has to look at the mouth and the eyebrows to tell the classes apart; some smiles and
frowns are small next to the clutter and the eyebrows are noisy, so the task is learnable but not trivial.

Expressions by class name: happy smiles, sad frowns (with inner brow ends raised), neutral has a flat mouth.
Any other class name gets a wavy mouth whose number of waves depends on the class's position in --classes,
so any number of classes stays learnable. Each image is drawn from its own generator seeded with
(seed, class name, index): the output is identical for the same arguments, and a class's faces do not
change when other classes are added.
"""
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from happysad import console

CLASSES = ("happy", "sad")

# Skin tones (RGB) from light to dark, plus a cartoon yellow.
SKIN_TONES = ((255, 224, 196), (241, 194, 150), (224, 172, 125), (198, 134, 90), (160, 105, 70),
              (120, 80, 55), (90, 60, 40), (250, 205, 60))


def draw_face(rng: np.random.Generator, label: str, label_index: int, size: int) -> np.ndarray:
    """One face with the expression of `label`, as a BGR uint8 array of shape (size, size, 3)."""
    face = np.zeros((size, size, 3), np.float32)
    mask = np.zeros((size, size), np.float32)
    centre = np.array([size / 2, size / 2])
    half_width = size * rng.uniform(0.26, 0.36)
    half_height = half_width * rng.uniform(1.0, 1.3)

    skin = np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))][::-1], np.float32) + rng.normal(0, 12, 3)
    skin = np.clip(skin, 0, 255)
    ink = np.clip(skin * rng.uniform(0.05, 0.3) + rng.normal(0, 6, 3), 0, 255)  # features: a dark tint of the skin

    def point(x, y):
        """Face coordinates (-1..1 across the face, y down) -> pixel coordinates on the face layer."""
        return (int(round(centre[0] + x * half_width)), int(round(centre[1] + y * half_height)))

    def polyline(xs, ys, thickness, colour=ink):
        points = np.array([point(x, y) for x, y in zip(xs, ys)], np.int32)
        cv2.polylines(face, [points], False, colour.tolist(), thickness, cv2.LINE_AA)

    axes = (int(half_width), int(half_height))
    cv2.ellipse(face, point(0, 0), axes, 0, 0, 360, skin.tolist(), -1, cv2.LINE_AA)
    cv2.ellipse(mask, point(0, 0), axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    if rng.random() < 0.5:
        outline = max(1, round(size / 90))
        cv2.ellipse(face, point(0, 0), axes, 0, 0, 360, (skin * 0.6).tolist(), outline, cv2.LINE_AA)
    line = max(1, round(size * rng.uniform(0.022, 0.035)))

    # Eyes: dark dots or white eyes with pupils, of varying size and spacing.
    eye_x, eye_y = rng.uniform(0.3, 0.45), rng.uniform(-0.35, -0.15)
    eye_radius = half_width * rng.uniform(0.07, 0.16)
    white_eyes = rng.random() < 0.5
    for side in (-1, 1):
        x, y = point(side * eye_x, eye_y)
        if white_eyes:
            cv2.ellipse(face, (x, y), (int(eye_radius * 1.4), int(eye_radius)), 0, 0, 360,
                        (245, 245, 245), -1, cv2.LINE_AA)
        cv2.circle(face, (x, y), max(1, int(eye_radius * (0.6 if white_eyes else 1.0))), ink.tolist(), -1,
                   cv2.LINE_AA)

    # Eyebrows: slant = how much higher the inner end is than the outer end. Sad raises the inner ends;
    # the noise makes brows a hint, not a giveaway.
    slant = {"happy": 0.03, "sad": 0.13}.get(label, 0.0) + rng.normal(0, 0.045)
    if rng.random() < 0.85:
        brow_y = eye_y - rng.uniform(0.15, 0.25)
        brow_length = rng.uniform(0.2, 0.3)
        for side in (-1, 1):
            outer, inner = side * (eye_x + brow_length / 2), side * (eye_x - brow_length / 2)
            polyline([outer, inner], [brow_y + slant / 2, brow_y - slant / 2], line)

    if rng.random() < 0.5:  # nose
        nose = point(0, rng.uniform(0.0, 0.15))
        cv2.circle(face, nose, max(1, int(half_width * rng.uniform(0.04, 0.09))), (skin * 0.75).tolist(), -1,
                   cv2.LINE_AA)

    # Mouth: a curve from corner to corner. Positive bend = middle lower than the corners = a smile.
    mouth_y, mouth_half = rng.uniform(0.35, 0.55), rng.uniform(0.3, 0.5)
    xs = np.linspace(-1, 1, 25)
    if label in ("happy", "sad"):
        bend = rng.uniform(0.2, 0.45) * (1 if label == "happy" else -1)
        curve = bend * (1 - xs ** 2)
        if rng.random() < (0.3 if label == "happy" else 0.1):  # open mouth: fill between lip and curve
            lip = curve * 0.35
            outline = np.concatenate([np.stack([xs, curve], 1), np.stack([xs, lip], 1)[::-1]])
            points = np.array([point(x * mouth_half, mouth_y + y) for x, y in outline], np.int32)
            cv2.fillPoly(face, [points], (40, 30, 120), cv2.LINE_AA)
    elif label == "neutral":
        curve = rng.uniform(-0.02, 0.02) * (1 - xs ** 2)
    else:
        curve = 0.06 * np.sin((label_index + 2) * np.pi * (xs + 1) / 2)
    polyline(xs * mouth_half, mouth_y + curve, line)

    # Rotate and move the face layer into place, then blend it over the background.
    angle = rng.uniform(-25, 25)
    shift = rng.uniform(-0.12, 0.12, 2) * size
    transform = cv2.getRotationMatrix2D((size / 2, size / 2), angle, rng.uniform(0.85, 1.15))
    transform[:, 2] += shift
    face = cv2.warpAffine(face, transform, (size, size), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, transform, (size, size), flags=cv2.INTER_LINEAR)[..., None]
    image = background(rng, size) * (1 - mask) + face * mask

    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20)  # exposure
    image += rng.normal(0, rng.uniform(0, 10), image.shape)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.2))
    return np.clip(image, 0, 255).astype(np.uint8)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A solid colour, a linear gradient or a smooth noise texture (float32 BGR), sometimes with blobs."""
    kind = rng.integers(3)
    if kind == 0:
        image = np.broadcast_to(rng.uniform(0, 255, 3), (size, size, 3)).astype(np.float32)
    elif kind == 1:
        theta = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / size
        t = ((xx - 0.5) * np.cos(theta) + (yy - 0.5) * np.sin(theta) + 0.71) / 1.42
        start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        image = (start + t[..., None] * (end - start)).astype(np.float32)
    else:
        coarse = rng.uniform(0, 255, (rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.float32)
        image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    image = np.ascontiguousarray(image)
    for _ in range(rng.integers(0, 4)):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(image, centre, int(rng.uniform(0.05, 0.2) * size), rng.uniform(0, 255, 3).tolist(), -1,
                   cv2.LINE_AA)
    return np.clip(image, 0, 255)


def face_rng(seed: int, label: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(label.encode()), index])


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    assert ok, "OpenCV failed to encode a JPEG"
    return encoded.tobytes()


def write_faces(out_dir, per_class: int = 60, size: int = 128, seed: int = 0, classes=CLASSES) -> dict:
    """Write `per_class` faces per class to out_dir/<class>/<class>_NNN.jpg; returns {class: [paths]}."""
    out_dir = Path(out_dir)
    written = {}
    for label_index, label in enumerate(classes):
        folder = out_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        written[label] = []
        for index in range(per_class):
            rng = face_rng(seed, label, index)
            image = draw_face(rng, label, label_index, size)
            path = folder / f"{label}_{index:03d}.jpg"
            path.write_bytes(encode_jpeg(image, rng.integers(40, 96)))
            written[label].append(path)
    return written


UNLIKE_KINDS = ("text", "noise", "flat", "objects")
WORDS = ("invoice", "total", "meeting", "the", "quarterly", "report", "page", "section", "terms", "notes",
         "chapter", "lorem", "ipsum", "data", "table", "figure", "summary", "account", "date", "signature")


def draw_unlike(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """A picture with no face, of one of UNLIKE_KINDS, as BGR uint8: a page of printed text, pixel noise, one
    flat colour, or a few solid shapes (boxes, balls, bars) on a plain ground."""
    if kind == "noise":
        coarse = rng.integers(1, 4)
        small = rng.uniform(0, 255, (size // coarse, size // coarse, 3)).astype(np.float32)
        return cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST).astype(np.uint8)
    if kind == "flat":
        return np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), (size, size, 3)).copy()
    image = np.full((size, size, 3), rng.integers(200, 256), np.uint8)
    if kind == "text":
        scale = size / 400 * rng.uniform(0.6, 1.0)
        line = int(size * rng.uniform(0.05, 0.08))
        for y in range(line, size - line // 2, line):
            words = " ".join(rng.choice(WORDS, rng.integers(4, 9)))
            cv2.putText(image, words, (int(size * 0.04), y), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        tuple(int(v) for v in rng.integers(0, 60, 3)), max(1, int(scale * 1.5)), cv2.LINE_AA)
        return image
    for _ in range(rng.integers(1, 4)):  # objects
        colour = tuple(int(v) for v in rng.integers(0, 200, 3))
        x, y = (int(v) for v in rng.integers(size // 8, 7 * size // 8, 2))
        extent = int(size * rng.uniform(0.1, 0.3))
        shape = rng.integers(3)
        if shape == 0:
            cv2.rectangle(image, (x - extent, y - extent // 2), (x + extent, y + extent // 2), colour, -1)
        elif shape == 1:
            cv2.circle(image, (x, y), extent, colour, -1, cv2.LINE_AA)
        else:
            cv2.line(image, (x - extent, y - extent), (x + extent, y + extent), colour, max(2, extent // 4))
    return image


def write_unlike(out_dir, per_kind: int = 10, size: int = 128, seed: int = 0) -> list:
    """Write `per_kind` pictures of each of UNLIKE_KINDS to out_dir/<kind>_NNN.jpg: what "fits no class"
    should mark. Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in UNLIKE_KINDS:
        for index in range(per_kind):
            path = out_dir / f"{kind}_{index:03d}.jpg"
            path.write_bytes(encode_jpeg(draw_unlike(face_rng(seed, kind, index), kind, size), 92))
            written.append(path)
    return written


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    """A JPEG marker segment: FF, marker, big-endian length (counting itself), payload."""
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def insert_after_soi(jpeg: bytes, segment: bytes) -> bytes:
    """Make `segment` the first marker after the start-of-image (FF D8), as some encoders do."""
    return jpeg[:2] + segment + jpeg[2:]


def write_broken_files(out_dir, seed: int = 0, classes=CLASSES, size: int = 128) -> dict:
    """Add one file of each kind happysad.clean handles to the first two class folders.

    Returns {reason: [paths]} with the reasons happysad.clean reports ("corrupt", "empty", "not-image",
    "mis-extended", "too-small", "duplicate", "label-conflict") and "keep" for valid files that merely look
    odd and must survive cleaning: JPEGs whose first marker is Adobe APP14, an ICC profile (APP2) or a
    comment (Python's imghdr does not recognise any of the three), a grayscale PNG and a 16-bit PNG.
    """
    first, second = (Path(out_dir) / label for label in classes[:2])
    first.mkdir(parents=True, exist_ok=True)
    second.mkdir(parents=True, exist_ok=True)
    counter = iter(range(10_000, 20_000))  # indices no write_faces call uses, so no accidental duplicates

    def face(label, face_size=size):
        rng = face_rng(seed, label, next(counter))
        return draw_face(rng, label, classes.index(label), face_size)

    def jpeg(label, face_size=size):
        return encode_jpeg(face(label, face_size), 85)

    def png(image):
        return cv2.imencode(".png", image)[1].tobytes()

    valid, shared, twin = jpeg(classes[0]), jpeg(classes[0]), jpeg(classes[0])
    files = {
        "corrupt": {first / "truncated.jpg": valid[:len(valid) // 2]},
        "empty": {second / "empty.jpg": b""},
        "not-image": {first / "not-an-image.jpg": b"This is a text file, not a picture.\n"},
        "mis-extended": {
            first / "png-named.jpg": png(face(classes[0])),
            second / "face.webp": cv2.imencode(".webp", face(classes[1]))[1].tobytes(),
            first / "face.tiff": cv2.imencode(".tiff", face(classes[0]))[1].tobytes(),
            second / "jpeg-without-extension": jpeg(classes[1]),
        },
        "too-small": {second / "tiny.jpg": jpeg(classes[1], 8)},
        "duplicate": {first / "copy-b.jpg": twin},
        "label-conflict": {first / "same-in-both.jpg": shared, second / "same-in-both.jpg": shared},
        "keep": {
            first / "copy-a.jpg": twin,  # the first of two identical files stays
            first / "adobe-app14-first.jpg": insert_after_soi(
                jpeg(classes[0]), jpeg_segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01")),
            second / "icc-profile-first.jpg": insert_after_soi(
                jpeg(classes[1]), jpeg_segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + bytes(128))),
            first / "comment-first.jpg": insert_after_soi(
                jpeg(classes[0]), jpeg_segment(0xFE, b"drawn by happysad.sample")),
            second / "grayscale.png": png(cv2.cvtColor(face(classes[1]), cv2.COLOR_BGR2GRAY)),
            first / "16-bit.png": png(face(classes[0]).astype(np.uint16) * 257),
        },
    }
    for group in files.values():
        for path, data in group.items():
            path.write_bytes(data)
    return {reason: list(group) for reason, group in files.items()}


def main(argv=None):
    parser = console.ArgumentParser(prog="python -m happysad.sample", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to create the class folders in")
    parser.add_argument("--per-class", type=int, default=60, help="faces per class (default 60)")
    parser.add_argument("--size", type=int, default=128, help="image width and height in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same files (default 0)")
    parser.add_argument("--classes", nargs="+", default=list(CLASSES),
                        help="class folder names (default: happy sad); neutral gets a flat mouth")
    parser.add_argument("--unlike", type=int, metavar="N",
                        help="instead of faces, write N pictures of each kind that fits no class (printed text, "
                             "noise, flat colours, objects) straight into OUT_DIR")
    parser.add_argument("--broken", action="store_true",
                        help="also write one broken or tricky file of each kind happysad.clean handles")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per-class must be at least 1, got {args.per_class}")
    if not 32 <= args.size <= 1024:
        parser.error(f"--size must be between 32 and 1024 pixels, got {args.size}")
    if len(set(args.classes)) != len(args.classes) or any(
            not name or name.startswith(".") or "/" in name or "\\" in name for name in args.classes):
        parser.error("--classes must be distinct folder names, not hidden, without slashes")
    if args.broken and len(args.classes) < 2:
        parser.error("--broken needs at least two classes")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        parser.error(f"{args.out_dir} exists and is not a folder")
    for label in args.classes:
        folder = args.out_dir / label
        if folder.is_dir() and any(folder.iterdir()):
            parser.error(f"{folder} is not empty; choose a new OUT_DIR so no file is overwritten")

    if args.unlike:
        paths = write_unlike(args.out_dir, args.unlike, args.size, args.seed)
        print(f"wrote {len(paths)} pictures unlike any face ({', '.join(UNLIKE_KINDS)}) to {args.out_dir}")
        return
    written = write_faces(args.out_dir, args.per_class, args.size, args.seed, tuple(args.classes))
    total = sum(len(paths) for paths in written.values())
    print(f"wrote {total} faces ({args.per_class} per class, {args.size} px) to "
          + ", ".join(str(args.out_dir / label) for label in args.classes))
    if args.broken:
        broken = write_broken_files(args.out_dir, args.seed, tuple(args.classes), args.size)
        for reason, paths in broken.items():
            print(f"  {reason:>14}: " + ", ".join(path.relative_to(args.out_dir).as_posix() for path in paths))


if __name__ == "__main__":
    main()
