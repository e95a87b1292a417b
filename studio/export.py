"""Export a run's trained adapter: the PEFT folder, a merged 16-bit model, or a GGUF file for llama.cpp / Ollama.

    from studio.export import export_run, list_exports, zip_adapter
    export_run(run, "merged")              # -> a record; files under STUDIO_HOME/exports/<run-id>/merged/
    export_run(run, "gguf", quant="q8_0")  # -> .../gguf-q8_0/<base>-<objective>-<run-id>-q8_0.gguf + Modelfile
    list_exports(run)                      # every export of the run: format, path, size, time
    zip_adapter(run)                       # <run-id>-adapter.zip to download from the web app

Each export is written into a temporary sibling folder and renamed into place, so a crash or a stop never
leaves half a model where a loader would pick it up. The folder holds export.json (what made it); the run
folder's exports.json lists every export of that run.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from .errors import AccessError, ConfigError, ModelError
from .gguf_export import QUANTS, check_architecture, check_tokenizer, modelfile_text, write_gguf
from .model_card import base_hub_id, base_license, model_card
from .models import EMBEDDED_NAME, is_embedded, load_base, load_tokenizer, resolve_model
from .runs import Run, get_run
from .store import atomic_path, exports_root, publish_folder, staging_folder

FORMATS = ("adapter", "merged", "gguf")
MARKER = "export.json"  # in every export folder: marks it as ours, so a later export may replace it
INDEX = "exports.json"  # in the run folder: the list the Runs tab shows

Progress = Callable[[str, int, int | None], None] | None
ShouldStop = Callable[[], bool] | None

README = """# DPO adapter from DPO Studio run {run_id}

Base model: {model}
Load it with PEFT on top of the same base model:

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained("<the base model>")
    model = PeftModel.from_pretrained(base, "{run_id}/adapter")

