"""Image folders: list them, and open an image with an error that names the file."""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# PIL's switch for padding a cut-off file out with grey is process-wide, and libraries turn
# it on when imported (lmms-eval does). A cut-off image must stay an error here, not a
# different picture under the same key: it is switched off while we decode.
_STRICT = threading.Lock()


def list_images(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if directory.is_file():
        raise FileNotFoundError(f"--images {directory}: is a file; give the folder of images")
    if not directory.is_dir():
        raise FileNotFoundError(f"--images {directory}: image folder not found; check the path")
    images = sorted(p for p in directory.iterdir() if p.suffix.lower() in EXTENSIONS)
    if not images:
        raise FileNotFoundError(
            f"--images {directory}: no images ({', '.join(EXTENSIONS)}) in this folder"
        )
    return images


def open_image(path: str | Path) -> Image.Image:
    """An RGB image, or a ValueError naming the file (missing, truncated, not an image)."""
    try:
        with _STRICT, Image.open(path) as image:
            lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
            try:
                return image.convert("RGB")
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    except FileNotFoundError as err:
        raise ValueError(f"{path}: image not found") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: cannot read image ({err}); replace or remove it") from err
