"""Image folders: list them, and open an image with an error that names the file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


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
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise ValueError(f"{path}: image not found") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: cannot read image ({err}); replace or remove it") from err
