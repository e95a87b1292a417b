"""Which data files the web app may read, and the uploads it keeps.

The CLI is run by the operator and may read any regular file. The web app reads training data
only from its own uploads (STUDIO_HOME/uploads, stored under generated names), its pools' preference
files (STUDIO_HOME/pools), the bundled preset data, and the folders the operator lists in
STUDIO_DATA_DIRS; a hub dataset id is not a path and stays allowed. Uploads have a size limit
(STUDIO_MAX_UPLOAD_MB), an age limit (STUDIO_UPLOAD_MAX_AGE_HOURS) and a total (STUDIO_UPLOADS_MAX_MB, the oldest
removed first).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
import uuid
from pathlib import Path

from .config import PRESETS_DIR, positive_env, studio_home
from .data import FORMATS, file_kind, is_hub_id
from .errors import AccessError, ConfigError, DataError
from .models import is_embedded
from .runs import data_in_use
from .store import atomic_path, find, is_child, is_name, models_root, pools_root, runs_root, uploads_root

DEFAULT_MAX_UPLOAD_MB = 200  # the largest public preference sets (UltraFeedback, HH-RLHF) are under this
DEFAULT_UPLOAD_MAX_AGE_HOURS = 24 * 7
DEFAULT_UPLOADS_MAX_MB = 2048  # all kept uploads together; the oldest go first (STUDIO_UPLOADS_MAX_MB)

def check_home_writable() -> Path:
    """STUDIO_HOME exists (made if needed) and takes a file: everything the studio keeps goes there."""
    home = studio_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"STUDIO_HOME {home} is not writable ({e.strerror or e}): point STUDIO_HOME at a folder "
                          "this user can write (runs, uploads and the model cache live there).") from None
    return home


def uploads_dir() -> Path:
    """STUDIO_HOME/uploads (store.uploads_root)."""
    return uploads_root()


def preset_data_dir() -> Path:
    return PRESETS_DIR / "data"


def max_upload_mb() -> float:
    return positive_env("STUDIO_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB)


def max_upload_bytes() -> int:
    """The upload size limit in bytes (STUDIO_MAX_UPLOAD_MB, default 200): also launch(max_file_size=...)."""
    return int(max_upload_mb() * 2**20)


def data_dirs() -> list[Path]:
    """The folders the operator lists in STUDIO_DATA_DIRS (separated by os.pathsep)."""
    raw = os.environ.get("STUDIO_DATA_DIRS", "")
    return [Path(part).expanduser().resolve() for part in raw.split(os.pathsep) if part.strip()]


def allowed_data_roots() -> list[Path]:
    """Folders the web app may read data from, resolved (symlinks followed)."""
    # Pools hold only what the studio wrote itself (sampled answers, labels, their preference files).
    roots = [uploads_root().resolve(), pools_root().resolve(), preset_data_dir().resolve(), *data_dirs()]
    return list(dict.fromkeys(roots))


def check_data_source(source: str, for_web: bool = True) -> str:
    """`source` as load_preferences should get it: a hub id unchanged, else the checked, resolved path."""
    text = str(source).strip()
    if not text:
        raise DataError("No data given: upload a file or name a hub dataset (owner/name).")
    if is_hub_id(text) and not _exists(Path(text)):
        return text
    return str(check_data_path(text, for_web=for_web))


def check_data_path(path: str | Path, for_web: bool = True) -> Path:
    """The real path of a data file the caller may read; AccessError or DataError if it may not.

    for_web=True: the file must lie, after following every symlink, inside allowed_data_roots().
    The roots are checked before existence, so a refusal says nothing about what exists elsewhere.
    """
    text = str(path).strip()
    if "\x00" in text:
        raise AccessError(f"Refused: {text!r} is not a valid path (it holds a NUL byte).")
    candidate = Path(text) if for_web else Path(text).expanduser()
    try:
        # strict=False follows every link that exists, so a link that leads out of a root is seen as outside.
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as exc:  # a loop of links
        raise DataError(f"Cannot read {text}: {exc}.") from None
    if for_web and not _inside_any(resolved, allowed_data_roots()):
        raise AccessError(
            f"Refused: {text} is outside the folders the web app reads data from. Upload the file, or ask the "
            f"operator to add its folder to STUDIO_DATA_DIRS. Allowed: {', '.join(map(str, allowed_data_roots()))}."
        )
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        raise DataError(f"file not found: {text}") from None
    except OSError as exc:
        raise DataError(f"Cannot read {text}: {exc.strerror or exc}.") from None
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{resolved.name} is a folder; give a data file (JSONL, JSON, CSV or Parquet).")
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{resolved.name} is not a regular file ({file_kind(info.st_mode)}); give a data file.")
    return resolved


def _inside_any(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _exists(path: Path) -> bool:
    try:
        return path.exists() or path.is_symlink()
    except (OSError, ValueError):
        return False


# --- uploads -----------------------------------------------------------------------------------


def store_upload(temp_path: str | Path, original_name: str | None = None, remove_source: bool = True) -> Path:
    """Copy an upload into STUDIO_HOME/uploads under a generated name; the temporary file is removed.

    The name is a random hex id plus the original suffix (nothing else of the user's name reaches the
    disk). A file of an unknown type or over max_upload_bytes() is refused and its temporary copy
    deleted at once. The copy is written beside its target and renamed, so no half file is ever seen.
    """
    source = Path(temp_path)
    shown = original_name or source.name
    suffix = Path(shown).suffix.lower()
    try:
        info = os.stat(source)
        if suffix not in FORMATS:
            raise DataError(f"Cannot use {shown}: unknown file type '{suffix or '(none)'}'. "
                            "Upload a .jsonl / .ndjson, .json, .csv or .parquet file.")
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{shown} is not a regular file ({file_kind(info.st_mode)}).")
        limit = max_upload_bytes()
        if info.st_size > limit:
            raise DataError(f"{shown} is {info.st_size / 2**20:.1f} MB, over the upload limit of "
                            f"{max_upload_mb():g} MB (STUDIO_MAX_UPLOAD_MB).")
        folder = uploads_root()
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{uuid.uuid4().hex}{suffix}"
        with atomic_path(target) as partial, open(partial, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, length=2**20)
        cap_uploads(keep={target, *data_in_use()})
        return target
    finally:
        if remove_source:  # stored or refused, the web server's temporary copy has served its purpose
            _remove_quietly(source)


def discard_upload(path: str | Path) -> bool:
    """Delete a stored upload that was refused; False (nothing deleted) for anything not directly in uploads/."""
    candidate = Path(path)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        return False
    if not is_child("uploads", candidate) or not resolved.is_file():
        return False
    resolved.unlink(missing_ok=True)
    return True


def clean_uploads(max_age_hours: float | None = None, keep: set[Path] | frozenset = frozenset(),
                  now: float | None = None) -> list[Path]:
    """Delete uploads older than max_age_hours (default STUDIO_UPLOAD_MAX_AGE_HOURS, 168); returns them.

    `keep` holds paths still in use (the data of a run in progress), which stay whatever their age.
    """
    hours = max_age_hours if max_age_hours is not None else positive_env("STUDIO_UPLOAD_MAX_AGE_HOURS",
                                                                      DEFAULT_UPLOAD_MAX_AGE_HOURS)
    cutoff = (now if now is not None else time.time()) - hours * 3600
    folder = uploads_root()
    if not folder.is_dir():
        return []
    kept = {Path(p).resolve() for p in keep}
    removed = []
    for entry, info in _listed(folder):
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)) or info.st_mtime >= cutoff:
            continue
        if entry.resolve() in kept:
            continue
        _remove_quietly(entry)
        removed.append(entry)
    return removed


def max_uploads_bytes() -> int:
    return int(positive_env("STUDIO_UPLOADS_MAX_MB", DEFAULT_UPLOADS_MAX_MB) * 2**20)


def cap_uploads(keep: set[Path] | frozenset = frozenset(), limit: int | None = None) -> list[Path]:
    """Delete the oldest uploads until all of them together fit in `limit` bytes (STUDIO_UPLOADS_MAX_MB, 2048);
    files in `keep` (the newest upload, the data of any run) stay. Returns what was deleted."""
    limit = max_uploads_bytes() if limit is None else limit
    folder = uploads_dir()
    if not folder.is_dir():
        return []
    kept = {Path(p).resolve() for p in keep}
    entries = []
    for entry, info in _listed(folder):
        if stat.S_ISREG(info.st_mode) and not entry.name.startswith(".part-"):  # not one being written now
            entries.append((info.st_mtime, info.st_size, entry))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if entry.resolve() in kept:
            continue
        _remove_quietly(entry)
        total -= size
        removed.append(entry)
    return removed


def _listed(folder: Path):
    """(entry, its lstat) for each entry of `folder`; one that vanished or cannot be read is skipped."""
    for entry in folder.iterdir():
        try:
            yield entry, entry.lstat()
        except OSError:
            continue


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # a temporary file someone else already moved: nothing left to clean


# --- model folders and adapters named by a browser -------------------------------------------------


def allowed_model_roots() -> list[Path]:
    """Folders a model named in the web app may lie in: the studio's model cache and STUDIO_DATA_DIRS."""
    return list(dict.fromkeys([models_root().resolve(), *data_dirs()]))


