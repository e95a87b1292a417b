"""The pool folder: sampled answers to label, every labelling decision, and the preference file they make.

    pools/<pool-id>/
      pool.json          what the pool is: kind, models, settings, state, counts (rewritten atomically)
      candidates.jsonl   one line per prompt: the prompt, its answers (text, model, run) and its pairs
      labels.jsonl       append-only: one line per decision or undo, with who made it and when
      preferences.jsonl  written by `to_preferences`: prompt/chosen/rejected plus provenance columns

A pair is two answers to one prompt. Its blind A/B order is drawn once, seeded by the pool's seed and
the pair's id, and stored with the pair, so every browser shows the same pair the same way round.
Nothing in labels.jsonl is ever rewritten: an undo is its own event that names the decision it takes
back, so the whole history survives a crash, a reload or two browsers labelling at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .config import studio_home
from .errors import DataError
from .runs import _atomic_write, read_jsonl

KINDS = ("generate", "winrate")
OUTCOMES = ("win", "tie", "both_bad", "skip")  # win: `winner` beat `loser`
HUMAN_CHOICES = {"A": "win", "B": "win", "tie": "tie", "both_bad": "both_bad", "skip": "skip"}

_append_lock = threading.Lock()


def pools_root() -> Path:
    return studio_home() / "pools"


def human(name: str) -> str:
    """The labeller name recorded for a person: `human:<name>`."""
    name = " ".join((name or "").split()) or "anonymous"
    return f"human:{name}"


@dataclass(frozen=True)
class Pair:
    id: str
    candidate: int  # index of the candidate (prompt) in candidates.jsonl
    first: int  # answer indices in the candidate; the judge and the rubric see (first, second)
    second: int
    a: int  # answer index shown as A in the blind view
    b: int


@dataclass
class Decision:
    """One labeller's standing verdict on one pair (the latest decision not undone)."""

    pair: str
    labeller: str
    outcome: str
    winner: int | None
    loser: int | None
    reason: str
    time: float
    event: str


