"""Where settings come from: flags, then `AGENT_*` environment variables, then the config file.

This is the one module that reads environment variables. Precedence, highest first:

1. a flag value passed to `resolve()` (the CLI resolves its flags once and passes the results
   down as arguments; nothing here holds them),
2. the environment: `AGENT_MODEL`, `AGENT_CACHE_DIR`, `AGENT_DATA_DIR`, `AGENT_CONFIG_DIR`,
3. `config.toml` in the config directory (keys `model`, `cache_dir`, `data_dir`),
4. the defaults: "smollm2" and the platform's user cache / data / config directories.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import platformdirs

APP_NAME = "resident-agent"
ENV_PREFIX = "AGENT_"
CONFIG_FILE = "config.toml"
DEFAULT_MODEL = "smollm2"
CONFIG_KEYS = ("model", "cache_dir", "data_dir")

log = logging.getLogger(__name__)


def resolve(name: str, flag_value: str | Path | None = None) -> str | None:
    """A setting's value by precedence: flag > `AGENT_<NAME>` > config file > None."""
    if flag_value is not None:
        return str(flag_value)
    env = os.environ.get(ENV_PREFIX + name.upper())
    if env:
        return env
    value = read_config_file().get(name)
    return None if value is None else str(value)


def config_dir() -> Path:
    """The directory holding `config.toml` (`AGENT_CONFIG_DIR` or the platform's config dir)."""
    env = os.environ.get(ENV_PREFIX + "CONFIG_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_config_dir(APP_NAME))


def cache_dir(flag_value: str | Path | None = None) -> Path:
    """Models and KV page files live here."""
    value = resolve("cache_dir", flag_value)
    return Path(value).expanduser() if value else Path(platformdirs.user_cache_dir(APP_NAME))


def data_dir(flag_value: str | Path | None = None) -> Path:
    """The session store lives here."""
    value = resolve("data_dir", flag_value)
    return Path(value).expanduser() if value else Path(platformdirs.user_data_dir(APP_NAME))


def export_triton_cache_dir(cache: Path | None = None) -> Path:
    """Point Triton's compile cache under our cache directory (`cache`, else the settings'),
    unless the user set TRITON_CACHE_DIR, so a second process loads the kernels the first
    compiled."""
    value = os.environ.get("TRITON_CACHE_DIR")
    if value:
        return Path(value)
    path = (cache or cache_dir()) / "triton"
    os.environ["TRITON_CACHE_DIR"] = str(path)
    return path


def environment(name: str) -> str | None:
    """An environment variable of another program's convention (OPENAI_API_KEY, or the one
    `--api-key-env` names), read here like every other; None when unset or empty."""
    return os.environ.get(name) or None


def under_pytest() -> bool:
    """True inside a test run, its subprocesses included (pytest sets the variable)."""
    return "PYTEST_CURRENT_TEST" in os.environ


def debug() -> bool:
    """AGENT_DEBUG=1: tracebacks instead of one-line errors."""
    return os.environ.get(ENV_PREFIX + "DEBUG", "") not in ("", "0")


def default_model(flag_value: str | None = None) -> str:
    """The model spec used when none is given: 'smollm2' (the embedded model) unless set."""
    return resolve("model", flag_value) or DEFAULT_MODEL


def default_weights(device_type: str) -> str:
    """How a GGUF's quantized weights are served when not asked (RuntimeOptions.weights).

    On a CPU with bf16, `native`: Q4_0/Q4_1 linears stay packed and compute in bf16, which
    decodes fastest there (docs/benchmarks.md, issue 21); without bf16 the int4 kernel is not
    vectorised (~50x slower than dense fp32), so `fp32`. On CUDA, dequantized `bf16`."""
    if device_type != "cpu":
        return "bf16"
    return "native" if cpu_has_bf16() else "fp32"


def default_dtype(device_type: str) -> str:
    """The compute dtype when none is asked: bf16 on CUDA and on a CPU with bf16, else fp32.

    The KV cache follows it unless `kv_dtype` says otherwise, so on such a CPU it is 16-bit
    (half the bytes per token in every tier). Exactness tests against transformers pass fp32."""
    if device_type != "cpu":
        return "bf16"
    return "bf16" if cpu_has_bf16() else "fp32"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 / AMX, or Arm's BF16)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def read_config_file() -> dict[str, Any]:
    """The known keys of `config.toml`; {} when absent. Raises ValueError when it is malformed."""
    path = config_dir() / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    data = _parse_toml(text, path)
    for key in set(data) - set(CONFIG_KEYS):
        log.warning("ignoring unknown key %r in %s (known: %s)", key, path, ", ".join(CONFIG_KEYS))
    for key in CONFIG_KEYS:
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"{path}: `{key}` must be a string; fix or remove it")
    return {k: data[k] for k in CONFIG_KEYS if k in data}


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML ({e}); fix or delete it") from e
