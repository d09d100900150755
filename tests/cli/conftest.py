"""Fixtures for the CLI's in-process tests: private data and KV directories."""

from __future__ import annotations

import pytest


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Private data and KV dirs; the model cache is shared (a link), so nothing is pulled twice."""
    from runtime import settings

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(settings.cache_dir() / "models",
                                               target_is_directory=True)
    monkeypatch.setenv("AGENT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AGENT_CACHE_DIR", str(tmp_path / "cache"))
    yield tmp_path
