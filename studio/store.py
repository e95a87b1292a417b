"""Where the studio keeps things under STUDIO_HOME, and the few ways it writes and finds them.

    STUDIO_HOME/
      runs/<id>/      a training run (runs.py)          pools/<id>/    answers and labels (pools.py)
      sweeps/<id>/    a sweep's record and grid          uploads/       uploaded data files (files.py)
      exports/        exports and downloads (export.py)  exports/grids/ probe grids built on request
      models/         the converted embedded model (models.py)

Every module names these folders through `root(kind)` (or its named twin, e.g. `runs_root()`), writes a
whole file with `atomic_write`, appends a line with `append_jsonl`, claims a new id folder with
`claim_folder` and finds one by id with `find`. An id is a name, never a path: `find` takes only a
plain folder name that lies directly in its root, so nothing a browser sends can reach another folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .config import studio_home
from .errors import NotFound, StudioError

FOLDERS = {
    "runs": "runs",
    "pools": "pools",
    "sweeps": "sweeps",
    "uploads": "uploads",
    "exports": "exports",
    "grids": "exports/grids",  # under exports, which the web app serves downloads from
    "models": "models",
    "refcache": "refcache",  # reference log-probs computed once (refcache.py)
}
NOUNS = {"runs": "run", "pools": "pool", "sweeps": "sweep", "uploads": "upload", "exports": "export",
         "grids": "grid", "models": "model",
         "refcache": "reference cache entry"}
# Letters, digits, '.', '_' and '-', starting with a letter or digit: never '', '.', '..', a '/' or a '\'.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LABEL_CHARS = 60  # the readable part of a claimed id

T = TypeVar("T")


# --- roots ----------------------------------------------------------------------------------------


def root(kind: str) -> Path:
    """The folder under STUDIO_HOME that holds things of `kind` (one of FOLDERS); not created here."""
    try:
        return studio_home() / FOLDERS[kind]
    except KeyError:
        raise ValueError(f"unknown kind of folder {kind!r}; one of {', '.join(FOLDERS)}") from None


def runs_root() -> Path:
    return root("runs")


def pools_root() -> Path:
    return root("pools")


def sweeps_root() -> Path:
    return root("sweeps")


def uploads_root() -> Path:
    return root("uploads")


def exports_root() -> Path:
    return root("exports")


def grids_root() -> Path:
    return root("grids")


def models_root() -> Path:
    return root("models")


# --- ids ------------------------------------------------------------------------------------------


def is_name(text: object) -> bool:
    return isinstance(text, str) and NAME.fullmatch(text) is not None


def slug(label: str, default: str = "run") -> str:
    """`label` as the readable part of an id: runs of other characters become '-', at most LABEL_CHARS long."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(label or ""))[:LABEL_CHARS].strip("-.")
    return text if text and is_name(text) else default


def claim_folder(kind: str, label: str) -> Path:
    """A new, empty folder `<time>-<label>[-n]` under root(kind), claimed by an exclusive mkdir.

    Two claimers (threads or processes) started in the same second never share a folder: mkdir fails for
    all but one of them, and the others take the next suffix.
    """
    base = root(kind)
    base.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(label, NOUNS[kind])}"
    for n in range(1, 1000):
        path = base / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise StudioError(f"Could not claim a new {NOUNS[kind]} folder under {base} for {label!r}: 999 taken this second.")


def check_name(kind: str, name: object) -> str:
    """`name` when it can be an id of `kind`; NotFound naming the rule otherwise (a path is never an id)."""
    if not is_name(name):
        raise NotFound(f"{name!r} is not a {NOUNS[kind]} id: an id is a folder name under {root(kind)} (letters, "
                       "digits, '.', '_' and '-'; no '/', '..' or path).")
    return name


def is_child(kind: str, path: str | Path) -> bool:
    """True when `path` is a folder or file directly in root(kind) under an id's name, and no link."""
    path = Path(path)
    if not is_name(path.name) or path.is_symlink():
        return False
    try:
        return path.resolve(strict=True).parent == root(kind).resolve()
    except (OSError, RuntimeError):
        return False