config.yaml is the run's full configuration (with the backend, device and library versions that ran it).
"""


def exports_dir() -> Path:
    """STUDIO_HOME/exports (store.exports_root), which the web app serves downloads from."""
    return exports_root()


def zip_adapter(run: Run, out_dir: Path | None = None) -> Path:
    """Write <run-id>-adapter.zip holding <run-id>/adapter/*, config.yaml, data.json and a README."""
    if not run.has_adapter:
        raise FileNotFoundError(f"Run {run.id} has no saved adapter (state: {run.state}).")
    out_dir = Path(out_dir) if out_dir else exports_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{run.id}-adapter.zip"
    # A download never sees a half-written zip: it is written beside the target and renamed.
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(run.adapter_dir.rglob("*")):
            if path.is_file():
                archive.write(path, f"{run.id}/adapter/{path.relative_to(run.adapter_dir).as_posix()}")
        for name in ("config.yaml", "data.json", "eval.json"):
            if (run.path / name).is_file():
                archive.write(run.path / name, f"{run.id}/{name}")
        model = run.read_config_raw().get("model", "?")
        archive.writestr(f"{run.id}/README.md", README.format(run_id=run.id, model=model))
    return target


# --- exports ---------------------------------------------------------------------------------


def default_target(run: Run, fmt: str, quant: str | None = "f16") -> Path:
    return exports_dir() / run.id / (f"gguf-{quant or 'f16'}" if fmt == "gguf" else fmt)


def model_name(run: Run) -> str:
    """`<base>-<objective>-<run-id>`: what a GGUF file and its general.name are called, so the file says what it is."""

    spec = str(run.read_config_raw().get("model", "embedded"))
    base = EMBEDDED_NAME if is_embedded(spec) else (base_hub_id(run) or Path(spec).name)
    base = base.rsplit("/", 1)[-1]
    objective = str(run.read_config_raw().get("objective") or "dpo")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{base}-{objective}-{run.id}")


def gguf_name(run: Run, quant: str) -> str:
    return f"{model_name(run)}-{quant}.gguf"


def export_run(run: Run | str, fmt: str, out_dir: str | Path | None = None, quant: str | None = None,
               progress: Progress = None, should_stop: ShouldStop = None) -> dict:
    """Write one export of a run's adapter and return its record (also added to the run's exports.json).

    fmt: "adapter" (PEFT folder), "merged" (16-bit safetensors + tokenizer, plain transformers) or
    "gguf" (quant "f16" (the default) or "q8_0", with an Ollama Modelfile); a quant with another format is refused. out_dir: the export folder itself
    (default STUDIO_HOME/exports/<run-id>/<format>[-<quant>]); it must be new, empty, or an earlier export.
    A stop leaves no export behind and returns a record with state "stopped".
    """

    run = run if isinstance(run, Run) else get_run(run)
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if fmt != "gguf" and quant is not None:
        raise ConfigError(f"--quant {quant} applies to the gguf format only; a {fmt} export keeps the weights' own "
                          f"type. Leave --quant out, or use --format gguf.")
    quant = quant or "f16" if fmt == "gguf" else None
    if fmt == "gguf" and quant not in QUANTS:
        raise ConfigError(f"Unknown GGUF quantization {quant!r}; choose one of {', '.join(QUANTS)}.")
    if not run.has_adapter:
        raise ModelError(f"Run {run.id} has no saved adapter (state: {run.state}), so there is nothing to export.")
    target = Path(out_dir).expanduser().resolve() if out_dir else default_target(run, fmt, quant)
    check_target(target, fmt, quant)
    started = time.time()
    tmp = staging_folder(target)
    try:
        writer = {"adapter": _write_adapter, "merged": _write_merged, "gguf": _write_gguf}[fmt]
        extra = writer(run, tmp, quant=quant, progress=progress, should_stop=should_stop)
        if extra is None:  # stopped between two units of work
            shutil.rmtree(tmp, ignore_errors=True)
            return {"state": "stopped", "format": fmt, "run": run.id, "path": None}
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        record = {
            "state": "done",
            "format": fmt,
            "quant": quant if fmt == "gguf" else None,
            "run": run.id,
            "path": str(target),
            "files": [{"name": p.relative_to(tmp).as_posix(), "bytes": p.stat().st_size} for p in files],
            "bytes": sum(p.stat().st_size for p in files),
            "seconds": round(time.time() - started, 2),
            "created": time.time(),
            **extra,
        }
        (tmp / MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
        publish_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    remember(run, {k: record[k] for k in ("format", "quant", "path", "bytes", "seconds", "created")})
    if progress:
        progress("done", 1, 1)
    return record


def check_target(target: Path, fmt: str | None = None, quant: str | None = None) -> None:
    """Refuse to write over a file, into a folder holding things that are not an earlier export of ours, or over
    an earlier export of another format (replacing a GGUF with a merged folder would lose it without a word)."""
    if target.exists() and not target.is_dir():
        raise AccessError(f"{target} is a file; give --out a folder (new, empty, or an earlier export).")
    if target.is_dir() and any(target.iterdir()) and not (target / MARKER).is_file():
        raise AccessError(
            f"{target} is not empty and is not an earlier DPO Studio export (it has no {MARKER}); "
            f"choose a new or empty folder so nothing of yours is overwritten."
        )
    if fmt is not None and (target / MARKER).is_file():
        try:
            earlier = json.loads((target / MARKER).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            earlier = {}
        was = (earlier.get("format"), earlier.get("quant") if earlier.get("format") == "gguf" else None)
        if was != (fmt, quant if fmt == "gguf" else None):
            def kind(f, q):
                return f"{f} ({q})" if q else str(f)
            raise AccessError(f"{target} holds the {kind(*was)} export of run {earlier.get('run', '?')}; this export is "
                              f"{kind(fmt, quant if fmt == 'gguf' else None)}. --out may replace an export of the "
                              f"same format only: choose another folder, or delete that one first.")


def remember(run: Run, entry: dict) -> None:
    """Add an export (or a push) to the run's exports.json, replacing an earlier one at the same place."""
    entries = [e for e in (run.read_json(INDEX) or []) if e.get("path") != entry["path"]]
    run.write_json(INDEX, [*entries, entry])


def list_exports(run: Run | str) -> list[dict]:
    """Every export of the run, newest first: format, quant, path (or hub URL), bytes, seconds, created, exists."""
    run = run if isinstance(run, Run) else get_run(run)
    entries = run.read_json(INDEX) or []
    for e in entries:
        e["exists"] = e.get("format", "").startswith("hub") or Path(e["path"]).exists()
    return sorted(entries, key=lambda e: e.get("created") or 0, reverse=True)


def latest_export(run: Run, fmt: str) -> dict | None:
    """The newest export of this format whose folder is still on disk."""
    for e in list_exports(run):
        if e.get("format") == fmt and e["exists"] and (Path(e["path"]) / MARKER).is_file():
            return json.loads((Path(e["path"]) / MARKER).read_text(encoding="utf-8"))
    return None


# --- the three writers: each fills `out` and returns extra record fields, or None when stopped ---


def _write_adapter(run: Run, out: Path, quant: str, progress: Progress, should_stop: ShouldStop) -> dict | None:
    files = [p for p in sorted(run.adapter_dir.iterdir()) if p.is_file() and p.name != "README.md"]
    for i, path in enumerate(files):
        if should_stop and should_stop():
            return None
        shutil.copy2(path, out / path.name)
        if progress:
            progress("copying the adapter", i + 1, len(files))
    notes = []
    hub_id = base_hub_id(run)
    config = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    if hub_id and config.get("base_model_name_or_path") != hub_id:
        # The run folder names a path on this machine; a shared adapter should name the base anyone can fetch.
        notes.append(f"adapter_config.json names {hub_id} as its base (the run used {config.get('base_model_name_or_path')}).")
        config["base_model_name_or_path"] = hub_id
        (out / "adapter_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "README.md").write_text(model_card(run, "adapter"), encoding="utf-8")
    return {"notes": notes}


def _merged(run: Run, progress: Progress, should_stop: ShouldStop):
    """(merged fp32 model, tokenizer, notes), or None when stopped. Always merges into the unquantized base."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig

    raw = run.read_config_raw()
    notes = []
    if progress:
        progress("loading the base model", 0, None)
    # On the CPU, unquantized, in the checkpoint's own dtype: a 16-bit base stays 16-bit (half the memory of
    # fp32; PEFT computes the update BA in fp32 before adding it), a fp32 one (the embedded model) stays fp32.
    stored = getattr(AutoConfig.from_pretrained(resolve_model(raw.get("model", "embedded"))), "dtype", None)
    dtype = stored if stored in (torch.bfloat16, torch.float16) else torch.float32
    model, tokenizer = load_base(raw.get("model", "embedded"), device="cpu", dtype=dtype)
    if should_stop and should_stop():
        return None
    if progress:
        progress("merging the adapter", 0, None)
    model = PeftModel.from_pretrained(model, str(run.adapter_dir)).merge_and_unload().eval()
    if raw.get("method") == "qlora":
        notes.append("QLoRA run: the adapter was merged into the 16-bit base weights, not into the 4-bit ones it "
                     "was trained against (adding the update to 4-bit weights would round most of it away).")
    if run.info.get("backend") == "unsloth":
        notes.append("Trained with Unsloth; merged with PEFT's merge_and_unload on the CPU (the adapter is a plain "
                     "PEFT LoRA, and this is the same W + scale·BA that Unsloth's merged_16bit save computes).")
    return model, tokenizer, notes


def _write_merged(run: Run, out: Path, quant: str, progress: Progress, should_stop: ShouldStop) -> dict | None:
    import torch

    merged = _merged(run, progress, should_stop)
    if merged is None or (should_stop and should_stop()):
        return None
    model, tokenizer, notes = merged
    source = next(model.parameters()).dtype
    # 16-bit: a bf16/fp16 base keeps its type; a fp32 base (the embedded model) becomes fp16, whose
    # 11-bit mantissa stays closer to the fp32 weights than bf16's 8 bits would.
    dtype = source if source in (torch.bfloat16, torch.float16) else torch.float16
    if progress:
        progress("saving safetensors", 0, None)
    model = model.to(dtype)
    model.config.name_or_path = run.id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(model_card(run, "merged"), encoding="utf-8")
    return {"dtype": str(dtype).removeprefix("torch."), "notes": notes}


def _write_gguf(run: Run, out: Path, quant: str, progress: Progress, should_stop: ShouldStop) -> dict | None:
    from transformers import AutoConfig

    # Refuse an unsupported family or tokenizer before loading any weights.
    path = resolve_model(run.read_config_raw().get("model", "embedded"))
    check_architecture(AutoConfig.from_pretrained(path).to_dict())
    pre = check_tokenizer(load_tokenizer(path))
    merged = _merged(run, progress, should_stop)
    if merged is None:
        return None
    model, tokenizer, notes = merged
    name = gguf_name(run, quant)
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer.save_pretrained(tok_dir)  # gguf.SpecialVocab reads merges, special ids and the template from files
        info = write_gguf(model, tokenizer, Path(tok_dir), out / name, quant, pre, name=model_name(run),
                          license=base_license(run), base=base_metadata(run), progress=progress,
                          should_stop=should_stop)
    if info is None:
        return None
    text, modelfile_notes = modelfile_text(tokenizer, name, context=model.config.max_position_embeddings,
                                           license=base_license(run))
    (out / "Modelfile").write_text(text, encoding="utf-8")
    (out / "README.md").write_text(model_card(run, "gguf", gguf_name=name), encoding="utf-8")
    return {"gguf": name, "notes": notes + modelfile_notes, **info}


def base_metadata(run: Run) -> dict:
    """GGUF's general.basename / general.finetune / general.base_model.0.*: the model this export was tuned from."""

    raw = run.read_config_raw()
    spec = str(raw.get("model", "embedded"))
    hub_id = base_hub_id(run)
    name = EMBEDDED_NAME if is_embedded(spec) else (hub_id or Path(spec).name).rsplit("/", 1)[-1]
    out = {"basename": name, "finetune": str(raw.get("objective") or "dpo"), "base_name": name}
    if hub_id:
        out.update(base_organization=hub_id.split("/", 1)[0], base_repo_url=f"https://huggingface.co/{hub_id}")
    return out
