"""Load, check, convert and mix the training data for a METHOD, before any training starts."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk
from pipeline.formats import PROVENANCE

# Columns each dataset config must have (pipeline/formats.py writes them).
REQUIRED = {
    "sft": ("images", "messages"),
    "dpo": ("images", "prompt", "chosen", "rejected"),
    "crl": ("images", "prompt", "completion", "reward"),
    "multiturn": ("images", "messages"),
}


class DataError(ValueError):
    """Training data that cannot be used; the message names the folder, config and fix."""


def load_dataset_dict(path: str | Path) -> DatasetDict:
    """The DatasetDict saved at `path`, or at `path`/dataset.

    `make imagine` and `macaroon import --out DIR` write DIR/dataset beside their records
    and summary; either DIR or DIR/dataset names that data, so both are taken. DIR wins
    when it is itself a saved DatasetDict.
    """
    path = Path(path)
    for folder in (path, path / "dataset"):
        if (folder / "dataset_dict.json").is_file():
            return load_from_disk(str(folder))
    raise DataError(
        f"{path}: not a saved DatasetDict, and holds none in {path / 'dataset'}; pass the "
        "folder given to `make imagine OUT=DIR` or `macaroon import ... --out DIR` (DIR or "
        "DIR/dataset)"
    )


def select(data: DatasetDict, config: str, where: str) -> Dataset:
    """The `config` split of `data`, checked for the columns training needs."""
    if config not in data:
        raise DataError(
            f"{where}: has no '{config}' data (it has {', '.join(data) or 'none'}); "
            f"this METHOD trains on '{config}'"
        )
    dataset = data[config]
    missing = [c for c in REQUIRED[config] if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{where}: '{config}' is missing column(s) {', '.join(missing)}; expected "
            f"{', '.join(REQUIRED[config])} (see pipeline/formats.py)"
        )
    if len(dataset) == 0:
        raise DataError(f"{where}: '{config}' has no rows")
    return dataset


def as_prompt_completion(dataset: Dataset) -> Dataset:
    """messages -> prompt (all but the last turn) + completion (the last assistant turn).

    Training on the last response only is what the original code did for SFT and for
    multi-turn data, and prompt-completion masking works with any chat template.
    """
    if "messages" not in dataset.column_names:
        return dataset

    def split(row: dict) -> dict:
        return {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}

    return dataset.map(split, remove_columns=["messages"])


def mix(preference: Dataset, general: Dataset | None, ratio: float, seed: int) -> Dataset:
    """All general rows plus `ratio` of the preference rows, sampled with `seed`, shuffled."""
    if ratio < 1:
        keep = max(1, round(len(preference) * ratio))
        preference = preference.shuffle(seed=seed).select(range(keep))
    if general is None:
        return preference.shuffle(seed=seed)
    shared = [c for c in preference.column_names if c in general.column_names]
    preference, general = preference.select_columns(shared), general.select_columns(shared)
    general = general.cast(preference.features)
    return concatenate_datasets([preference, general]).shuffle(seed=seed)


def check_images(dataset: Dataset, where: str) -> None:
    """Open every image now, so a broken one stops the run before training, by row."""
    from PIL import Image as PILImage

    from datasets import Image, Sequence

    raw = dataset.select_columns(["images"]).cast_column("images", Sequence(Image(decode=False)))
    bad = []
    for index, row in enumerate(raw):
        for image in row["images"]:
            try:
                source = image["bytes"] or image["path"]
                with PILImage.open(_as_file(source)) as opened:
                    opened.load()
            except Exception as err:  # noqa: BLE001 (any decoding failure is the user's data)
                bad.append(f"  row {index}: {type(err).__name__}: {err}")
    if bad:
        listed = "\n".join(bad[:20]) + (f"\n  and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise DataError(f"{where}: {len(bad)} image(s) fail to load; fix or drop them:\n{listed}")


def _as_file(source: bytes | str):
    import io

    return io.BytesIO(source) if isinstance(source, bytes) else source


def drop_provenance(dataset: Dataset) -> Dataset:
    return dataset.remove_columns([c for c in PROVENANCE if c in dataset.column_names])
