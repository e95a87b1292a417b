"""The reference model's log-probabilities of a run's answers, computed once and reused: `STUDIO_HOME/refcache/`.

DPO and KTO compare the policy with the frozen base model. With `precompute_ref_log_probs` TRL runs the base
once over the data before the first step (instead of once per step) and keeps the results as dataset columns
(`ref_chosen_logps` / `ref_rejected_logps` for DPO, `ref_logps` / `ref_KL_logps` for KTO). TRL's own reuse of
those columns goes through the `datasets` cache, which an in-memory dataset (what a run trains on) does not
have, so every run, sweep run and resume would compute them again. `with_ref_cache` wraps the trainer class so
that the columns are stored here after the first computation and read back on the next run with the same key.

The key is everything the numbers depend on, so a cache entry can never be reused wrongly:
- the base model: its resolved folder, a hash of its config.json and the size and mtime of every weight file
  (or the hub commit), plus the starting adapter's file hash for a run that continues another run's adapter;
- the exact token ids TRL will score (so the data, the chat or Alpaca template and the tokenizer), in order;
- max_length, truncation_mode, ld_alpha, the objective (and KTO's KL pairing, which the token ids hold);
- the dtype and device of the weights, bf16, and the torch / transformers / TRL versions.
A changed file, model, template or length misses and computes anew; `clear()` removes every entry.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from .store import publish_folder, root, staging_folder

FORMAT = 1  # bump when what is stored changes
COLUMNS = {"dpo": ("ref_chosen_logps", "ref_rejected_logps"), "kto": ("ref_logps", "ref_KL_logps")}
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "completion_ids", "KL_completion_ids")


def cache_root() -> Path:
    return root("refcache")


def usage() -> dict:
    """How many entries the cache holds and their size on disk, for the Runs tab."""
    root = cache_root()
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").is_file()
               ] if root.is_dir() else []
    size = sum(f.stat().st_size for p in entries for f in p.iterdir() if f.is_file())
    return {"entries": len(entries), "bytes": size}


def clear() -> dict:
    """Remove every entry; returns what was removed (usage() before). The next DPO or KTO run computes anew."""
    before = usage()
    root = cache_root()
    if root.is_dir():
        # Renamed first, so a run starting meanwhile never reads a half-removed entry.
        gone = root.with_name(f".refcache.cleared-{time.time_ns()}")
        root.rename(gone)
        shutil.rmtree(gone, ignore_errors=True)
    return before


# --- the key ------------------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_identity(model) -> dict | None:
    """What identifies the reference weights; None when they cannot be identified (then nothing is cached)."""
    config = getattr(model, "config", None)
    source = str(getattr(config, "name_or_path", "") or "")
    if not source:
        return None
    folder = Path(source)
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".gguf", ".pt"))
        if not files or not (folder / "config.json").is_file():
            return None
        return {"folder": str(folder.resolve()), "config": _sha((folder / "config.json").read_bytes()),
                "weights": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}
    commit = getattr(config, "_commit_hash", None)
    return {"hub": source, "commit": commit} if commit else None


def _start_adapter(cfg) -> str | None:
    """The hash of the adapter a run continues from: with one, TRL's reference is that adapter, not the bare base."""
    if not cfg.init_adapter:
        return None
    folder = Path(cfg.init_adapter)  # the adapter folder (training_data / files resolve a run id to it)
    path = folder / "adapter_model.safetensors"
    if not path.is_file():  # a run folder given instead of its adapter/
        path = folder / "adapter" / "adapter_model.safetensors"
    return _sha(path.read_bytes()) if path.is_file() else "missing"


def tokens_hash(dataset) -> str:
    """A hash of the token ids TRL will score, column by column, in order."""
    h = hashlib.sha256()
    for column in TOKEN_COLUMNS:
        if column in dataset.column_names:
            h.update(column.encode())
            for ids in dataset[column]:
                h.update(json.dumps(ids, separators=(",", ":")).encode())
                h.update(b";")
    h.update(str(len(dataset)).encode())
    return h.hexdigest()


