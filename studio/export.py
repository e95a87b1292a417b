"""Export a run's trained adapter as a zip to download: the adapter files plus the config that made them.

    from studio.export import zip_adapter
    zip_adapter(get_run("20250101-120000-cpu-quickstart"))  # -> STUDIO_HOME/exports/<run-id>-adapter.zip
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .config import studio_home
from .runs import Run

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
    return studio_home() / "exports"


def zip_adapter(run: Run, out_dir: Path | None = None) -> Path:
    """Write <run-id>-adapter.zip holding <run-id>/adapter/*, config.yaml, data.json and a README."""
    if not run.has_adapter:
        raise FileNotFoundError(f"Run {run.id} has no saved adapter (state: {run.state}).")
    out_dir = Path(out_dir) if out_dir else exports_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{run.id}-adapter.zip"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(run.adapter_dir.rglob("*")):
            if path.is_file():
                archive.write(path, f"{run.id}/adapter/{path.relative_to(run.adapter_dir).as_posix()}")
        for name in ("config.yaml", "data.json", "eval.json"):
            if (run.path / name).is_file():
                archive.write(run.path / name, f"{run.id}/{name}")
        model = run.read_config_raw().get("model", "?")
        archive.writestr(f"{run.id}/README.md", README.format(run_id=run.id, model=model))
    tmp.replace(target)  # a download never sees a half-written zip
    return target
