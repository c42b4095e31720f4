"""What `macaroon train` needs beyond TRL's own configs: the METHOD, data and conditioning.

A run is parsed into three dataclasses, each option with one name in YAML and on the
command line: `MacaroonTrainConfig` (below), TRL's `ModelConfig` (model, LoRA) and TRL's
`SFTConfig`, `DPOConfig` or `GRPOConfig` (optimiser, schedule, batch, output_dir, ...);
METHOD=grpo adds a fourth, `RewardJudgeConfig` (the judge that gives the reward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline import DEFAULT_CRITERIA_DIR, DEFAULT_PROMPTS_DIR
from pipeline.adapters import RECORD_FILE  # noqa: F401 - trainers read it from here
from pipeline.families.image_tokens import DEFAULT_MAX_IMAGE_TOKENS
from pipeline.judge import JudgeConfig

# METHOD -> (dataset config it trains on, TRL trainer). docs/DESIGN.md §7.
METHODS = {
    "crl": ("crl", "sft"),  # conditional RL: reward token + response, SFT loss
    "sft": ("sft", "sft"),  # preferred responses only
    "dpo": ("dpo", "dpo"),  # DPO + NLL of the preferred response
    "multiturn": ("multiturn", "sft"),  # question, rejected, feedback -> preferred
    "sft_after_multiturn": ("sft", "sft"),  # SFT starting from the multiturn adapter
    # online RL: questions (+ images, types) -> sampled answers -> rubric judge's verdict
    "grpo": ("prompts", "grpo"),
}
INIT_METHODS = ("crl", "sft")  # what --init_adapter may start GRPO from


@dataclass
class MacaroonTrainConfig:
    """`macaroon train`: the METHOD, its data, and the CRL conditioning."""

    method: str = field(default="crl", metadata={"help": f"One of {', '.join(METHODS)}."})
    data: str = field(
        default="outputs/imagine/dataset",
        metadata={
            "help": "Preference data: the OUT folder of `make imagine` / `macaroon import --out`, "
            "or its OUT/dataset (a saved DatasetDict)."
        },
    )
    general: str | None = field(
        default=None,
        metadata={
            "help": "General-purpose data mixed in: a folder as for --data, or the original "
            "VLfeedback_dataset(_seperate).json / vlfeedback_nlf_conversations.jsonl."
        },
    )
    general_ratio: float = field(
        default=1.0,
        metadata={
            "help": "As in the paper: all general data is kept and the preference data is "
            "subsampled to this share of itself (seeded by --seed)."
        },
    )
    reward_tokens: list[str] = field(
        default_factory=lambda: ["good", "bad"],
        metadata={"help": "CRL conditioning for the preferred and the rejected response."},
    )
    reward_special_tokens: bool = field(
        default=False,
        metadata={
            "help": "Condition on new vocabulary entries <|good|> / <|bad|> whose embedding rows "
            "train, instead of the plain words (the paper's choice, the default)."
        },
    )
    init_adapter: str | None = field(
        default=None,
        metadata={"help": "grpo: start from this CRL or SFT adapter (a `make train` OUT); "
                  "from CRL, every prompt keeps its `good` conditioning, as evaluation does."},
    )  # fmt: skip
    multiturn_adapter: str | None = field(
        default=None,
        metadata={"help": "sft_after_multiturn: the adapter folder of a multiturn run."},
    )
    max_image_tokens: int = field(
        default=DEFAULT_MAX_IMAGE_TOKENS,
        metadata={"help": "Cap on image tokens per image for dynamic-resolution models "
                  "(Qwen2-VL, Qwen2.5-VL, Qwen3-VL), as in imagination and evaluation; 0 = as "
                  "published."},
    )  # fmt: skip
    train_last_layers: int | None = field(
        default=None,
        metadata={"help": "Full fine-tuning of only the last N decoder layers of the language "
                  "model; every other weight stays frozen. Needs --use_peft false. The original "
                  "MACAROON DPO trained the last 10 (configs/train/dpo_original.yaml). Unset: "
                  "LoRA, or the whole model with --use_peft false."},
    )  # fmt: skip
    merge: bool = field(
        default=False,
        metadata={"help": "Also save merged full weights (safetensors) in OUTPUT_DIR/merged."},
    )
    check_images: bool = field(
        default=True, metadata={"help": "Open every image before training starts."}
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"--method {self.method!r}: unknown; choose one of {', '.join(METHODS)}"
            )
        if len(self.reward_tokens) != 2 or len(set(self.reward_tokens)) != 2:
            raise ValueError("--reward_tokens needs two different tokens: preferred, rejected")
        if self.train_last_layers is not None and self.train_last_layers < 1:
            raise ValueError("--train_last_layers must be 1 or more (unset: as --use_peft says)")
        if not 0 < self.general_ratio <= 1:
            raise ValueError("--general_ratio must be in (0, 1]")
        if self.init_adapter and self.method != "grpo":
            raise ValueError(
                f"--init_adapter starts METHOD=grpo from an adapter; METHOD={self.method} does "
                "not take one (sft_after_multiturn: --multiturn_adapter)"
            )


@dataclass
class RewardJudgeConfig(JudgeConfig):
    """METHOD=grpo: the rubric judge whose verdict is the reward, as `macaroon eval` judges.

    True 1, Ambiguous 0.5 (tier II), False 0, minus the optional length penalty. A call
    that fails or a reply that does not parse gives no reward: that answer is left out of
    its group's advantage, counted and logged (`judge/failed`, `judge/unparsed`). The
    judge's options are `macaroon eval`'s (pipeline/judge.py, JudgeConfig).
    """

    criteria: str = field(
        default=str(DEFAULT_CRITERIA_DIR), metadata={"help": "Rubrics, one file per type."}
    )
    prompts: str = field(default=str(DEFAULT_PROMPTS_DIR), metadata={"help": "Judge template."})
    judge_records: str | None = field(
        default=None,
        metadata={"help": "The judge's record store (JSONL): a (question, answer) pair judged "
                  "once is never sent again. Unset: OUTPUT_DIR/judgments.jsonl."},
    )  # fmt: skip
    length_penalty: float = field(
        default=0.0,
        metadata={"help": "Subtracted from a judged answer's reward times its length as a share "
                  "of max_completion_length (0 = off)."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length_penalty < 0:
            raise ValueError("--length_penalty must be 0 (off) or more")
