"""Share a run on the Hugging Face Hub: a push of its adapter or merged model, with the model card its export wrote.

    from studio.hub import push_to_hub
    push_to_hub(run, "me/smollm2-dpo", what="adapter")            # token from the argument or HF_TOKEN

The token is only handed to huggingface_hub: never printed, logged, or written to a run or export folder,
and scrubbed from any error message that reaches the user.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from urllib.parse import urlparse

from .errors import AccessError, ConfigError, ModelError
from .export import MARKER, export_run, latest_export, remember
from .model_card import REPO_ID
from .runs import Run, get_run

# --- push ------------------------------------------------------------------------------------


def _offline_reason() -> str | None:
    """Why the hub cannot be reached from here, found in a few seconds at most; None when it can."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE")  # read now; huggingface_hub read it once, at import
    if (flag.lower() in ("1", "true", "yes", "on")) if flag is not None else constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        return f"{url.hostname} cannot be reached ({type(e).__name__})"
    return None


def push_to_hub(run: Run | str, repo_id: str, what: str = "adapter", token: str | None = None, private: bool = True,
                progress: Callable[[str, int, int | None], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> dict:
    """Upload the run's adapter or merged model (exporting it first if needed) with its model card."""
    run = run if isinstance(run, Run) else get_run(run)
    if what not in ("adapter", "merged"):
        raise ConfigError(f"Push what={what!r}? Choose 'adapter' or 'merged'.")
    if not REPO_ID.match(repo_id or ""):
        raise ConfigError(f"Repo id {repo_id!r} should look like OWNER/NAME (letters, digits, '-', '_', '.').")
    reason = _offline_reason()
    if reason:
        raise ModelError(f"Cannot push to the hub: {reason}. Export the {what} locally instead "
                         f"(Export in the Runs tab, or the CLI's export command) and upload it where the hub is reachable.")
    token = token or os.environ.get("HF_TOKEN") or _stored_token()
    if not token:
        raise AccessError("No Hugging Face token: set HF_TOKEN, or enter a write token in the token field.")
    from huggingface_hub import HfApi

    from huggingface_hub import constants

    api = HfApi(token=token, endpoint=os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    try:
        if progress:
            progress("checking the token", 0, None)
        user = api.whoami()
        record = latest_export(run, what) or export_run(run, what, progress=progress, should_stop=should_stop)
        if record.get("state") == "stopped":
            return record
        if progress:
            progress("uploading", 0, None)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=record["path"], repo_id=repo_id, repo_type="model",
                                   commit_message=f"DPO Studio: {what} of run {run.id}", ignore_patterns=[MARKER])
    except Exception as e:  # noqa: BLE001 - every hub failure becomes one readable message without the token
        message = str(e).replace(token, "***")
        name = type(e).__name__
        # The status code, not "401" in the text: a request id or URL in the message may hold those digits.
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401 or "Unauthorized" in name:
            raise AccessError(f"The hub refused the token (401) for {repo_id}: use a token with write access.") from None
        raise ModelError(f"Push to {repo_id} failed ({name}): {message}") from None
    url = getattr(commit, "repo_url", None) or f"{(os.environ.get('HF_ENDPOINT') or 'https://huggingface.co')}/{repo_id}"
    entry = {"format": f"hub-{what}", "path": str(url), "repo": repo_id, "private": private,
             "bytes": record["bytes"], "created": time.time(), "user": (user or {}).get("name")}
    remember(run, entry)
    return {**entry, "commit": getattr(commit, "oid", None), "source": record["path"]}


def _stored_token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001
        return None
