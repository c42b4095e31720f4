"""`macaroon`: one console script, one subcommand per stage. It only dispatches."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from commands.data import (
    cmd_browse,
    cmd_build,
    cmd_criteria,
    cmd_imagine,
    cmd_import,
    cmd_tiny_model,
)
from commands.demo import run_demo
from commands.docs import cmd_docs
from commands.errors import explain
from commands.evaluate import cmd_eval, cmd_report
from commands.general import cmd_eval_general
from commands.reproduce import cmd_reproduce
from commands.serve import cmd_serve
from commands.train import cmd_train

COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "tiny-model": ("build a small random-weight VLM locally (tests, demo)", cmd_tiny_model),
    "criteria": ("validate the criteria YAML and list the question types", cmd_criteria),
    "imagine": ("self-imagination: images + criteria -> preference dataset", cmd_imagine),
    "build": ("rebuild the dataset from the stored records; --review applies marks", cmd_build),
    "browse": ("an imagined set's page: pairs, drops, review; --base: what changed", cmd_browse),
    "import": ("the original MACAROON training files -> our dataset formats", cmd_import),
    "train": (
        "train METHOD=crl|sft|dpo|multiturn|sft_after_multiturn|grpo (TRL + LoRA)",
        cmd_train,
    ),
    "generate": (
        "the model under test answers PIE",
        lambda argv: cmd_eval(argv, "macaroon generate", "generate"),
    ),
    "judge": (
        "judge stored answers by the rubric per type",
        lambda argv: cmd_eval(argv, "macaroon judge", "judge,report"),
    ),
    "report": ("metrics, table, plot; compare runs; judge agreement", cmd_report),
    "eval": ("generate -> judge -> report on PIE (or --benchmark NAME)", cmd_eval),
    "eval-general": (
        "capability retention: lmms-eval tasks (POPE, MME, ScienceQA-IMG) -> general.json",
        cmd_eval_general,
    ),
    "reproduce": (
        "the paper's table: every METHOD trained, judged by one judge, tabulated",
        cmd_reproduce,
    ),
    "serve": ("vLLM's OpenAI server on 127.0.0.1: MODEL + adapters as LoRAs", cmd_serve),
    "docs": ("write docs/CONFIG.md and docs/MODELS.md from the code and data", cmd_docs),
    "demo": ("run the main job on the bundled defaults", run_demo),
}


def usage() -> str:
    lines = ["usage: macaroon COMMAND [--config FILE.yaml] [--option value ...]", "", "commands:"]
    lines += [f"  {name:<12} {text}" for name, (text, _) in COMMANDS.items()]
    lines += ["", "macaroon COMMAND --help lists the options of a command."]
    return "\n".join(lines)


# No usage statistics leave this machine (the user may still set these to 0 on purpose).
TELEMETRY_OFF = {"HF_HUB_DISABLE_TELEMETRY": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def main(argv: Sequence[str] | None = None) -> int:
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
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
    except KeyboardInterrupt:
        print(
            f"\nmacaroon {name}: interrupted; finished records are kept, rerun the same "
            "command to go on from there",
            file=sys.stderr,
        )
        return 130
    except Exception as err:
        known = explain(err)
        if known is None:
            raise  # a bug: its traceback is what whoever fixes it needs
        message, code = known
        print(f"macaroon {name}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