def cache_key(trainer, dataset, cfg) -> tuple[str | None, dict]:
    """(key, what it was made of); key None when the reference cannot be identified."""
    import torch
    import transformers
    import trl

    model = trainer.model
    identity = model_identity(model)
    if identity is None:
        return None, {}
    weights = next(model.parameters())
    args = trainer.args
    parts = {
        "format": FORMAT,
        "objective": cfg.objective,
        "model": identity,
        "start_adapter": _start_adapter(cfg),
        "tokens": tokens_hash(dataset),
        "rows": len(dataset),
        "max_length": args.max_length,
        "truncation_mode": getattr(args, "truncation_mode", None),
        "ld_alpha": getattr(args, "ld_alpha", None),
        "kto_loss": getattr(args, "loss_type", None) if cfg.objective == "kto" else None,
        "use_liger_kernel": bool(getattr(args, "use_liger_kernel", False)),
        "dtype": str(weights.dtype),
        "device": weights.device.type,
        "bf16": bool(args.bf16),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
    }
    return _sha(json.dumps(parts, sort_keys=True, default=str).encode())[:40], parts


# --- read and write --------------------------------------------------------------------------------


def load(key: str, rows: int, columns: tuple[str, ...]) -> dict | None:
    """The stored columns for `key` (lists of floats), or None when there is no sound entry."""
    from safetensors.torch import load_file

    folder = cache_root() / key
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "logps.safetensors"))
    except (OSError, ValueError):
        return None
    if meta.get("rows") != rows or any(c not in tensors or len(tensors[c]) != rows for c in columns):
        return None
    return {c: tensors[c].tolist() for c in columns}


def store(key: str, values: dict, parts: dict) -> None:
    """Write an entry atomically: a reader sees a whole entry or none."""
    import torch
    from safetensors.torch import save_file

    target = cache_root() / key
    tmp = staging_folder(target)
    save_file({c: torch.as_tensor(v, dtype=torch.float32).contiguous() for c, v in values.items()},
              str(tmp / "logps.safetensors"))
    (tmp / "meta.json").write_text(json.dumps({**parts, "key": key, "created": time.time()}, indent=1, default=str),
                                   encoding="utf-8")
    # Two runs of the same data at once (a CLI run beside the web app, or two test workers) publish the same key: each
    # rename can lose to the other's. The key names the content, so whichever entry is in place is this one.
    for _ in range(20):
        try:
            publish_folder(tmp, target)
            return
        except OSError:
            if (target / "meta.json").is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                return
            time.sleep(0.05)
    raise OSError(f"could not publish the reference cache entry {key}")


def with_ref_cache(trainer_class, cfg, on_phase=None, eval_only: bool = False):
    """`trainer_class` (TRL's DPOTrainer or KTOTrainer) with its reference precomputation read from and written to
    the cache. `trainer.ref_cache` lists what happened per split: {"split", "hit", "key", "seconds"}.
    `on_phase(text)` names a reference pass that has to run (a miss): on a CPU it can take minutes, so the
    page must not sit at "loading the model" meanwhile.

    `eval_only` (DPO, a run that does not precompute its training pairs): the held-out pairs' reference is
    precomputed all the same. They are scored at every evaluation, so once beats once per evaluation; a
    training batch still runs the reference in its step."""

    columns = COLUMNS[cfg.objective]

    class Cached(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if eval_only and self.eval_dataset is not None:
                self.eval_dataset = self._precompute_ref_logps(self.eval_dataset, "eval",
                                                               self.args.per_device_eval_batch_size)

        def _compute_loss(self, model, inputs, return_outputs):
            if eval_only:  # TRL reads a batch's reference from its columns only when everything was precomputed
                self.precompute_ref_logps = columns[0] in inputs
            return super()._compute_loss(model, inputs, return_outputs)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            events = self.__dict__.setdefault("ref_cache", [])
            started = time.time()
            key, parts = cache_key(self, dataset, cfg)
            wanted = columns if (cfg.objective != "kto" or self.calculate_KL) else columns[:1]
            found = load(key, len(dataset), wanted) if key else None
            if found is not None:
                for column, values in found.items():
                    dataset = dataset.add_column(column, values)
                events.append({"split": name, "hit": True, "key": key, "seconds": round(time.time() - started, 2)})
                return dataset
            if on_phase is not None:
                on_phase(f"computing the reference model's log-probabilities for the {len(dataset)} {name} examples "
                         "(once: later runs on the same data and model read them from the cache)")
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            if key:
                store(key, {c: out[c] for c in wanted}, parts)
            events.append({"split": name, "hit": False, "key": key, "seconds": round(time.time() - started, 2)})
            return out

    Cached.__name__ = Cached.__qualname__ = trainer_class.__name__
    return Cached
