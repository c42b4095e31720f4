"""A bound on image tokens per image, the same in imagination, training and evaluation.

Dynamic-resolution families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) publish processors that turn
a 4000x3000 photo into 12,000-15,000 image tokens: one such image can exhaust memory in a
training batch. Every stage therefore loads these processors with a cap on their pixel
budget (`--max_image_tokens`, default 1280, the Qwen README's suggestion). The other
families bound their image tokens by design (fixed size or a fixed grid of tiles) and are
left as published. Which families need the cap, and how it translates into a processor
setting, is data: `image_limit` in pipeline/families/*.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_MAX_IMAGE_TOKENS = 1280


def model_type(model: str, revision: str | None = None) -> str | None:
    """The `model_type` of a local folder or Hub id (None when it cannot be read)."""
    config = Path(model) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model, revision=revision).model_type
    except (OSError, ValueError):
        return None


def processor_kwargs(
    model: str, max_image_tokens: int | None, revision: str | None = None
) -> dict[str, int]:
    """Processor settings that keep an image within `max_image_tokens` (0 or None: as published).

    A cap only ever lowers the model's own limit: a processor already stricter is left alone.
    """
    if not max_image_tokens:
        return {}
    from pipeline.families import family_of

    limit = (family_of(model_type(model, revision)) or {}).get("image_limit")
    if limit is None:
        return {}
    cap = int(max_image_tokens) * int(limit["pixels_per_token"])
    own = _own_limit(model, revision, limit["size_key"])
    return {} if own is not None and own <= cap else {limit["processor_kwarg"]: cap}


def _own_limit(model: str, revision: str | None, size_key: str) -> int | None:
    """The model's own image-size limit (e.g. Qwen's max_pixels), as its files set it."""
    from transformers import AutoImageProcessor

    try:
        size = AutoImageProcessor.from_pretrained(model, revision=revision).size
    except (OSError, ValueError):
        return None
    value = size.get(size_key) if isinstance(size, dict) else getattr(size, size_key, None)
    return int(value) if value else None
