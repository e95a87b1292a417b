"""Shared fixtures: a per-test STUDIO_HOME that reuses one converted copy of the embedded model."""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    # Converting the GGUF takes ~25 s, so it happens once per session (or never, when CI kept a cache).
    cache = Path(os.environ.get("STUDIO_TEST_MODEL_CACHE", tmp_path_factory.mktemp("models")))
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@pytest.fixture
def studio_home(tmp_path, monkeypatch, model_cache) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def style_pairs(tmp_path_factory) -> Path:
    """A small preference file with an easy, consistent preference: short plain answers over padded ones."""
    topics = ["tea", "bread", "git", "python", "running", "sleep", "rain", "maps", "music", "paint", "bikes", "soup"]
    rows = []
    for t in topics:
        rows.append({
            "prompt": f"Tell me one thing about {t}.",
            "chosen": f"I like {t}. It is simple.",
            "rejected": f"It is important to note that, in conclusion, {t} is a multifaceted topic with numerous considerations.",
        })
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
