"""Shared fixtures: a per-test STUDIO_HOME that reuses one converted copy of the embedded model."""

import json
import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A bare `pytest` puts tests/ on sys.path, not the project: without this, `import studio` would find nothing, or
# Unsloth's unrelated top-level `studio` package where Unsloth is installed. (`python -m pytest` adds the cwd.)
sys.path.insert(0, str(ROOT))
# The app runs training, chat and generation in threads of one process, each with its own torch thread pool: with
# OpenMP's default spin-waiting those pools fight over 2 cores (a 16-token generation measured 210 s instead of
# 16 s beside a training thread). Passive waiting must be set before torch is imported; app.py does the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; CI installs it (apt-get install chromium)
# No sandbox (CI runs as root in a container); no GPU, QUIC or background fetches (the runner has no network).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def open_page():
    """Headless Chromium for one test: `open_page(width, height, timeout_ms=60_000, **context)` gives a fresh page
    (context keywords such as is_mobile=True go to Playwright's new_context); the browser closes after the test.
    Skips when playwright or the browser is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -r requirements-dev.txt")
    if not CHROMIUM.exists():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)

        def new_page(width: int = 1400, height: int = 1000, timeout_ms: int = 60_000, **context):
            page = browser.new_context(viewport={"width": width, "height": height}, **context).new_page()
            page.set_default_timeout(timeout_ms)
            return page

        try:
            yield new_page
        finally:
            browser.close()


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


@pytest.fixture(scope="module")
def module_home(tmp_path_factory, model_cache) -> Path:
    """A STUDIO_HOME shared by one test module's fixtures (a run or an app that several tests read)."""
    home = tmp_path_factory.mktemp("home")
    (home / "models").symlink_to(model_cache, target_is_directory=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_HOME", str(home))
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield home
    mp.undo()


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched_app(module_home, style_pairs):
    """(url, STUDIO_HOME) of the web app, launched once per test module on its own home and a free port.

    The operator lists the tests' data folder in STUDIO_DATA_DIRS, as one would a server's data folder:
    the web app reads no other path but its uploads and the presets' data.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_DATA_DIRS", str(style_pairs.parent))
    from studio.sweep import Sweep
    from studio.training import TrainingJob
    from studio.ui import build_app, launch_options

    demo = build_app()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, **launch_options())
    try:
        yield url, module_home
    finally:  # never leave a sweep or a job running into the next test module
        sweep = Sweep.active()
        if sweep is not None:
            sweep.stop()
            sweep.wait(300)
        job = TrainingJob.active()
        if job is not None:
            job.stop()
            job.wait(300)
        demo.close()
        mp.undo()
