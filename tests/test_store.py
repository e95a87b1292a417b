"""store.py on real files: id claims, appends and atomic writes under contention, and lookups that take a name only."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from studio import store
from studio.errors import NotFound, StudioError
from studio.pools import create_pool, get_pool
from studio.runs import Run, get_run, list_runs, mark_interrupted
from studio.sweep import load_sweep, sweep_grid

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("STUDIO_HOME", str(home))
    return home


def in_threads(n: int, work) -> list:
    """Run work(i) in n threads released at once; their results, and the first exception if any."""
    barrier, results, errors = threading.Barrier(n), [None] * n, []

    def one(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- roots ----------------------------------------------------------------------------------------


def test_every_root_lies_under_studio_home_and_is_named_once(home):
    assert store.runs_root() == home / "runs" and store.pools_root() == home / "pools"
    assert store.sweeps_root() == home / "sweeps" and store.uploads_root() == home / "uploads"
    assert store.exports_root() == home / "exports" and store.grids_root() == home / "exports" / "grids"
    assert store.models_root() == home / "models"
    assert not (home / "runs").exists()  # naming a root creates nothing
    with pytest.raises(ValueError, match="unknown kind of folder 'nope'"):
        store.root("nope")
    # No other module spells a STUDIO_HOME sub-folder: they all go through store.root().
    spelled = [p.relative_to(ROOT) for p in (ROOT / "studio").rglob("*.py")
               if p.name != "store.py" and "studio_home() /" in p.read_text(encoding="utf-8")
               and "job.lock" not in p.read_text(encoding="utf-8")]
    assert spelled == []


# --- claiming an id folder -------------------------------------------------------------------------


def test_concurrent_claims_from_threads_get_distinct_new_folders(home):
    paths = in_threads(12, lambda i: store.claim_folder("runs", "same label"))
    assert len({p.name for p in paths}) == 12
    for p in paths:
        assert p.parent == home / "runs" and p.is_dir() and not any(p.iterdir())
        assert store.is_name(p.name) and "same-label" in p.name  # the label made safe: no space in an id
    suffixes = sorted(p.name.rsplit("same-label", 1)[1] for p in paths)
    assert "" in suffixes  # the first claim of the second has no suffix, the others -2, -3, ...


@pytest.mark.subprocess
def test_concurrent_claims_from_processes_get_distinct_folders(home):
    code = "from studio import store; print(store.claim_folder('sweeps', 'race').name)"
    children = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "STUDIO_HOME": str(home)}) for _ in range(4)]
    names = [c.communicate(timeout=120)[0].strip() for c in children]
    assert all(c.returncode == 0 for c in children)
    assert len(set(names)) == 4 and sorted(p.name for p in (home / "sweeps").iterdir()) == sorted(names)


def test_a_label_never_makes_a_path(home):
    for label in ("../../etc", "/abs/path", "a/b", "..", "", "  ", "x" * 300):
        path = store.claim_folder("pools", label)
        assert path.parent == home / "pools" and store.is_name(path.name)
    assert store.slug("../../etc") == "etc" and store.slug("", "pool") == "pool"
    assert len(store.slug("x" * 300)) == store.LABEL_CHARS


def test_pools_runs_and_sweeps_claim_through_the_store(home):
    pools = in_threads(6, lambda i: create_pool("generate", "same").id)
    assert len(set(pools)) == 6
    runs = in_threads(6, lambda i: Run(store.claim_folder("runs", "r")).create().id)
    assert len(set(runs)) == 6


# --- appending ------------------------------------------------------------------------------------


def test_appends_from_threads_give_whole_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    big = "é" * 20_000  # far over PIPE_BUF: one write() of it is not atomic by itself

    def work(i):
        for j in range(25):
            store.append_jsonl(path, {"thread": i, "n": j, "text": big})

    in_threads(8, work)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]  # every line parses: none interleaved with another
    assert len(rows) == 8 * 25 and all(r["text"] == big for r in rows)
    for i in range(8):
        assert [r["n"] for r in rows if r["thread"] == i] == list(range(25))  # each writer's order kept
    assert store.read_jsonl(path) == rows


@pytest.mark.subprocess
def test_appends_from_processes_give_whole_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    code = ("import sys; from studio import store\n"
            "for j in range(40): store.append_jsonl(sys.argv[1], {'who': sys.argv[2], 'n': j, 'text': 'x' * 50000})")
    children = [subprocess.Popen([sys.executable, "-c", code, str(path), str(k)], cwd=ROOT) for k in range(4)]
    assert all(c.wait(timeout=120) == 0 for c in children)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 160 and {r["who"] for r in rows} == {"0", "1", "2", "3"}


@pytest.mark.subprocess
def test_an_append_waits_for_the_lock_another_process_holds(tmp_path, monkeypatch):
    path = tmp_path / "labels.jsonl"
    # Another process (the CLI labelling the same pool) holds the lock while it writes its line in two parts.
    code = ("import fcntl, sys, time\n"
            "with open(sys.argv[1], 'ab') as f:\n"
            "    fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True)\n"
            "    f.write(b'{\"who\": \"cli\", '); f.flush(); time.sleep(0.5); f.write(b'\"n\": 1}\\n'); f.flush()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    store.append_jsonl(path, {"who": "app"})
    assert holder.wait(timeout=60) == 0
    assert store.read_jsonl(path) == [{"who": "cli", "n": 1}, {"who": "app"}]  # after the other's whole line
    assert synced  # on disk before append_jsonl returned


def test_read_jsonl_skips_a_line_cut_short_by_a_crash(tmp_path):
    path = tmp_path / "log.jsonl"
    assert store.read_jsonl(path) == []  # nothing yet
    store.append_jsonl(path, {"a": 1})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"a": 2, "cut sho')
    assert store.read_jsonl(path) == [{"a": 1}]


# --- atomic writes --------------------------------------------------------------------------------


def test_atomic_write_is_never_seen_half_written(tmp_path):
    path = tmp_path / "status.json"
    versions = [json.dumps({"v": k, "pad": str(k) * 200_000}) for k in range(2)]
    store.atomic_write(path, versions[0])
    done, seen = threading.Event(), []

    def read():
        while not done.is_set():
            seen.append(path.read_text(encoding="utf-8"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for k in range(60):
            store.atomic_write(path, versions[k % 2])
    finally:
        done.set()
        reader.join()
    assert seen and all(text in versions for text in seen)  # the old file or the new one, never a part
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary file left


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "pool.json"
    store.atomic_write(path, '{"state": "old"}')
    with pytest.raises(RuntimeError, match="disk gone"), store.atomic_path(path) as tmp:
        tmp.write_text('{"state": "ne', encoding="utf-8")
        raise RuntimeError("disk gone")
    assert path.read_text(encoding="utf-8") == '{"state": "old"}'
    assert [p.name for p in tmp_path.iterdir()] == ["pool.json"]
    with pytest.raises(UnicodeEncodeError):
        store.atomic_write(path, "\ud800")  # cannot be encoded: nothing written
    assert path.read_text(encoding="utf-8") == '{"state": "old"}'
    store.atomic_write(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"


def test_a_published_folder_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "exports" / "merged"
    for version in ("one", "two"):
        tmp = store.staging_folder(target)
        assert tmp.parent == target.parent and tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "model.txt").write_text(version)
        store.publish_folder(tmp, target)
        assert (target / "model.txt").read_text() == version
    assert [p.name for p in target.parent.iterdir()] == ["merged"]  # no staging or old folder left


# --- lookup by id ---------------------------------------------------------------------------------


def make_run(home: Path, name: str) -> Path:
    path = home / "runs" / name
    path.mkdir(parents=True)
    (path / "status.json").write_text(json.dumps({"state": "done", "started": 1.0}))
    return path


@pytest.mark.parametrize("bad", ["..", ".", "../runs/r1", "r1/..", "/etc", "a/b", "a\\b", "", " r1", "r1\n",
                                 ".hidden", "r1\x00", None, 3])
def test_a_lookup_refuses_anything_but_a_plain_name(home, bad):
    make_run(home, "r1")
    with pytest.raises(NotFound, match="is not a run id: an id is a folder name under"):
        store.find("runs", bad, "status.json")
    with pytest.raises(FileNotFoundError):  # the web app's handlers catch it as a missing run
        get_run(bad if isinstance(bad, str) else str(bad))


def test_a_lookup_refuses_an_absolute_path_even_to_a_real_run(home, tmp_path):
    elsewhere = make_run(tmp_path / "other-home", "r9")
    with pytest.raises(NotFound, match="is not a run id"):
        get_run(str(elsewhere))
    with pytest.raises(NotFound, match="is not a run id"):
        get_run(str(make_run(home, "r1")))  # even one inside the root: a string is an id, not a path
    assert get_run(str(elsewhere), folders=True).path == elsewhere  # the CLI's argument may name a folder
    assert get_run(elsewhere).path == elsewhere  # and so may a Path the program chose


def test_a_lookup_refuses_a_link_out_of_its_root(home, tmp_path):
    outside = make_run(tmp_path / "outside", "secret")
    (home / "runs").mkdir()
    (home / "runs" / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(NotFound, match="'escape' under .* is a link, not a folder of its own"):
        store.find("runs", "escape", "status.json")
    with pytest.raises(NotFound):
        get_run("escape")
    assert [r.id for r in list_runs()] == []  # a link is not listed either
    assert not store.is_child("runs", home / "runs" / "escape")


def test_an_unknown_id_names_itself_the_root_and_what_is_there(home):
    make_run(home, "20260101-000000-known")
    with pytest.raises(NotFound) as caught:
        get_run("no-such-run")
    message = str(caught.value)
    assert "No run 'no-such-run' under" in message and str(home / "runs") in message
    assert "20260101-000000-known" in message
    assert isinstance(caught.value, StudioError) and isinstance(caught.value, FileNotFoundError)
    with pytest.raises(NotFound, match="No run '20260101-000000-known' under"):
        store.find("runs", "20260101-000000-known", "adapter.json")  # there, but not holding the marker


def test_pools_and_sweeps_are_found_by_name_only(home, tmp_path):
    pool = create_pool("generate", "p")
    assert get_pool(pool.id).path == pool.path
    for bad in ("..", str(pool.path), f"../pools/{pool.id}"):
        with pytest.raises(NotFound, match="is not a pool id"):
            get_pool(bad)
    assert get_pool(str(pool.path), folders=True).path == pool.path
    sweep = home / "sweeps" / "s1"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text('{"id": "s1"}')
    assert load_sweep("s1") == {"id": "s1"} and sweep_grid("s1") is None
    for bad in ("..", str(sweep), "s1/../s1"):
        with pytest.raises(NotFound, match="is not a sweep id"):
            load_sweep(bad)
        with pytest.raises(NotFound, match="is not a sweep id"):
            sweep_grid(bad)
    with pytest.raises(NotFound, match="No sweep 's2' under"):
        load_sweep("s2")


# --- processes ------------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_pid_checks_and_interrupted_marking(home):
    gone = dead_pid()
    assert store.pid_alive(os.getpid()) and not store.pid_alive(gone) and not store.pid_alive(None)
    assert store.orphaned({"state": "training", "pid": gone}, ("training",))
    assert not store.orphaned({"state": "training", "pid": os.getpid()}, ("training",))
    assert not store.orphaned({"state": "done", "pid": gone}, ("training",))
    make_run(home, "dead")
    (home / "runs" / "dead" / "status.json").write_text(json.dumps({"state": "training", "pid": gone}))
    make_run(home, "mine")
    (home / "runs" / "mine" / "status.json").write_text(json.dumps({"state": "training", "pid": gone}))
    assert mark_interrupted(live_ids={"mine"}) == ["dead"]
    status = get_run("dead").status()
    assert status["state"] == "interrupted" and f"(pid {gone}) ended while it was training" in status["error"]
    assert get_run("mine").state == "training"


# --- grids ----------------------------------------------------------------------------------------


def a_grid(answer: str) -> dict:
    return {"prompts": ["Name a fruit."], "columns": [{"name": "SFT baseline", "answers": [answer], "measures": {}}]}


def test_grids_are_written_whole_and_the_newest_is_read_back(home):
    from studio.probes import latest_grid, publish_grid, save_grid

    assert latest_grid() == (None, [])
    files = publish_grid(a_grid("A pear."), "20260101-000000-2-runs")
    folder = home / "exports" / "grids" / "20260101-000000-2-runs"
    assert files == [str(folder / "grid.csv"), str(folder / "grid.md")]
    assert sorted(p.name for p in folder.iterdir()) == ["grid.csv", "grid.json", "grid.md"]  # no temporary left
    sweep = home / "sweeps" / "s1"
    save_grid(a_grid("A plum."), sweep)
    os.utime(sweep / "grid.json", (2e9, 2e9))  # the sweep's grid is the newest
    grid, files = latest_grid()
    assert grid == a_grid("A plum.")
    assert files == [str(home / "exports" / "grids" / "s1" / "grid.csv"), str(home / "exports" / "grids" / "s1" / "grid.md")]
    assert "A plum." in Path(files[1]).read_text(encoding="utf-8")  # copied where downloads are served from
    for bad in ("../../runs/x", "/tmp/grid", "..", "a/b"):
        with pytest.raises(NotFound, match="is not a grid id"):
            publish_grid(a_grid("x"), bad)
    assert sorted(p.name for p in (home / "exports" / "grids").iterdir()) == ["20260101-000000-2-runs", "s1"]
