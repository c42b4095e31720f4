"""`macaroon`: one console script, one subcommand per stage. It only dispatches."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import DEFAULT_CRITERIA_DIR, DEFAULT_PROMPTS_DIR, DEFAULT_SAMPLES_DIR
from pipeline.config import ConfigError, parse_config
from pipeline.criteria import CriteriaError


def cmd_tiny_model(argv: Sequence[str]) -> int:
    from pipeline.tiny_model import TinyModelConfig, build_tiny_model

    (cfg,) = parse_config([TinyModelConfig], argv, "macaroon tiny-model")
    out = build_tiny_model(cfg)
    print(f"tiny model ({cfg.arch}, {cfg.size}) ready in {out}")
    return 0


@dataclass
class CriteriaConfig:
    """`macaroon criteria`: validate a criteria folder and list its types with their hashes."""

    criteria_dir: str = field(default=str(DEFAULT_CRITERIA_DIR), metadata={"help": "Folder."})


def cmd_criteria(argv: Sequence[str]) -> int:
    from pipeline.criteria import criteria_hash, load_criteria

    (cfg,) = parse_config([CriteriaConfig], argv, "macaroon criteria")
    types = load_criteria(cfg.criteria_dir)
    for name, qtype in types.items():
        print(f"{qtype.tier:>3}  {name:<28} {qtype.content_hash}  {qtype.source}")
    print(f"{len(types)} question types, criteria hash {criteria_hash(types)}")
    return 0


@dataclass
class DemoConfig:
    """`macaroon demo`: the main job on the bundled defaults."""

    arch: str = field(default="llava", metadata={"help": "Local model family to build."})
    size: str = field(default="tiny", metadata={"help": "Local model size: tiny or small."})
    images_dir: str = field(
        default=str(DEFAULT_SAMPLES_DIR / "images"), metadata={"help": "Images to imagine on."}
    )
    criteria_dir: str = field(default=str(DEFAULT_CRITERIA_DIR), metadata={"help": "Criteria."})
    prompts_dir: str = field(default=str(DEFAULT_PROMPTS_DIR), metadata={"help": "Templates."})
    out: str = field(default="outputs/demo", metadata={"help": "Output folder."})


def cmd_demo(argv: Sequence[str]) -> int:
    from imagination.prompts import chat, load_templates, render
    from pipeline.criteria import criteria_hash, load_criteria
    from pipeline.images import list_images
    from pipeline.tiny_model import TinyModelConfig, build_tiny_model

    (cfg,) = parse_config([DemoConfig], argv, "macaroon demo")
    model_cfg = TinyModelConfig(arch=cfg.arch, size=cfg.size, criteria_dir=cfg.criteria_dir)
    print(f"[1/2] building the local {cfg.arch} ({cfg.size}) model in {model_cfg.out}")
    model_dir = build_tiny_model(model_cfg)

    types = load_criteria(cfg.criteria_dir)
    template = load_templates(cfg.prompts_dir)["question"]
    images = list_images(cfg.images_dir)
    print(f"[2/2] rendering question prompts: {len(images)} images x {len(types)} types")
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lengths = []
    with open(out / "prompts.jsonl", "w", encoding="utf-8") as f:
        for image in images:
            for qtype in types.values():
                prompt = render(template, qtype)
                text = processor.apply_chat_template(chat(prompt), add_generation_prompt=True)
                lengths.append(len(processor.tokenizer(text)["input_ids"]))
                row = {
                    "image": str(image),
                    "question_type": qtype.name,
                    "criteria_hash": qtype.content_hash,
                    "prompt": prompt,
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(
        f"done: model in {model_dir}; {len(lengths)} prompts in {out / 'prompts.jsonl'} "
        f"(criteria hash {criteria_hash(types)}, {min(lengths)}-{max(lengths)} tokens each "
        "before image expansion)"
    )
    return 0


COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "tiny-model": ("build a small random-weight VLM locally (tests, demo)", cmd_tiny_model),
    "criteria": ("validate the criteria YAML and list the question types", cmd_criteria),
    "demo": ("run the main job on the bundled defaults", cmd_demo),
}


def usage() -> str:
    lines = ["usage: macaroon COMMAND [--config FILE.yaml] [--option value ...]", "", "commands:"]
    lines += [f"  {name:<12} {text}" for name, (text, _) in COMMANDS.items()]
    lines += ["", "macaroon COMMAND --help lists the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"macaroon: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name][1](rest)
    except (ConfigError, CriteriaError, ValueError, FileNotFoundError) as err:
        # Bad input: one clear line naming the file and the fix, no traceback.
        print(f"macaroon {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
