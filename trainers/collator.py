"""Collators: TRL's vision-language collators fed the prompts inference sends.

TRL's collators render conversations themselves and tokenize them with no special tokens,
so on LLaVA the trained prompt lacks the BOS that inference (and the model card) puts
first, and an assistant turn that the template does not close with EOS trains a model
that never stops. Here every conversation is rendered by pipeline/chat.py, the same
function the backends use, and handed to TRL as finished prompt and completion strings;
prompts are tokenized by the rule of pipeline/chat.py (`PromptTokens`). TRL then masks the
prompt (reward token and image tokens included) and the padding, and passes through
whatever the processor returns (`pixel_values`, `image_sizes`, `image_grid_thw`,
`token_type_ids`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl.trainer.dpo_trainer import DataCollatorForVisionPreference
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from pipeline.chat import completion_text, prompt_special_tokens, prompt_text, with_reward_token
from pipeline.formats import REWARDS


class PromptTokens:
    """The processor, as TRL's collators call it, with prompts tokenized by our rule.

    TRL tokenizes prompts (its left-padded call) and completions (right-padded) with
    `add_special_tokens=False`. Prompts get the tokenizer's special tokens exactly when
    they do not start with BOS, as at inference (pipeline/chat.py); completions stay as
    TRL tokenizes them.
    """

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, *args, **kwargs):
        texts = kwargs.get("text")
        if kwargs.get("padding_side") == "left" and texts:
            special = {prompt_special_tokens(self.processor.tokenizer, t) for t in texts}
            if len(special) > 1:  # one template renders every prompt alike
                raise ValueError("prompts disagree on whether they start with BOS")
            kwargs["add_special_tokens"] = special.pop()
        return self.processor(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


class _Rendered:
    """Rows rendered by `render` (through pipeline/chat.py) before TRL collates them, with
    prompts tokenized by our rule (`PromptTokens`)."""

    def __post_init__(self) -> None:
        self.processor = PromptTokens(self.processor)

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return super().torch_call([self.render(example) for example in examples])


@dataclass
class PromptCompletionCollator(_Rendered, DataCollatorForVisionLanguageModeling):
    """SFT, multi-turn and CRL rows (prompt + completion); CRL rows also carry `reward`.

    A row with a `reward` gets that reward's token before the user's words (the paper's
    placement); the loss covers the completion and its stop token only.
    """

    stop_ids: list[int] = field(default_factory=list)
    reward_tokens: dict[str, str] = field(default_factory=lambda: {r: r for r in REWARDS})
    completion_only_loss: bool = True

    def render(self, example: dict[str, Any]) -> dict[str, Any]:
        prompt = example["prompt"]
        if "reward" in example:
            reward = example["reward"]
            if reward not in self.reward_tokens:
                raise ValueError(f"reward {reward!r} is not one of {sorted(self.reward_tokens)}")
            prompt = with_reward_token(prompt, self.reward_tokens[reward])
        prompt, completion = completion_text(
            self.processor, prompt, example["completion"], self.stop_ids
        )
        return {"images": example["images"], "prompt": prompt, "completion": completion}


@dataclass
class PreferenceCollator(_Rendered, DataCollatorForVisionPreference):
    """DPO rows: the same prompt as inference, chosen and rejected ending on a stop token."""

    stop_ids: list[int] = field(default_factory=list)

    def render(self, example: dict[str, Any]) -> dict[str, Any]:
        prompt = example["prompt"]
        _, chosen = completion_text(self.processor, prompt, example["chosen"], self.stop_ids)
        _, rejected = completion_text(self.processor, prompt, example["rejected"], self.stop_ids)
        return {"images": example["images"], "prompt": prompt_text(self.processor, prompt),
                "chosen": chosen, "rejected": rejected}  # fmt: skip
