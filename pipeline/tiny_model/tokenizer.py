"""A small tokenizer of the family's own class, trained on the project's text.

The published tokenizer's class is kept (LlamaTokenizer, Qwen2Tokenizer, GemmaTokenizer,
GPT2Tokenizer), so pre-tokenization, decoding, and whether BOS/EOS are added behave as the
published checkpoint's do; only the learnt vocabulary is smaller. Special tokens keep
their published order relative to the vocabulary: `special` ones come first (Llama's
`<unk> <s> </s>`, Gemma's `<pad> <eos> <bos> ...`), `added` ones after it (Qwen's ChatML
tokens, LLaVA's `<image>`).
"""

from __future__ import annotations

import json

from tokenizers import AddedToken, pre_tokenizers, trainers

# Byte-fallback vocabularies (SentencePiece style: Llama, Mistral, Gemma) hold one token per
# byte, so any text encodes without <unk>, as the published vocabularies do.
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def build_tokenizer(spec: dict, vocab_size: int, texts: list[str]):
    """A trained tokenizer of `spec['class']` with the family's special tokens and roles."""
    import transformers

    cls = getattr(transformers, spec["class"])
    roles = {f"{role}_token": token for role, token in spec["roles"].items()}
    special = list(spec.get("special", []))
    byte_fallback = spec.get("byte_fallback", False)
    backend = cls(**roles)._tokenizer  # the class's own model, normalizer and pre-tokenizer
    if byte_fallback:
        # SentencePiece vocabularies hold pieces within words ("▁What", never "at▁col"):
        # learn the merges on words, then encode with the class's own pre-tokenizer.
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme=spec.get("prepend_scheme", "first"), split=True
        )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special + (BYTE_TOKENS if byte_fallback else []),
        initial_alphabet=[] if byte_fallback else pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Pieces the published vocabulary holds whole (Gemma's runs of newlines, which vLLM
    # looks up by name): frequent enough in the training text to be learnt as tokens.
    pieces = spec.get("vocab_pieces", [])
    backend.train_from_iterator(texts + [p for p in pieces for _ in range(200)], trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    missing = [p for p in pieces if p not in model["vocab"]]
    if missing:
        raise ValueError(f"the trained vocabulary lacks {missing!r}: raise the vocabulary size")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = cls(
        vocab=model["vocab"],
        merges=merges,
        **roles,
        # Named tokens some processors read as attributes (tokenizer.image_token, ...).
        extra_special_tokens=dict(spec.get("extra_special_tokens", {})) or None,
        **spec.get("kwargs", {}),
    )
    # Published special tokens are never split and never normalized.
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    added = [AddedToken(t, special=True, normalized=False) for t in spec.get("added", [])]
    tokenizer.add_tokens(added)
    tokenizer.padding_side = spec.get("padding_side", "right")
    if "model_max_length" in spec:
        tokenizer.model_max_length = spec["model_max_length"]
    return tokenizer
