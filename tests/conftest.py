"""Shared fixtures: a per-test or per-module STUDIO_HOME that reuses one converted copy of the embedded model, the
preference file the runs train on, one finished run trained once per session, the web app and headless Chromium.

Markers (declared in pytest.ini): `slow` for a test that trains, generates or loads a model (the fast lane is
`pytest -m "not slow"`), `browser` for Chromium, `subprocess` for a test that starts other processes.
"""

import json
import os
import shutil
import sys
import time
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

from helpers import free_port, link_shared, quick_config  # noqa: E402 - helpers imports studio: only once ROOT is on the path


# Fixtures that make a test slow or put it in a browser: a test that uses one (directly or through another fixture)
# without the marker is refused at collection, so `-m "not slow"` never pulls a training into the fast lane.
MARKER_FIXTURES = {"shared_run": "slow", "open_page": "browser"}


def pytest_collection_modifyitems(config, items):
    unmarked = [f"{item.nodeid} uses {name} but is not marked {marker}"
                for item in items for name, marker in MARKER_FIXTURES.items()
                if name in item.fixturenames and item.get_closest_marker(marker) is None]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))


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


@pytest.fixture(scope="session")
def shared_refcache(tmp_path_factory) -> Path:
    """One reference log-prob cache for the session's homes, as one converted model is: the reference pass of a
    given model, template, data and max_length runs once, not once per test (about a third of a 6-step test run).
    The cache's key is what makes this safe, and test_objectives (marked fresh_refcache) tests that key from an
    empty cache."""
    return tmp_path_factory.mktemp("refcache")


def refcache_for(request, shared_refcache: Path) -> Path | None:
    return None if request.node.get_closest_marker("fresh_refcache") else shared_refcache


@pytest.fixture
def studio_home(tmp_path, monkeypatch, model_cache, shared_refcache, request) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    link_shared(home, model_cache, refcache_for(request, shared_refcache))
    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="module")
def module_home(tmp_path_factory, model_cache, shared_refcache, request) -> Path:
    """A STUDIO_HOME shared by one test module's fixtures (a run or an app that several tests read)."""
    home = new_home(tmp_path_factory, model_cache, refcache_for(request, shared_refcache))
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


def new_home(tmp_path_factory, model_cache, refcache: Path | None = None) -> Path:
    return link_shared(tmp_path_factory.mktemp("home"), model_cache, refcache)


# The one run of the session that modules reading a finished run share (test_training, test_eval, test_export):
# every module that reads or writes beside it gets its own copy. The adapter covers the four attention projections,
# so its greedy answer differs from the base model's (test_export needs that), and held-out evaluations run at
# steps 3 and 6 on 3 of the 12 pairs (test_training reads those).
SHARED_RUN = dict(max_steps=6, eval_steps=3, lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


class SharedRun:
    """The session's finished training job, the metrics that were readable while it trained, and copies of its folder."""

    def __init__(self, job, seen_during_training: list[tuple[int, int]]):
        self.job = job
        self.seen_during_training = seen_during_training

    def copy_into(self, home: Path):
        """The run, copied into `home`'s runs folder under its own id (what it writes there stays there)."""
        from studio.runs import Run

        return Run(Path(shutil.copytree(self.job.run.path, home / "runs" / self.job.run.id)))


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory, model_cache, shared_refcache, style_pairs) -> SharedRun:
    """One short real run, trained once per session in a home of its own, watched while it trains."""
    from studio.training import TrainingJob

    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_HOME", str(new_home(tmp_path_factory, model_cache, shared_refcache)))
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        job = TrainingJob(quick_config(style_pairs, **SHARED_RUN), preset="test").start()
        seen = []
        while job.is_alive():
            rows = job.metrics.since(0)
            if rows and job.state == "training":
                seen.append((len(rows), job.step))
            time.sleep(0.05)
        job.wait()
    finally:
        mp.undo()
    assert job.state == "done", job.error
    return SharedRun(job, seen)


@pytest.fixture(scope="module")
def finished_run(shared_run, module_home):
    """The shared finished run, copied into this module's STUDIO_HOME."""
    return shared_run.copy_into(module_home)


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
