"""The CRL collator: TRL's vision-language collator with the reward token in the prompt."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from pipeline.formats import REWARDS


@dataclass
class CRLCollator(DataCollatorForVisionLanguageModeling):
    """Prefix each example's first user turn with its reward token, then collate as TRL does.

    Rows are prompt-completion with a `reward` column (`good` / `bad`). TRL's collator then
    masks the prompt (reward token and image tokens included) and the padding, so the loss
    covers the response only, and passes through whatever the processor returns
    (`pixel_values`, `image_sizes`, `image_grid_thw`, ...).
    """

    reward_tokens: dict[str, str] = field(default_factory=lambda: {r: r for r in REWARDS})
    completion_only_loss: bool = True

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return super().torch_call([self.condition(example) for example in examples])

    def condition(self, example: dict[str, Any]) -> dict[str, Any]:
        example = dict(example)
        reward = example.pop("reward")
        if reward not in self.reward_tokens:
            raise ValueError(f"reward {reward!r} is not one of {sorted(self.reward_tokens)}")
        example["prompt"] = with_reward_token(example["prompt"], self.reward_tokens[reward])
        return example


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
