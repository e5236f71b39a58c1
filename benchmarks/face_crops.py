"""A folder of small grey faces cut from a folder of photos, for measuring backbones on faces.

    python benchmarks/face_crops.py ../shared/datasets/happysad-web /tmp/web-faces [--size 48]

Why: the expression backbone is meant for folders of faces, and the project has no real face photos of its
own. The largest face of each photo (happysad.faces.crop, OpenCV's Haar cascade, with its margin) is written
as a SIZE×SIZE grey PNG under the photo's class; photos where no face is found, or that do not decode, are
left out and counted. The source folder is only read. Then run benchmarks/accuracy.py on the output.
"""
import argparse
from pathlib import Path

import cv2

from happysad import data, faces


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=48)
    args = parser.parse_args(argv)
    class_names = data.find_classes(args.source)
    listed, _ = data.list_images(args.source, class_names)
    written, no_face, unreadable = 0, 0, 0
    for path, label in zip(listed.paths, listed.labels):
        picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if picture is None:
            unreadable += 1
            continue
        rgb = cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)
        if faces.largest_face(rgb) is None:
            no_face += 1
            continue
        grey = cv2.cvtColor(faces.crop(rgb), cv2.COLOR_RGB2GRAY)
        target = args.out / class_names[label] / (Path(path).stem + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), cv2.resize(grey, (args.size, args.size), interpolation=cv2.INTER_AREA))
        written += 1
    print(f"{written} faces written to {args.out}; {no_face} photos without a face, {unreadable} unreadable")


if __name__ == "__main__":
    main()
