"""One rendering of a conversation into tokens, shared by training and every backend.

Published checkpoints disagree on who writes the special tokens. Llama/Mistral tokenizers
(LLaVA 1.5, LLaVA-NeXT) add BOS themselves and their chat templates do not write it;
Gemma 3's template writes `<bos>` and its tokenizer would add a second one; Qwen has no
BOS at all. TRL's collators and vLLM's chat path tokenize with `add_special_tokens=False`,
while the model cards' `processor(text=...)` adds them, so the same conversation became
different tokens in training and at inference. Here a prompt is the chat template's text,
tokenized with the tokenizer's special tokens exactly when the text does not already
start with BOS (`prompt_special_tokens`), as transformers' own
`apply_chat_template(tokenize=True)` decides it; every path uses that rule. (Writing the
BOS into the text instead is not the same: SentencePiece-style tokenizers then split the
first word differently.)

Chat templates also disagree on how an assistant turn ends: ChatML writes `<|im_end|>`,
LLaVA 1.5 writes a space and LLaVA-NeXT's template before 2025 the literal text `<\\s> `.
A model trained on those never sees the token generation stops on, so training
completions are cut after the answer and closed with the end-of-sequence token whenever
the template writes no stop token of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from itertools import takewhile


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every token id generation stops on: the generation config's EOS ids and the tokenizer's."""
    ids = getattr(generation_config, "eos_token_id", None) if generation_config else None
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def prompt_special_tokens(tokenizer, text: str) -> bool:
    """Whether `text` (a rendered prompt) is tokenized with the tokenizer's special tokens.

    Yes unless the template wrote the BOS itself: then a second one would be added.
    """
    return not (tokenizer.bos_token and text.startswith(tokenizer.bos_token))


def prompt_text(processor, messages: Sequence[dict]) -> str:
    """The generation prompt for `messages`: the chat template's text."""
    return processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def prompt_ids(processor, messages: Sequence[dict]) -> list[int]:
    """The prompt's token ids, before the processor expands image placeholders."""
    text = prompt_text(processor, messages)
    tokenizer = processor.tokenizer
    return tokenizer(text, add_special_tokens=prompt_special_tokens(tokenizer, text))["input_ids"]


PROBE = [{"role": "user", "content": [{"type": "text", "text": "a"}]}]


def server_adds_bos(model_dir: str) -> bool:
    """Whether a server that renders `model_dir`'s template must add special tokens.

    vLLM's chat endpoint tokenizes the rendered template with none; for a template that
    leaves BOS to the tokenizer (LLaVA 1.5, LLaVA-NeXT), the request must ask for them
    (`add_special_tokens`) to get the prompt training saw.
    """
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    text = prompt_text(processor, PROBE)
    tokenizer = processor.tokenizer
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    return (
        tokenizer(text, add_special_tokens=prompt_special_tokens(tokenizer, text))["input_ids"]
        != plain
    )


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
    whole = processor.apply_chat_template(list(prompt) + list(completion), tokenize=False)
    answer = _last_text(completion)
    if whole.startswith(head):
        tail = whole[len(head) :]
    else:
        # The written turn does not continue the generation prompt (LLaVA-OneVision writes
        # "assistant \n" but prompts with "assistant\n"): train on what follows the prompt
        # inference sends, from the answer on.
        same = takewhile(lambda pair: pair[0] == pair[1], zip(head, whole, strict=False))
        start = whole.find(answer, sum(1 for _ in same)) if answer else -1
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


def with_reward_token(prompt: list[dict], token: str) -> list[dict]:
    """A copy of the conversation with `token ` before the first user turn's text.

    The paper wrote `[INST] <image>\\n{token} {question} [/INST]`: the token opens the
    user's words, after the image, inside the model's own chat format.
    """
    prompt = copy.deepcopy(prompt)
    for message in prompt:
        if message["role"] != "user":
            continue
        if isinstance(message["content"], str):
            message["content"] = f"{token} {message['content']}"
            return prompt
        for part in message["content"]:
            if part.get("type") == "text":
                part["text"] = f"{token} {part['text']}"
                return prompt
        message["content"].append({"type": "text", "text": token})
        return prompt
    raise ValueError("the prompt has no user turn to put the reward token in")
