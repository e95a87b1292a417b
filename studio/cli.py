"""Command line: the same engine as the web app, headless.

    python -m studio presets
    python -m studio data check presets/data/twin-style.jsonl --json
    python -m studio train --preset cpu-quickstart
    python -m studio train --preset cpu-quickstart --data my.csv --set beta=0.2 --max-steps 20 --out runs/try1

Exit codes: 0 success, 1 a run that failed, 2 bad input (the message goes to stderr), 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# Heavy imports (torch, transformers) live inside the commands so --help and `presets` answer at once.


class UserError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        if _is_user_error(e):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


def _is_user_error(e: Exception) -> bool:
    from .config import ConfigError

    if isinstance(e, (UserError, ConfigError, FileNotFoundError)):
        return True
    # Imported lazily: studio.data / studio.models may not be loaded yet.
    return type(e).__name__ in ("DataError", "ModelError", "JobBusy", "EvalError")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studio", description="DPO Studio: DPO training, headless.")
    sub = p.add_subparsers(metavar="COMMAND")

    presets = sub.add_parser("presets", help="list the presets")
    presets.add_argument("--json", action="store_true")
    presets.set_defaults(func=cmd_presets)

    data = sub.add_parser("data", help="preference data tools")
    data_sub = data.add_subparsers(metavar="ACTION")
    check = data_sub.add_parser("check", help="read a preference file, report its layout, dropped rows and token lengths")
    check.add_argument("file", help="JSONL / JSON / CSV / Parquet file, or a hub dataset id")
    _column_flags(check)
    check.add_argument("--model", default="embedded", help="model whose tokenizer counts tokens (default: embedded)")
    check.add_argument("--max-length", type=int, default=None, help="drop pairs whose prompt alone reaches this (default 512)")
    check.add_argument("--no-tokens", action="store_true", help="skip token counting (no tokenizer is loaded)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=cmd_data_check)

    train = sub.add_parser("train", help="train a DPO adapter headless")
    train.add_argument("--preset", default="cpu-quickstart", help="preset name or YAML path (default cpu-quickstart)")
    train.add_argument("--data", help="preference data file or hub id (overrides the preset's)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set beta=0.2 (repeatable)")
    train.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    train.add_argument("--out", help="the run folder (default STUDIO_HOME/runs/<id>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)
    return p


def _column_flags(p: argparse.ArgumentParser) -> None:
    for name in ("prompt", "chosen", "rejected", "system"):
        p.add_argument(f"--{name}-col", help=f"column holding the {name}")


# --- commands ---------------------------------------------------------------------------------


def cmd_presets(args) -> int:
    from .config import load_preset, preset_names

    rows = []
    for name in preset_names():
        preset = load_preset(name)
        c = preset.config
        rows.append({"name": name, "summary": preset.summary, "model": c.model, "method": c.method, "card": preset.card})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['method']:<5}  {r['summary']}")
    return 0


def cmd_data_check(args) -> int:
    from .config import RunConfig
    from .data import Columns, load_preferences

    tokenizer = None
    if not args.no_tokens:
        from .models import load_tokenizer, resolve_model

        tokenizer = load_tokenizer(resolve_model(args.model))
    max_length = args.max_length or RunConfig.max_length
    columns = Columns(args.prompt_col, args.chosen_col, args.rejected_col, args.system_col)
    data = load_preferences(args.file, columns, tokenizer=tokenizer, max_length=max_length if tokenizer else None)
    report = data.report.to_dict()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['source']}: {report['format']}, layout: {report['layout']}")
    print(f"rows read: {report['rows']}, usable pairs: {report['pairs']}, dropped: {len(report['dropped'])}")
    for d in report["dropped"][:50]:
        print(f"  row {d['row']}: {d['reason']}")
    if len(report["dropped"]) > 50:
        print(f"  … and {len(report['dropped']) - 50} more (use --json for all)")
    if report.get("tokens"):
        print("tokens (min / mean / p95 / max):")
        for part, s in report["tokens"].items():
            print(f"  {part:<9} {s['min']:>6} {s['mean']:>8.1f} {s['p95']:>6} {s['max']:>6}")
    return 0


def cmd_train(args) -> int:
    from .config import apply_overrides, load_preset

    preset = load_preset(args.preset)
    cfg = preset.config
    if args.data:
        cfg = cfg.replace(data=args.data)
    cfg = apply_overrides(cfg, args.overrides)
    if args.max_steps is not None:
        cfg = cfg.replace(max_steps=args.max_steps)

    from .runs import mark_interrupted
    from .training import TrainingJob

    mark_interrupted()
    job = TrainingJob(cfg, run_dir=args.out, preset=preset.name).start()
    print(f"run folder: {job.run.path}", file=sys.stderr)
    try:
        follow(job, quiet=args.quiet)
    except KeyboardInterrupt:
        print("\nstopping: saving the adapter at the next step…", file=sys.stderr)
        job.stop()
        job.wait()
    p = job.progress()
    if job.state == "failed":
        print(f"error: training failed: {job.error}\n(details: {job.run.path / 'error.log'})", file=sys.stderr)
        return 1
    last = next((m for m in reversed(job.metrics.since(0)) if "rewards/margins" in m), {})
    print(f"{job.state}: {p['step']} steps in {p['elapsed']:.0f}s; "
          f"last loss {last.get('loss', float('nan')):.4f}, margins {last.get('rewards/margins', float('nan')):.4f}; "
          f"adapter: {job.run.adapter_dir}")
    return 130 if job.state == "stopped" else 0


def follow(job, quiet: bool = False, poll: float = 0.5) -> None:
    """A progress bar fed by the job's metrics log, the same stream the web app charts."""
    from tqdm import tqdm

    bar, seen, state = None, 0, None
    while job.is_alive():
        if job.state != state and not quiet:
            state = job.state
            if bar is None:
                print(f"[{state}]", file=sys.stderr)
        if bar is None and job.total_steps and not quiet:
            bar = tqdm(total=job.total_steps, desc="DPO", unit="step", file=sys.stderr)
        rows = job.metrics.since(seen)
        seen += len(rows)
        train_rows = [r for r in rows if "loss" in r]
        if bar is not None:
            bar.update(job.step - bar.n)
            if train_rows:
                r = train_rows[-1]
                bar.set_postfix(loss=f"{r['loss']:.3f}", margins=f"{r.get('rewards/margins', 0):.3f}",
                                acc=f"{r.get('rewards/accuracies', 0):.2f}")
        time.sleep(poll)
    if bar is not None:
        bar.update(job.step - bar.n)
        bar.close()