class Pool:
    """A pool folder on disk."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def id(self) -> str:
        return self.path.name

    # --- what the pool is ---
    def info(self) -> dict:
        path = self.path / "pool.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def update(self, **fields) -> dict:
        info = {**self.info(), **fields, "updated": time.time()}
        _atomic_write(self.path / "pool.json", json.dumps(info, indent=2))
        return info

    @property
    def state(self) -> str:
        return self.info().get("state", "unknown")

    # --- candidates ---
    def add_candidate(self, messages: list[dict], answers: list[dict]) -> dict:
        """Append one prompt with its answers ({text, model, run, ...}) and the pairs they make."""
        index = self.count_candidates()
        cid = f"c{index:05d}"
        seed = self.info().get("seed", 0)
        pairs = []
        for i in range(len(answers)):
            for j in range(i + 1, len(answers)):
                pid = f"{cid}:{i}-{j}"
                swap = random.Random(f"{seed}:{self.id}:{pid}").random() < 0.5
                pairs.append({"id": pid, "first": i, "second": j, "a": j if swap else i, "b": i if swap else j})
        row = {"id": cid, "prompt": prompt_text(messages), "messages": messages, "answers": answers, "pairs": pairs}
        _append_line(self.path / "candidates.jsonl", row)
        return row

    def candidates(self) -> list[dict]:
        path = self.path / "candidates.jsonl"
        return read_jsonl(path) if path.is_file() else []

    def count_candidates(self) -> int:
        return len(self.candidates())

    def pairs(self) -> list[Pair]:
        out = []
        for index, c in enumerate(self.candidates()):
            for p in c.get("pairs", []):
                out.append(Pair(p["id"], index, p["first"], p["second"], p["a"], p["b"]))
        return out

    # --- labels ---
    def events(self) -> list[dict]:
        path = self.path / "labels.jsonl"
        return read_jsonl(path) if path.is_file() else []

    def record(self, pair: Pair, labeller: str, outcome: str, winner: int | None = None, reason: str = "",
               **extra) -> dict:
        """Append one decision at once (and durably) to labels.jsonl; returns the event."""
        if outcome not in OUTCOMES:
            raise DataError(f"Unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}.")
        if outcome == "win" and winner not in (pair.first, pair.second):
            raise DataError(f"Pair {pair.id}: the winner must be answer {pair.first} or {pair.second}, got {winner!r}.")
        loser = None if outcome != "win" else (pair.second if winner == pair.first else pair.first)
        event = {"id": uuid.uuid4().hex[:12], "event": "label", "pair": pair.id, "labeller": labeller,
                 "outcome": outcome, "winner": winner if outcome == "win" else None, "loser": loser,
                 "reason": reason, "time": time.time(), **extra}
        _append_line(self.path / "labels.jsonl", event)
        return event

    def undo(self, labeller: str) -> dict | None:
        """Take back this labeller's latest standing decision (an undo event); None when there is none."""
        live = _live_events(self.events(), labeller)
        if not live:
            return None
        target = live[-1]
        event = {"id": uuid.uuid4().hex[:12], "event": "undo", "target": target["id"], "pair": target["pair"],
                 "labeller": labeller, "time": time.time()}
        _append_line(self.path / "labels.jsonl", event)
        return target

    def decisions(self, labeller: str | None = None) -> dict[tuple[str, str], Decision]:
        """The standing decision of each (pair, labeller): the latest label event not undone."""
        events = self.events()
        labellers = {e["labeller"] for e in events} if labeller is None else {labeller}
        out: dict[tuple[str, str], Decision] = {}
        for who in sorted(labellers):
            for e in _live_events(events, who):
                out[(e["pair"], who)] = Decision(e["pair"], who, e["outcome"], e.get("winner"), e.get("loser"),
                                                 e.get("reason", ""), e["time"], e["id"])
        return out

    def labellers(self) -> list[str]:
        return sorted({e["labeller"] for e in self.events()})

    def progress(self, labeller: str) -> dict:
        pairs = self.pairs()
        mine = self.decisions(labeller)
        skipped = sum(1 for d in mine.values() if d.outcome == "skip")
        labelled = len(mine) - skipped
        return {"total": len(pairs), "labelled": labelled, "skipped": skipped, "left": len(pairs) - labelled}

    def summary(self) -> dict:
        info = self.info()
        return {"pool": self.id, "kind": info.get("kind"), "state": info.get("state"),
                "models": ", ".join(m.get("name", "") for m in info.get("models", [])),
                "prompts": info.get("done", 0), "pairs": len(self.pairs()), "round": info.get("round"),
                "labellers": ", ".join(self.labellers()), "created": info.get("created")}


def _live_events(events: list[dict], labeller: str) -> list[dict]:
    """This labeller's label events, in order, with the undone ones removed."""
    live: dict[str, dict] = {}
    for e in events:
        if e.get("labeller") != labeller:
            continue
        if e.get("event") == "label":
            live[e["id"]] = e
        elif e.get("event") == "undo":
            live.pop(e.get("target"), None)
    return list(live.values())


