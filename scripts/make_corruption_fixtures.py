"""Reference outputs of the ImageNet-C corruptions for tests/test_corruptions.py.

    pip install imagecorruptions==1.1.2   # the reference (bethgelab); pulls scikit-image and opencv-python
    python scripts/make_corruption_fixtures.py

imagecorruptions 1.1.2 (2020) no longer imports as it is: it imports `pkg_resources` (gone from setuptools >= 81),
uses `np.float_` (gone in numpy 2) and scikit-image's `multichannel=` (gone in 0.19). The shims below restore
exactly those three names and nothing else, so the reference code runs unchanged. Each corruption runs after
`np.random.seed(seed)` on a fixed 32 x 32 image (`fixture_image`), every severity; the outputs go to
tests/fixtures/corruptions/reference.npz with the versions that made them.
"""

from __future__ import annotations

import json
import os
import sys
import types

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "corruptions")


def fixture_image(size: int = 32) -> np.ndarray:
    """A deterministic test image: colour gradients, a bright disk, dark stripes and a saturated square."""
    ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
    image = np.stack([xs, ys, 1 - (xs + ys) / 2], axis=-1) * 200 + 20
    image[(xs - 0.6) ** 2 + (ys - 0.4) ** 2 < 0.05] = (250, 240, 200)
    image[(np.arange(size)[None, :] % 6 < 2) & (ys > 0.7)] = (10, 10, 30)
    image[2:9, 2:9] = (200, 20, 20)
    return image.astype(np.uint8)


def seed_of(name_index: int, severity: int) -> int:
    return 1000 * name_index + severity


def _load_reference():
    import importlib.util

    sys.modules.setdefault("pkg_resources", types.SimpleNamespace())
    spec = importlib.util.find_spec("imagecorruptions")
    package_dir = os.path.dirname(spec.origin)
    sys.modules["pkg_resources"].resource_filename = lambda _, path: os.path.join(package_dir, path)
    if not hasattr(np, "float_"):
        np.float_ = np.float64
    import imagecorruptions
    from imagecorruptions import corruptions as reference
    from skimage.filters import gaussian

    def gaussian_compat(image, sigma, multichannel=False, **kwargs):
        return gaussian(image, sigma, channel_axis=-1 if multichannel else None, **kwargs)

    reference.gaussian = gaussian_compat
    return imagecorruptions


def main() -> None:
    imagecorruptions = _load_reference()
    import cv2
    import PIL
    import scipy
    import skimage

    image = fixture_image()
    names = imagecorruptions.get_corruption_names("all")
    arrays = {"input": image}
    for index, name in enumerate(names):
        for severity in range(1, 6):
            np.random.seed(seed_of(index, severity))
            arrays[f"{name}_{severity}"] = imagecorruptions.corrupt(image, severity=severity, corruption_name=name)
    os.makedirs(OUT, exist_ok=True)
    np.savez_compressed(os.path.join(OUT, "reference.npz"), **arrays)
    versions = {
        "imagecorruptions": "1.1.2",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "opencv-python": cv2.__version__,
        "pillow": PIL.__version__,
        "names": names,
        "seed": "1000 * (index in names) + severity, via np.random.seed",
    }
    with open(os.path.join(OUT, "reference.json"), "w") as handle:
        json.dump(versions, handle, indent=2)
    print(f"wrote {len(arrays)} arrays to {OUT}")


if __name__ == "__main__":
    main()
