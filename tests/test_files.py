"""studio.files: the folders the web app reads data from, hub ids that cannot be paths, and uploads."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from studio.errors import AccessError, ConfigError, DataError
from studio.files import (
    allowed_data_roots, check_data_path, check_data_source, clean_uploads, discard_upload, is_hub_id,
    max_upload_bytes, preset_data_dir, store_upload, uploads_dir,
)

TWIN = preset_data_dir() / "twin-style.jsonl"
ROW = json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b"}) + "\n"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    (home / "uploads").mkdir(parents=True)
    monkeypatch.setenv("STUDIO_HOME", str(home))
    monkeypatch.delenv("STUDIO_DATA_DIRS", raising=False)
    monkeypatch.delenv("STUDIO_MAX_UPLOAD_MB", raising=False)
    monkeypatch.delenv("STUDIO_UPLOAD_MAX_AGE_HOURS", raising=False)
    return home


def outside_file(tmp_path: Path, name: str = "secret.jsonl") -> Path:
    path = tmp_path / "elsewhere" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(ROW)
    return path


# --- the folders ----------------------------------------------------------------------------------


def test_the_roots_are_uploads_pools_preset_data_and_the_operators_folders(home, tmp_path, monkeypatch):
    extra, more = tmp_path / "extra", tmp_path / "more"
    monkeypatch.setenv("STUDIO_DATA_DIRS", f"{extra}{os.pathsep}{os.pathsep}{more}")
    assert allowed_data_roots() == [(home / "uploads").resolve(), (home / "pools").resolve(), preset_data_dir().resolve(),
                                    extra, more]


def test_preset_data_and_uploads_are_readable(home):
    assert check_data_path(TWIN) == TWIN.resolve()
    upload = home / "uploads" / "abc.jsonl"
    upload.write_text(ROW)
    assert check_data_path(str(upload)) == upload.resolve()


@pytest.mark.parametrize("text", ["/etc/passwd", "/etc/hostname.jsonl", "../../../../etc/passwd.jsonl",
                                  "studio/data.py", "/proc/self/environ", "/dev/zero"])
def test_paths_outside_the_roots_are_refused_naming_the_path_and_the_roots(home, text):
    with pytest.raises(AccessError) as err:
        check_data_path(text)
    message = str(err.value)
    assert text in message and "outside the folders" in message and str(home / "uploads") in message
    assert "STUDIO_DATA_DIRS" in message


def test_a_missing_file_outside_is_refused_the_same_as_an_existing_one(home, tmp_path):
    existing = outside_file(tmp_path)
    messages = []
    for path in (existing, existing.with_name("missing.jsonl")):
        with pytest.raises(AccessError) as err:
            check_data_path(path)
        messages.append(str(err.value).replace(path.name, "NAME"))
    assert messages[0] == messages[1]  # a refusal tells nothing about what exists elsewhere


def test_a_symlink_that_leads_out_of_uploads_is_refused(home, tmp_path):
    secret = outside_file(tmp_path)
    link = home / "uploads" / "link.jsonl"
    link.symlink_to(secret)
    with pytest.raises(AccessError, match="outside the folders"):
        check_data_path(link)
    folder_link = home / "uploads" / "dir"
    folder_link.symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(AccessError):
        check_data_path(folder_link / secret.name)


def test_a_symlink_inside_the_roots_is_followed(home):
    link = home / "uploads" / "twin.jsonl"
    link.symlink_to(TWIN)
    assert check_data_path(link) == TWIN.resolve()


def test_an_operator_folder_is_readable_once_listed(home, tmp_path, monkeypatch):
    secret = outside_file(tmp_path)
    with pytest.raises(AccessError):
        check_data_path(secret)
    monkeypatch.setenv("STUDIO_DATA_DIRS", str(secret.parent))
    assert check_data_path(secret) == secret.resolve()


def test_inside_the_roots_special_files_and_folders_are_refused(home):
    uploads = home / "uploads"
    os.mkfifo(uploads / "pipe.jsonl")
    (uploads / "folder.jsonl").mkdir()
    with pytest.raises(DataError, match="pipe.jsonl is not a regular file \\(a named pipe\\)"):
        check_data_path(uploads / "pipe.jsonl")
    with pytest.raises(DataError, match="folder.jsonl is a folder"):
        check_data_path(uploads / "folder.jsonl")
    with pytest.raises(DataError, match="file not found"):
        check_data_path(uploads / "gone.jsonl")


def test_a_nul_byte_in_a_path_is_refused(home):
    with pytest.raises(AccessError, match="NUL byte"):
        check_data_path(str(home / "uploads" / "a\x00b.jsonl"))


def test_the_cli_may_read_any_regular_file(home, tmp_path):
    secret = outside_file(tmp_path)
    assert check_data_path(secret, for_web=False) == secret.resolve()
    with pytest.raises(DataError, match="is not a regular file"):
        check_data_path("/dev/zero", for_web=False)


@pytest.mark.parametrize("text, hub", [
    ("mlabonne/llmtwin-dpo", True),
    ("HuggingFaceH4/ultrafeedback_binarized", True),
    ("owner/name.v2", True),
    ("../../etc/passwd.jsonl", False),
    ("/tmp/x.csv", False),
    ("tmp/x.csv", False),
    ("owner/data.jsonl", False),
    ("a/b/c", False),
    ("../etc", False),
    ("owner/..", False),
    ("./x", False),
    ("~/x", False),
    ("owner/na me", False),
    ("owner/-name", False),
    ("owner/name\n", True),  # surrounding whitespace is trimmed, as typed in a text box
])
def test_what_counts_as_a_hub_id(text, hub):
    assert is_hub_id(text) is hub


def test_check_data_source_lets_hub_ids_through_and_checks_everything_else(home):
    assert check_data_source("mlabonne/llmtwin-dpo") == "mlabonne/llmtwin-dpo"
    assert check_data_source(str(TWIN)) == str(TWIN.resolve())
    for text in ("../../etc/passwd.jsonl", "/tmp/x.csv", "etc/passwd.csv"):
        with pytest.raises(AccessError):
            check_data_source(text)
    with pytest.raises(DataError, match="No data given"):
        check_data_source("  ")


def test_a_hub_like_name_that_exists_here_is_a_path_and_is_checked(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "name").write_text(ROW)
    with pytest.raises(AccessError):
        check_data_source("owner/name")


# --- uploads --------------------------------------------------------------------------------------


def gradio_temp(tmp_path: Path, name: str, content: bytes = ROW.encode()) -> Path:
    path = tmp_path / "gradio" / "0123abcd" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def uploads(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "uploads").iterdir())


def test_an_upload_is_stored_under_a_generated_name_and_the_temporary_copy_removed(home, tmp_path):
    temp = gradio_temp(tmp_path, "../my pairs; rm -rf.JSONL")
    stored = store_upload(temp, temp.name)
    assert stored.parent == uploads_dir() and stored.suffix == ".jsonl"
    assert len(stored.stem) == 32 and int(stored.stem, 16) >= 0  # uuid hex, nothing of the user's name
    assert stored.read_text() == ROW and not temp.exists()
    assert uploads(home) == [stored.name]  # no partial file left beside it
    assert check_data_path(stored) == stored


def test_an_oversized_upload_is_refused_and_deleted(home, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_MAX_UPLOAD_MB", "0.001")
    assert max_upload_bytes() == 1048
    temp = gradio_temp(tmp_path, "big.csv", b"x" * 2000)
    with pytest.raises(DataError, match=r"big.csv is 0.0 MB, over the upload limit of 0.001 MB \(STUDIO_MAX_UPLOAD_MB\)"):
        store_upload(temp, "big.csv")
    assert not temp.exists() and uploads(home) == []


def test_an_upload_of_an_unknown_type_is_refused_and_deleted(home, tmp_path):
    temp = gradio_temp(tmp_path, "notes.txt")
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        store_upload(temp, "notes.txt")
    assert not temp.exists() and uploads(home) == []


def test_the_default_upload_limit_is_200_mb(home):
    assert max_upload_bytes() == 200 * 2**20


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "lots"])
def test_a_bad_upload_limit_setting_is_a_config_error(home, monkeypatch, value):
    monkeypatch.setenv("STUDIO_MAX_UPLOAD_MB", value)
    with pytest.raises(ConfigError, match="STUDIO_MAX_UPLOAD_MB must be a positive number"):
        max_upload_bytes()


def test_discard_deletes_only_a_stored_upload(home, tmp_path):
    stored = store_upload(gradio_temp(tmp_path, "a.jsonl"), "a.jsonl")
    elsewhere = outside_file(tmp_path)
    link = home / "uploads" / "link.jsonl"
    link.symlink_to(elsewhere)
    assert discard_upload(elsewhere) is False and elsewhere.exists()
    assert discard_upload(link) is False and elsewhere.exists()
    assert discard_upload(TWIN) is False and TWIN.exists()
    assert discard_upload("owner/name") is False
    assert discard_upload(stored) is True and not stored.exists()


def test_old_uploads_are_cleaned_and_new_or_kept_ones_stay(home, tmp_path, monkeypatch):
    old, new, busy = (store_upload(gradio_temp(tmp_path, f"{n}.jsonl"), f"{n}.jsonl") for n in ("old", "new", "busy"))
    week_ago = time.time() - 8 * 24 * 3600
    for path in (old, busy):
        os.utime(path, (week_ago, week_ago))
    assert clean_uploads(keep={busy}) == [old]
    assert not old.exists() and new.exists() and busy.exists()
    monkeypatch.setenv("STUDIO_UPLOAD_MAX_AGE_HOURS", "0.01")
    assert sorted(clean_uploads(now=time.time() + 3600)) == sorted([new, busy])
