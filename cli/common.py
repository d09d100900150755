"""What every subcommand shares: the parser class, flags, output, and errors as exit codes.

Nothing here imports torch: arguments are checked before the model's packages load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_TURN_LIMIT = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by SIGINT


class UsageError(Exception):
    """Bad flags or arguments: exit code 2."""


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each flag's default (argparse's ArgumentDefaultsHelpFormatter, minus
    the noise: no "(default: None)" or "False"; such flags say in words what absence means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        shown = not (d is None or d is False or d == [] or d is argparse.SUPPRESS)
        if shown and "%(default)" not in text and "default" not in text.lower() \
                and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """Every parser of the command (subcommands inherit it): defaults shown in `--help`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        """One line, not the whole usage block: the flags are a `--help` away."""
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def add_shared(parsers: list[argparse.ArgumentParser], *flags: str, **kwargs: Any) -> None:
    """A flag accepted before or after a subcommand's action (`agent cache --cache-dir X
    clear` and `agent cache clear --cache-dir X`): the first parser holds the default, the
    later ones only a value given there."""
    for i, p in enumerate(parsers):
        p.add_argument(*flags, **(kwargs if i == 0 else {**kwargs,
                                                           "default": argparse.SUPPRESS}))


def add_debug_flag(p: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="print tracebacks for errors (also AGENT_DEBUG=1)")


MODEL_HELP = ("model: 'smollm2' (the embedded default), a local HF folder or .gguf file, a "
              "Hugging Face id, or openai:http://HOST:PORT/v1#MODEL for an OpenAI-compatible "
              "server; see `agent models list` (default: AGENT_MODEL, the config file, smollm2)")


def add_model_flags(p: argparse.ArgumentParser, cache_dir_default: Any = None) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="compute and KV dtype (default: bf16 on GPU and on a CPU with bf16, "
                   "else fp32)")
    p.add_argument("--weights", choices=["native", "bf16", "fp32"], default=None,
                   help="a GGUF's quantized weights: native keeps Q4_0/Q4_1 packed (CPU), "
                   "bf16/fp32 dequantize (default: native on a CPU with bf16, else fp32)")
    p.add_argument("--kv-dtype", choices=["fp32", "bf16", "fp16", "fp8"], default=None,
                   help="KV cache dtype, if not --dtype's (default: --dtype's); fp8 (e4m3) "
                   "halves the KV bytes")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--tensor-parallel", type=positive_int, default=1, metavar="N",
                   help="split the model over N GPUs (cuda:0..N-1), one process each "
                   "(default: %(default)s)")
    p.add_argument("--cache-dir", default=cache_dir_default,
                   help="models and KV pages live here (default: AGENT_CACHE_DIR, the config "
                   "file, the platform's cache dir)")
    mem = p.add_argument_group("memory plan (see `agent models info`)")
    mem.add_argument("--max-context", type=positive_int, default=None, metavar="TOKENS",
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
    return {"dtype": args.dtype, "weights": args.weights, "device": args.device,
            "max_context": args.max_context, "gpu_memory": args.gpu_memory,
            "host_memory": args.host_memory, "kv_dtype": args.kv_dtype,
            "tensor_parallel": args.tensor_parallel}


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; use e.g. 0.9") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 1]; use e.g. 0.9")
    return value


def positive_int(text: str) -> int:
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


def debug_wanted(args: argparse.Namespace) -> bool:
    """--debug, or AGENT_DEBUG=1 (read through the settings module, the one that reads env)."""
    from runtime.settings import debug

    return bool(getattr(args, "debug", False)) or debug()


class _OneLineFormatter(logging.Formatter):
    """`warning: message`, without the traceback a log call attached (unless --debug)."""

    def __init__(self, tracebacks: bool):
        super().__init__("%(levelname)s: %(message)s")
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        if self.tracebacks:
            return super().format(record)
        cause = f" ({_one_line(record.exc_info[1])})" if record.exc_info else ""
        return f"{record.levelname}: {record.getMessage()}{cause}"


def setup_logging(tracebacks: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(tracebacks))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h.formatter, _OneLineFormatter)]:
        root.removeHandler(old)  # main() called again in one process (tests)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; known errors become one line on stderr and a non-zero exit (with
    --debug or AGENT_DEBUG=1 the traceback too); a closed stdout ends quietly with 0."""
    debugging = debug_wanted(args)
    setup_logging(debugging)
    try:
        return func(args)
    except UsageError as e:
        err(f"error: {e}")
        return EXIT_USAGE
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:
        if debugging or not isinstance(e, known_errors()):
            raise
        err(f"error: {_one_line(e)}")
        return EXIT_ERROR


def known_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's to fix (a missing model, a bad session id, a server
    that is down): one line, never a traceback. Anything else is a bug and shows its trace."""
    from agent.backends.openai_compat import EndpointError
    from agent.checkpoint import CheckpointError
    from memory.store import StoreError
    from runtime.errors import RuntimeError_

    return (RuntimeError_, StoreError, CheckpointError, EndpointError, OSError, ValueError)


def _stdout_closed() -> int:
    """The reader went away (`agent sessions list | head -1`): stop quietly, as `cat` does.
    Python would complain again when it flushes stdout at exit, so stdout becomes /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass
    return EXIT_OK


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@dataclass(frozen=True)
class Dirs:
    """Where models and KV pages (cache_dir) and sessions (data_dir) live, resolved once from
    --cache-dir / --data-dir, then AGENT_*, then the config file, then the platform's dirs."""

    cache_dir: Path
    data_dir: Path


def resolve_dirs(args: argparse.Namespace) -> Dirs:
    """The directories for this command; passed down as arguments, never held globally."""
    from runtime import settings

    return Dirs(settings.cache_dir(getattr(args, "cache_dir", None)),
                settings.data_dir(getattr(args, "data_dir", None)))