def check_web_model(spec: str) -> str:
    """`spec` as the web app may use it: the embedded model, a hub id, or a model folder under an allowed folder.

    A folder outside them and a folder that does not exist get the same message, so nothing is learnt about
    the server's folders.
    """

    text = str(spec or "").strip()
    if not text or is_embedded(text):
        return text
    if "\x00" in text:
        raise AccessError("Refused: the model name holds a NUL byte.")
    candidate = Path(text)
    if is_hub_id(text) and not text.startswith((".", "/", "~")) and ".." not in text.split("/"):
        if not _exists(candidate):  # a relative folder of the server's own is not a hub id
            return text
    try:
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError):
        resolved = None
    if resolved is not None and _inside_any(resolved, allowed_model_roots()) and (resolved / "config.json").is_file():
        return str(resolved)
    raise AccessError(f"No model {text!r} here: name a hub id (owner/name), 'embedded', or a model folder under "
                      "a folder the operator listed in STUDIO_DATA_DIRS.")


def check_init_adapter(value: str | None) -> str | None:
    """The adapter folder a run may continue: a run id (its adapter), or a folder under the runs or STUDIO_DATA_DIRS.

    Anything else (an outside folder, a missing one) is refused with the same message before anything is read.
    """
    text = str(value or "").strip()
    if not text:
        return None
    refused = AccessError(f"Cannot continue from {text!r}: init_adapter takes the id of a finished run (or an "
                          "adapter folder under a folder listed in STUDIO_DATA_DIRS).")
    if is_name(text):
        try:
            folder = find("runs", text, "status.json") / "adapter"
        except FileNotFoundError:
            raise refused from None
    else:
        try:
            folder = Path(text).resolve(strict=False)
        except (OSError, RuntimeError):
            raise refused from None
        if not _inside_any(folder, [runs_root().resolve(), *data_dirs()]):
            raise refused
    if not (folder / "adapter_config.json").is_file():
        raise refused
    return str(folder)


def web_config(cfg):
    """A RunConfig from a browser with every path in it checked: data files, the model, the adapter to continue."""
    return cfg.replace(data=check_data_source(cfg.data),
                       eval_data=check_data_source(cfg.eval_data) if cfg.eval_data else None,
                       model=check_web_model(cfg.model) or cfg.model,
                       init_adapter=check_init_adapter(cfg.init_adapter))


def check_web_source(spec: str) -> str:
    """A model that answers, named in the web app: a run id of this studio, or what check_web_model allows."""
    text = str(spec or "").strip()
    if is_name(text):
        try:
            find("runs", text, "status.json")
            return text
        except FileNotFoundError:
            pass
    return check_web_model(text)
