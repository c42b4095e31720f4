"""One config system: dataclass defaults < YAML file < command line."""

import pytest

from pipeline.config import ConfigError, parse_config
from pipeline.tiny_model import TinyModelConfig


def test_yaml_then_command_line_overrides(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("arch: qwen2-vl\nsize: small\nseed: 7\n")
    (cfg,) = parse_config([TinyModelConfig], ["--config", str(config), "--seed", "3"], "t")
    assert (cfg.arch, cfg.size, cfg.seed) == ("qwen2-vl", "small", 3)
    assert cfg.out == "outputs/models/qwen2-vl-small"


def test_defaults_without_a_file():
    (cfg,) = parse_config([TinyModelConfig], [], "t")
    assert (cfg.arch, cfg.size, cfg.out) == ("llava", "tiny", "outputs/models/llava-tiny")


def test_bundled_configs_parse(tmp_path):
    from conftest import REPO

    from commands.data import CriteriaConfig
    from commands.demo import DemoConfig
    from evaluation.run import EvalConfig
    from imagination.imagine import ImagineConfig

    for name, kind in [
        ("tiny_model", TinyModelConfig),
        ("demo", DemoConfig),
        ("criteria", CriteriaConfig),
        ("imagine", ImagineConfig),
        ("eval", EvalConfig),
    ]:
        parse_config([kind], ["--config", str(REPO / "configs" / f"{name}.yaml")], name)


def test_unknown_yaml_option_names_file_and_option(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("arch: llava\nlayers: 12\n")
    with pytest.raises(ConfigError, match=r"tiny.yaml: unknown option\(s\) layers"):
        parse_config([TinyModelConfig], ["--config", str(config)], "t")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        parse_config([TinyModelConfig], ["--config", str(tmp_path / "nope.yaml")], "t")


def test_bad_value_is_an_error_not_a_default(tmp_path):
    with pytest.raises(ValueError, match="--size 'huge'"):
        parse_config([TinyModelConfig], ["--size", "huge"], "t")
