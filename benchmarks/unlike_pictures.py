"""Write real pictures unlike any happy or sad photo (a cat, a horse, coffee, a rocket, the moon, a page of
text, textures, micrographs...) into a folder, for `feature_sets.py --unlike-dir`.

    pip install scikit-image    # for this benchmark only; happysad does not need it
    python benchmarks/unlike_pictures.py /tmp/unlike-real

Why: `happysad.sample --unlike` draws text, noise, flat colours and shapes; a served model is also shown
photos of other things. The pictures that scikit-image and scikit-learn ship inside their wheels are real ones
of that kind, and they are there offline. The two portraits (astronaut, camera) are left out: a person is
what the classes are about. So are the second view of the motorcycle and the grey copy of the chessboard.
"""
import argparse
from pathlib import Path

import cv2
import numpy as np

LEFT_OUT = {"astronaut", "camera", "motorcycle_right", "chessboard_GRAY"}


def as_rgb8(picture: np.ndarray) -> np.ndarray:
    """Any of the bundled arrays (grey or RGB(A), uint8, bool or float) as RGB uint8."""
    picture = np.asarray(picture)
    if picture.ndim == 2:
        picture = np.stack([picture] * 3, axis=-1)
    picture = picture[..., :3]
    if picture.dtype != np.uint8:
        picture = (255 * picture.astype(np.float64) / max(float(picture.max()), 1e-12)).astype(np.uint8)
    return picture


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write PNG files into (created)")
    args = parser.parse_args(argv)
    try:
        import skimage.data
        import skimage.io
    except ImportError:
        raise SystemExit("error: this benchmark needs scikit-image: pip install scikit-image")
    from sklearn.datasets import load_sample_images

    args.out.mkdir(parents=True, exist_ok=True)
    bundled = Path(skimage.data.__file__).parent
    pictures = {path.stem: skimage.io.imread(path) for path in sorted(bundled.iterdir())
                if path.suffix in (".png", ".jpg") and path.stem not in LEFT_OUT}
    samples = load_sample_images()
    pictures.update({Path(name).stem: image for name, image in zip(samples.filenames, samples.images)})
    for name, picture in pictures.items():
        cv2.imwrite(str(args.out / f"{name}.png"), cv2.cvtColor(as_rgb8(picture), cv2.COLOR_RGB2BGR))
    print(f"{len(pictures)} pictures in {args.out}")


if __name__ == "__main__":
    main()
