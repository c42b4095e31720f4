"""One rendering of a conversation into text, shared by training and every backend.

Published checkpoints disagree on who writes the special tokens. Llama/Mistral tokenizers
(LLaVA 1.5, LLaVA-NeXT) add BOS themselves and their chat templates do not write it;
Gemma 3's template writes `<bos>` and its tokenizer would add a second one; Qwen has no
BOS at all. TRL's collators and vLLM's chat path tokenize with `add_special_tokens=False`,
while `processor(text=...)` adds them, so the same conversation can become different
tokens in training and at inference. Here the prompt is rendered once, as the published
model card feeds it (the template's text, plus the BOS the tokenizer would add when the
template leaves it out), and every path tokenizes that text with no special tokens added.

Chat templates also disagree on how an assistant turn ends: ChatML writes `<|im_end|>`,
LLaVA 1.5 writes a space and LLaVA-NeXT's published template the literal text `<\\s> `.
A model trained on the latter never sees the token generation stops on, so training
completions are cut after the answer and closed with the end-of-sequence token whenever
the template writes no stop token of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from itertools import takewhile


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every token id generation stops on: the generation config's EOS ids and the tokenizer's."""
    ids = getattr(generation_config, "eos_token_id", None) if generation_config else None
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def adds_bos(tokenizer) -> bool:
    """Whether encoding with special tokens puts the tokenizer's BOS first (Llama, Gemma)."""
    return _adds_bos(tokenizer)


@lru_cache(maxsize=32)
def _adds_bos(tokenizer) -> bool:
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def with_bos(tokenizer, text: str) -> str:
    """`text` led by the BOS the tokenizer would add, unless the template wrote it already."""
    if adds_bos(tokenizer) and not text.startswith(tokenizer.bos_token):
        return tokenizer.bos_token + text
    return text


def prompt_text(processor, messages: Sequence[dict]) -> str:
    """The generation prompt for `messages`, to be tokenized with no special tokens added."""
    text = processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return with_bos(processor.tokenizer, text)


PROBE = [{"role": "user", "content": [{"type": "text", "text": "a"}]}]


def server_adds_bos(model_dir: str) -> bool:
    """Whether a server that renders `model_dir`'s template must add the tokenizer's BOS.

    vLLM's chat endpoint tokenizes the rendered template with no special tokens; for a
    template that leaves BOS to the tokenizer (LLaVA 1.5, LLaVA-NeXT), the request must
    ask for them (`add_special_tokens`) to get the prompt training saw.
    """
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    text = processor.apply_chat_template(PROBE, add_generation_prompt=True, tokenize=False)
    return with_bos(processor.tokenizer, text) != text


def completion_text(
    processor, prompt: Sequence[dict], completion: Sequence[dict], stop_ids: Sequence[int]
) -> tuple[str, str]:
    """(prompt text, completion text) for training, the completion ending on a stop token.

    The prompt is exactly `prompt_text`, what inference sends. The completion is what the
    template writes after it. When that holds none of `stop_ids`, it is cut right after
    the answer's own text and the EOS token is added, so the trained model learns to stop.
    """
    tokenizer = processor.tokenizer
    head = prompt_text(processor, prompt)
    whole = with_bos(
        tokenizer,
        processor.apply_chat_template(list(prompt) + list(completion), tokenize=False),
    )
    answer = _last_text(completion)
    if whole.startswith(head):
        tail = whole[len(head) :]
    else:
        # The written turn does not continue the generation prompt (LLaVA-OneVision writes
        # "assistant \n" but prompts with "assistant\n"): train on what follows the prompt
        # inference sends, from the answer on.
        same = takewhile(lambda pair: pair[0] == pair[1], zip(head, whole, strict=False))
        shared = sum(1 for _ in same)
        start = whole.find(answer, shared) if answer else -1
        if start < 0:
            raise ValueError(f"cannot find the answer in the rendered conversation: {whole!r}")
        tail = whole[start:]
    stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids]
    if any(stop and stop in tail for stop in stops):
        return head, tail
    end = tail.rfind(answer) + len(answer) if answer and answer in tail else len(tail.rstrip())
    return head, tail[:end] + tokenizer.eos_token


def _last_text(messages: Sequence[dict]) -> str:
    content = messages[-1]["content"] if messages else ""
    if isinstance(content, str):
        return content
    texts = [part.get("text") or "" for part in content if part.get("type") == "text"]
    return texts[-1] if texts else ""