def _append_line(path: Path, row: dict) -> None:
    """One JSON line, appended in a single write under a file lock, then flushed to disk.

    The lock keeps two processes (the app and a CLI) from interleaving lines; fsync makes a
    decision survive a crash the moment the click returns.
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


def prompt_text(messages: list[dict]) -> str:
    """The prompt as a person reads it: the last user message."""
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else ""


# --- creating, listing, finding ---------------------------------------------------------------


def create_pool(kind: str, label: str = "pool", **info) -> Pool:
    """A new, empty pool folder whose id is claimed by an exclusive mkdir (two creators never share one)."""
    if kind not in KINDS:
        raise DataError(f"Unknown pool kind {kind!r}; one of {', '.join(KINDS)}.")
    root = pools_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in label)[:40].strip("-.") or "pool"
    for n in range(1, 1000):
        pool_id = f"{stamp}-{safe}" + (f"-{n}" if n > 1 else "")
        try:
            (root / pool_id).mkdir()
        except FileExistsError:
            continue
        pool = Pool(root / pool_id)
        pool.update(id=pool_id, kind=kind, created=time.time(), state="new", done=0, **info)
        return pool
    raise DataError(f"Could not claim a pool folder under {root} for {safe!r}.")


def create_pool_at(path: str | Path, kind: str, **info) -> Pool:
    """A new pool in a folder the caller names (the CLI's --out); the folder must not exist or be empty."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise DataError(f"{path} already exists and is not empty; choose a new folder for the pool.")
    path.mkdir(parents=True, exist_ok=True)
    pool = Pool(path)
    pool.update(id=path.name, kind=kind, created=time.time(), state="new", done=0, **info)
    return pool


def list_pools(root: Path | None = None) -> list[Pool]:
    root = root or pools_root()
    if not root.is_dir():
        return []
    pools = [Pool(p) for p in root.iterdir() if (p / "pool.json").is_file()]
    return sorted(pools, key=lambda p: p.info().get("created") or 0, reverse=True)


def get_pool(pool: str | Path | Pool) -> Pool:
    """A pool by id (a `str`, looked up by name among STUDIO_HOME/pools: never a path) or by folder (a `Path`)."""
    from .ids import find

    if isinstance(pool, Pool):
        return pool
    path = pool if isinstance(pool, Path) else None
    if path is None:
        try:
            path = find("pool", pool, "pool.json")
        except FileNotFoundError:
            path = None
    if path is None or not (path / "pool.json").is_file():
        known = ", ".join(p.id for p in list_pools()[:10]) or "none yet"
        raise FileNotFoundError(f"No pool {str(pool)[:80]!r} (a pool id under {pools_root()}). Pools: {known}")
    return Pool(path)


def mark_interrupted(root: Path | None = None, live_ids: set[str] = frozenset()) -> list[str]:
    """Pools left `generating` by a process that died are marked interrupted; their candidates stay usable."""
    from .runs import _pid_alive

    marked = []
    for pool in list_pools(root):
        info = pool.info()
        if info.get("state") != "generating" or pool.id in live_ids:
            continue
        if info.get("pid") == os.getpid() or _pid_alive(info.get("pid")):
            continue
        pool.update(state="interrupted", error=f"the process generating it (pid {info.get('pid')}) ended")
        marked.append(pool.id)
    return marked


# --- the preference file ----------------------------------------------------------------------

PROVENANCE = ("labeller", "round", "chosen_model", "rejected_model", "pool", "pair", "reason")


def preference_rows(pool: Pool, labeller: str | None = None) -> list[dict]:
    """One row per standing win decision: prompt/chosen/rejected and where it came from.

    Ties, "both bad" and skips make no row (they say nothing about which answer is better).
    With several labellers, each labeller's decision is its own row.
    """
    candidates = pool.candidates()
    by_pair = {p.id: p for p in pool.pairs()}
    round_ = pool.info().get("round")
    rows = []
    for (pair_id, who), d in sorted(pool.decisions(labeller).items()):
        if d.outcome != "win" or pair_id not in by_pair:
            continue
        c = candidates[by_pair[pair_id].candidate]
        chosen, rejected = c["answers"][d.winner], c["answers"][d.loser]
        if chosen["text"].strip() == rejected["text"].strip():
            continue  # identical answers teach nothing (and `data check` would drop the row)
        messages = c["messages"]
        prompt = messages if len(messages) > 1 else c["prompt"]
        rows.append({"prompt": prompt, "chosen": chosen["text"], "rejected": rejected["text"], "labeller": who,
                     "round": round_, "chosen_model": chosen.get("name") or chosen.get("model"),
                     "rejected_model": rejected.get("name") or rejected.get("model"), "pool": pool.id,
                     "pair": pair_id, "reason": d.reason})
    return rows


def to_preferences(pool: Pool | str, labeller: str | None = None, path: str | Path | None = None) -> tuple[Path, int]:
    """Write the labelled pairs as a standard preference JSONL (default pools/<id>/preferences.jsonl).

    Columns: prompt, chosen, rejected (the layout `data check` and training read as they are), then
    the provenance columns labeller, round, chosen_model, rejected_model, pool, pair, reason.
    """
    pool = get_pool(pool)
    rows = preference_rows(pool, labeller)
    if not rows:
        who = f" by {labeller}" if labeller else ""
        raise DataError(f"Pool {pool.id} has no labelled pair with a winner{who} yet: label some pairs first "
                        "(ties, 'both bad' and skips make no preference).")
    path = Path(path) if path else pool.path / "preferences.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path, len(rows)


def preference_files(root: Path | None = None) -> list[Path]:
    """Every pool's written preference file, newest pool first (for the Data tab's list)."""
    return [p.path / "preferences.jsonl" for p in list_pools(root) if (p.path / "preferences.jsonl").is_file()]