def find(kind: str, name: object, marker: str | None = None) -> Path:
    """The folder root(kind)/name, which must be a real folder there (holding `marker` when given).

    NotFound, with a message naming the id and the root, for a name that is not an id, a link, or nothing there.
    """
    name = check_name(kind, name)
    base = root(kind)
    path = base / name
    if path.is_symlink():
        raise NotFound(f"{NOUNS[kind].capitalize()} {name!r} under {base} is a link, not a folder of its own: "
                       "it is not used.")
    if is_child(kind, path) and path.is_dir() and (marker is None or (path / marker).is_file()):
        return path
    known = ", ".join(p.name for p in children(kind, marker)[:10]) or "none yet"
    raise NotFound(f"No {NOUNS[kind]} {name!r} under {base}. Recent {kind}: {known}")


def children(kind: str, marker: str | None = None, base: Path | None = None) -> list[Path]:
    """The id folders in root(kind) (or `base`), holding `marker` when given, newest first; links are skipped."""
    base = base or root(kind)
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir()
             if is_name(p.name) and not p.is_symlink() and p.is_dir() and (marker is None or (p / marker).is_file())]
    return sorted(found, key=_mtime, reverse=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# --- writing --------------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed over `path` when the block succeeds, removed otherwise.

    Readers in other threads or processes see the old file or the new one, never a half-written one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write a whole file so that no reader ever sees part of it, and it is on disk when this returns."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())


def staging_folder(target: str | Path) -> Path:
    """A new, empty folder beside `target` to build it in; `publish_folder` then puts it in place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crash of an earlier process with the same pid
    tmp.mkdir()
    return tmp


def publish_folder(tmp: str | Path, target: str | Path) -> None:
    """Rename a finished staging folder into place; an earlier folder there is swapped out, then removed.

    A reader sees the old folder or the new one, never half of one (a crash between the two renames leaves
    no folder at `target`, which reads as "not built", never as a broken one).
    """
    tmp, target = Path(tmp), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    try:
        tmp.rename(target)
    finally:  # also when another writer's folder took the place first: ours is then the one that lost
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


_append_lock = threading.Lock()


def append_jsonl(path: str | Path, row: dict) -> None:
    """One JSON line, appended in a single write under a file lock, then flushed to disk.

    The lock keeps two processes (the app and a CLI) from interleaving lines; fsync makes a line (a
    label decision, a metric) survive a crash the moment the call returns.
    """
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    with _append_lock, open(path, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_jsonl(path: str | Path) -> list[dict]:
    """The objects of a JSON Lines file ([] when there is none yet); a line cut short by a crash is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by a crash; the rest is still good
    return rows


# --- processes ------------------------------------------------------------------------------------


def pid_alive(pid: int | None) -> bool:
    """True when a process with this id runs on this machine (one of another user counts as alive)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphaned(info: dict, live_states: Iterable[str]) -> bool:
    """True when a record says it is live but the process that wrote it (its `pid`) has ended."""
    pid = info.get("pid")
    return info.get("state") in tuple(live_states) and pid != os.getpid() and not pid_alive(pid)


def interrupted(items: Iterable[T], info: Callable[[T], dict], live_states: Iterable[str],
                live_ids: Iterable[str] = frozenset()) -> list[T]:
    """The items (runs, pools) left live by a process that died: the ones to mark interrupted.

    `info(item)` reads its record; `live_ids` are items this process is running, which are never orphans.
    """
    live_ids = set(live_ids)
    return [item for item in items if item.id not in live_ids and orphaned(info(item), live_states)]


def ended_message(info: dict, doing: str = "") -> str:
    """Why an orphaned record is interrupted, in words: which process ended and while doing what."""
    return f"the process {doing or 'running it'} (pid {info.get('pid')}) ended while it was {info.get('state')}"
