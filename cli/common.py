"""What every subcommand shares: flags, output, and turning errors into exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_TURN_LIMIT = 0, 1, 2, 3


class UsageError(Exception):
    """Bad flags or arguments: exit code 2."""


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="model: 'smollm2' (the embedded default), a local HF folder or .gguf "
                   "file, or a Hugging Face id (env AGENT_MODEL)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="weights and KV dtype (default: fp32 on CPU, bf16 on GPU)")
    p.add_argument("--kv-dtype", choices=["fp32", "bf16", "fp16", "fp8"], default=None,
                   help="KV cache dtype, if not --dtype's; fp8 (e4m3) halves the KV bytes")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--cache-dir", default=None,
                   help="models and KV pages live here (env AGENT_CACHE_DIR)")
    mem = p.add_argument_group("memory plan (see `agent models info`)")
    mem.add_argument("--max-context", type=_positive_int, default=None, metavar="TOKENS",
                     help="the most tokens a session may grow to (default: the model's window, "
                     "as far as device memory holds it)")
    mem.add_argument("--gpu-memory", type=_fraction, default=0.90, metavar="FRACTION",
                     help="fraction of the GPU this process may use, weights included "
                     "(default: %(default)s)")
    mem.add_argument("--host-memory", type=_size, default=None, metavar="SIZE",
                     help="host memory for the KV host tier, e.g. 64G (default: half the "
                     "memory available at start-up; pinned as it is used)")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The RuntimeOptions fields the model flags set (for LocalModel.open / open_backend)."""
    return {"dtype": args.dtype, "device": args.device, "max_context": args.max_context,
            "gpu_memory": args.gpu_memory, "host_memory": args.host_memory,
            "kv_dtype": args.kv_dtype}


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; use e.g. 0.9") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 1]; use e.g. 0.9")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _size(text: str) -> int:
    from runtime.memory_plan import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def out(text: str = "", end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def out_json(obj: Any) -> None:
    out(json.dumps(obj, ensure_ascii=False))


def err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; known errors become one line on stderr and a non-zero exit."""
    from agent.backends.openai_compat import EndpointError
    from agent.checkpoint import CheckpointError
    from memory.store import StoreError
    from runtime.errors import RuntimeError_

    known = (RuntimeError_, StoreError, CheckpointError, EndpointError, OSError, ValueError)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        return func(args)
    except UsageError as e:
        err(f"error: {e}")
        return EXIT_USAGE
    except known as e:
        err(f"error: {_one_line(e)}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err("interrupted")
        return 130


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def apply_dirs(args: argparse.Namespace) -> None:
    """Hand --cache-dir / --data-dir to the settings module (flags beat the environment)."""
    from runtime import settings

    settings.override(cache_dir=getattr(args, "cache_dir", None),
                      data_dir=getattr(args, "data_dir", None))
