"""An id is a name, never a path: runs, pools, sweeps and exports are found among the studio's own folders by name.

`find(kind, id)` checks the id against a strict name pattern and then looks it up in the listing of its root
folder under STUDIO_HOME, so `../../other_home/pools/p1`, an absolute path, or a link that leads elsewhere never
names anything. Callers that may be given a folder (the CLI, run by the operator) pass a `Path`; a `str` from a
browser is only ever an id. (To be folded into studio/store.py's `find` at merge.)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .config import studio_home

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FOLDERS = {"run": "runs", "pool": "pools", "sweep": "sweeps", "export": "exports"}


class UnknownId(FileNotFoundError):
    """No such run / pool / sweep / export among the studio's own; the message names the kind and the id."""


def root(kind: str) -> Path:
    return studio_home() / FOLDERS[kind]


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def find(kind: str, value: str, marker: str | None = None) -> Path:
    """The folder of the `kind` named `value` (a direct child of its root, not a link), holding `marker` if given.

    UnknownId otherwise, with the same message whether the name is malformed, a path, or simply absent, so a
    refusal says nothing about what exists outside the studio.
    """
    base = root(kind)
    text = value if isinstance(value, str) else str(value)
    missing = UnknownId(f"No {kind} {text[:80]!r} in this studio ({kind} ids are names such as the ones listed "
                        f"under {FOLDERS[kind]}/, never paths).")
    if not is_id(text):
        raise missing
    try:
        names = set(os.listdir(base))
    except OSError:
        raise missing from None
    path = base / text
    if text not in names or path.is_symlink() or not path.is_dir():
        raise missing
    if marker is not None and not (path / marker).is_file():
        raise missing
    return path
