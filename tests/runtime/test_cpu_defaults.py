"""The CPU defaults (weights mode, compute/KV dtype) and the --weights flag that overrides them."""

from __future__ import annotations

import pytest

from cli import build_parser
from cli.common import model_options
from runtime import settings


@pytest.mark.parametrize("bf16, weights, dtype", [(True, "native", "bf16"),
                                                  (False, "fp32", "fp32")])
def test_cpu_defaults_follow_bf16_support(monkeypatch, bf16, weights, dtype):
    monkeypatch.setattr(settings, "cpu_has_bf16", lambda: bf16)
    assert settings.default_weights("cpu") == weights
    assert settings.default_dtype("cpu") == dtype


def test_cuda_defaults_are_dequantized_bf16(monkeypatch):
    monkeypatch.setattr(settings, "cpu_has_bf16", lambda: False)
    assert settings.default_weights("cuda") == "bf16"
    assert settings.default_dtype("cuda") == "bf16"


@pytest.mark.parametrize("command", [["generate", "--prompt", "hi"], ["run", "task"],
                                     ["models", "info"], ["serve"]])
def test_weights_flag_reaches_runtime_options(command):
    args = build_parser().parse_args([*command, "--weights", "bf16"])
    assert model_options(args)["weights"] == "bf16"
    assert model_options(build_parser().parse_args(command))["weights"] is None


def test_bad_weights_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["generate", "--prompt", "hi", "--weights", "int3"])
    assert e.value.code == 2
    assert "invalid choice: 'int3'" in capsys.readouterr().err
