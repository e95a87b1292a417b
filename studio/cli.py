"""Command line: the same engine as the web app, headless.

    python -m studio presets
    python -m studio data check presets/data/twin-style.jsonl --json
    python -m studio train --preset cpu-quickstart
    python -m studio train --preset cpu-quickstart --data my.csv --set beta=0.2 --max-steps 20 --out runs/try1
    python -m studio train --resume RUN            # a stopped, interrupted or failed run goes on from its last checkpoint
    python -m studio eval RUN                      # held-out preference accuracy, baseline vs tuned (saved as eval.json)
    python -m studio chat RUN --prompt "Write a paragraph to introduce supervised fine-tuning."
    python -m studio compare RUN [RUN ...] --markdown grid.md   # probe answers side by side, with simple measures
    python -m studio sweep --preset twin-style-cpu --grid beta=0.1,0.5 --grid learning_rate=5e-5,1e-4

RUN is a run id under STUDIO_HOME/runs or a run folder.

Every command that loads a model takes the one job slot (studio/jobs.py) that the web app's jobs take: while
another process holds it (a training in the app, another command), the command says so and waits its turn.

Exit codes: 0 success, 1 a run that failed, 2 bad input (the message goes to stderr), 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
import typing
from pathlib import Path

# The modules that import torch (training, evaluate, probes, chat) are imported inside the commands that need
# them, so --help, `presets` and `data check` answer at once.
from .backends import early_import
from .config import RunConfig, apply_overrides, choices_of, fields_of, load_preset, meta, preset_names
from .data import Columns, load_preferences
from .data.findings import KINDS, SMALL_EVAL, wilson
from .distributed import is_main, world_size
from .errors import ConfigError, StudioError, user_message
from .export import export_run
from .files import check_home_writable
from .generate import check_sampling, generate_pool, load_prompts
from .generation import DEFAULTS, GenerationSettings, defaults
from .hub import push_to_hub
from .jobs import Job, wait_for_slot
from .label import DEFAULT_TEMPLATE, WEAK_JUDGE_NOTE, Judge, check_template, judge_pool, label_with_rubric, load_rubric
from .measures import MEASURE_LABELS
from .models import is_embedded, load_tokenizer, resolve_model
from .pools import get_pool, to_preferences
from .progress import TerminalProgress
from .runs import get_run, mark_interrupted
from .suspects import find_suspects, resolve
from .sweep import Sweep, parse_grid
from .training_data import data_findings
from .winrate import comparison_pool, describe, measure


class UserError(StudioError):
    """A bad command line: the message says which flag and why."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2

    if world_size() > 1 and args.func is not cmd_train:  # each process would do the whole command on its own
        print("error: only `train` runs as several processes (torchrun / accelerate launch); run this command "
              "as one process", file=sys.stderr)
        return 2
    if getattr(args, "func", None) in (cmd_train, cmd_sweep):
        early_import(*_asked_backend(args))  # Unsloth patches transformers and PEFT only if it comes first
    try:
        if args.func not in (cmd_presets, cmd_settings, cmd_data_check, cmd_compare, cmd_chat):
            check_home_writable()  # a read-only or full STUDIO_HOME: exit 2 and a message, before any work
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place a user's problem becomes exit code 2
        message = user_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studio", description="DPO Studio: DPO training, headless.")
    sub = p.add_subparsers(metavar="COMMAND")

    presets = sub.add_parser("presets", help="list the presets")
    presets.add_argument("--json", action="store_true")
    presets.set_defaults(func=cmd_presets)

    data = sub.add_parser("data", help="preference data tools")
    data_sub = data.add_subparsers(metavar="ACTION")
    check = data_sub.add_parser(
        "check", help="read a preference file, report its layout, dropped rows, token lengths and findings "
        "(duplicates, conflicts, held-out overlap, truncation, length bias, a small held-out set, suspect labels)")
    check.add_argument("file", help="JSONL / JSON / CSV / Parquet file, or a hub dataset id")
    _column_flags(check)
    check.add_argument("--eval-data", help="the held-out file a run would use (default: the run's own 5%% split)")
    check.add_argument("--model", default="embedded",
                       help="embedded, a hub id, a model folder or a run (id or folder): its tokenizer counts tokens "
                            "and, with --suspects, it scores the pairs (default: embedded)")
    check.add_argument("--max-length", type=int, default=None,
                       help="the run's max_length: pairs longer are cut (finding: truncated), prompts reaching it "
                            "dropped (default 512, or the run's)")
    check.add_argument("--suspects", action="store_true",
                       help="rank the pairs whose rejected answer --model prefers most strongly (per-token margin). "
                            "With a run trained on this same file, these are the pairs that go against what the rest "
                            "of the data taught it: swapped labels first")
    check.add_argument("--no-tokens", action="store_true", help="skip token counting (no tokenizer is loaded)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=cmd_data_check)

    train = sub.add_parser("train", help="train a DPO adapter headless")
    train.add_argument("--preset", help="preset name or YAML path (default cpu-quickstart)")
    train.add_argument("--resume", metavar="RUN", help="continue a stopped, interrupted or failed run (id or folder) "
                                                        "from its last checkpoint, with the settings it started with")
    train.add_argument("--data", help="preference data file or hub id (overrides the preset's; the held-out pairs then "
                                      "come from this data unless --eval-data is given)")
    train.add_argument("--eval-data", help="a held-out preference file")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override any setting, e.g. --set beta=0.2 (repeatable; `python -m studio settings` lists them)")
    train.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    train.add_argument("--out", help="the run folder (default STUDIO_HOME/runs/<id>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    settings = sub.add_parser("settings", help="every run setting: group, default, allowed values, help")
    settings.add_argument("--json", action="store_true")
    settings.set_defaults(func=cmd_settings)

    ev = sub.add_parser("eval", help="held-out preference accuracy of a run vs its SFT baseline (saved as eval.json)")
    ev.add_argument("run", help="run id or run folder")
    ev.add_argument("--data", help="score every usable pair of this file instead of the run's own held-out split")
    ev.add_argument("--prompts", help="probe prompts for the drift measure, one a line (default: the data's probes)")
    generation_flags(ev, "probes", "max_new_tokens")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=cmd_eval)

    chat = sub.add_parser("chat", help="the SFT baseline and the tuned run answer one prompt")
    chat.add_argument("run", help="run id or run folder")
    chat.add_argument("--prompt", required=True, help="the user message")
    chat.add_argument("--system", help="an optional system message")
    generation_flags(chat, "chat", "max_new_tokens", "temperature", "seed")
    chat.add_argument("--json", action="store_true", help="print one JSON object")
    chat.set_defaults(func=cmd_chat)

    compare = sub.add_parser("compare", help="probe prompts answered by the SFT baseline and each run, side by side")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run ids or run folders")
    compare.add_argument("--prompts", help="one prompt a line (default: the first run's probes)")
    generation_flags(compare, "probes", "max_new_tokens")
    compare.add_argument("--csv", help="also write the grid to this CSV file")
    compare.add_argument("--markdown", help="also write the grid to this Markdown file")
    compare.add_argument("--json", action="store_true", help="print one JSON object")
    compare.set_defaults(func=cmd_compare)

    sweep = sub.add_parser("sweep", help="train a small grid of settings one run after another, then compare them")
    sweep.add_argument("--preset", default="cpu-quickstart", help="preset name or YAML path (default cpu-quickstart)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="a setting and its values, e.g. --grid beta=0.1,0.5 (at most 2 settings, 12 runs)")
    sweep.add_argument("--data", help="preference data file or hub id (overrides the preset's)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key for every run (repeatable)")
    sweep.add_argument("--max-steps", type=int, help="stop each run after N optimizer steps")
    sweep.add_argument("--prompts", help="probe prompts, one a line (default: the data's probes)")
    generation_flags(sweep, "probes", "max_new_tokens")
    sweep.add_argument("--no-eval", action="store_true", help="train only; no evaluation or probe grid")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.add_argument("--json", action="store_true", help="print one JSON object at the end")
    sweep.set_defaults(func=cmd_sweep)

    export = sub.add_parser("export", help="write a run's adapter, merged model or GGUF file to a folder")
    export.add_argument("run", help="run id or run folder")
    export.add_argument("--format", required=True, choices=("adapter", "merged", "gguf"),
                        help="adapter: PEFT folder; merged: 16-bit transformers model; gguf: llama.cpp/Ollama file")
    export.add_argument("--quant", choices=("f16", "q8_0"), help="GGUF tensor type (default f16; gguf only)")
    export.add_argument("--out", help="the export folder: new, empty, or an earlier export "
                                      "(default STUDIO_HOME/exports/<run-id>/<format>[-<quant>])")
    export.add_argument("--json", action="store_true", help="print the export record as one JSON object")
    export.set_defaults(func=cmd_export)

    push = sub.add_parser("push", help="upload a run's adapter or merged model to the Hugging Face Hub (token: HF_TOKEN)")
    push.add_argument("run", help="run id or run folder")
    push.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the model repo to create or update")
    push.add_argument("--what", default="adapter", choices=("adapter", "merged"), help="what to upload (default adapter)")
    push.add_argument("--public", action="store_true", help="make a new repo public (default private)")
    push.add_argument("--json", action="store_true", help="print the result as one JSON object")
    push.set_defaults(func=cmd_push)

    gen = sub.add_parser("generate", help="sample K answers per prompt from a model into a pool to label")
    gen.add_argument("--model", default="embedded", help="embedded, a model folder / hub id, or a run id (its adapter)")
    gen.add_argument("--prompts", required=True,
                     help="a text file (one prompt a line), a preference data file (its prompts) or preset:NAME")
    gen.add_argument("--k", type=int, default=2, help="answers per prompt, 2 to 4 (default 2)")
    gen.add_argument("--out", help="the pool folder (default STUDIO_HOME/pools/<id>)")
    generation_flags(gen, "pool", "temperature", "top_p", "max_new_tokens", "seed")
    gen.add_argument("--batch-size", type=int, default=16, help="rows per generate call (prompts x k)")
    gen.add_argument("--json", action="store_true", help="print pool.json")
    gen.set_defaults(func=cmd_generate)

    lab = sub.add_parser("label", help="label a pool's pairs with a rubric or a judge model; writes its preference file")
    lab.add_argument("pool", help="pool id under STUDIO_HOME/pools or a pool folder")
    how = lab.add_mutually_exclusive_group(required=True)
    how.add_argument("--rubric", help="a rubric YAML file (typed rules)")
    how.add_argument("--judge", help="a judge model: embedded, a model folder or a hub id (judged in both orders)")
    lab.add_argument("--template", help="a text file with the judge's pairwise prompt ({prompt}, {a}, {b})")
    lab.add_argument("--json", action="store_true", help="print one JSON object")
    lab.set_defaults(func=cmd_label)

    win = sub.add_parser("winrate", help="win rate of MODEL_A over MODEL_B on held-out prompts (rubric or judge)")
    win.add_argument("models", nargs="*", metavar="MODEL",
                     help="MODEL_A MODEL_B: run ids, embedded / a model folder, or baseline (the other's SFT base)")
    win.add_argument("--prompts", help="held-out prompts, one a line (or a data file, or preset:NAME)")
    how = win.add_mutually_exclusive_group()
    how.add_argument("--rubric", help="a rubric YAML file")
    how.add_argument("--judge", help="a judge model (both orders)")
    how.add_argument("--human", action="store_true", help="only make the pool: label it blind in the Label tab")
    win.add_argument("--template", help="the judge's pairwise prompt file ({prompt}, {a}, {b})")
    win.add_argument("--pool", help="measure an existing win-rate pool instead of generating one")
    win.add_argument("--labeller", help="with --pool: whose decisions count (e.g. human:alice)")
    generation_flags(win, "winrate", "max_new_tokens", "temperature", "seed")
    win.add_argument("--out", help="the pool folder (default STUDIO_HOME/pools/<id>)")
    win.add_argument("--json", action="store_true", help="print one JSON object")
    win.set_defaults(func=cmd_winrate)
    return p


def _column_flags(p: argparse.ArgumentParser) -> None:
    for name in ("prompt", "chosen", "rejected", "system"):
        p.add_argument(f"--{name}-col", help=f"column holding the {name}")


def generation_flags(p: argparse.ArgumentParser, use: str, *names: str) -> None:
    """--max-new-tokens, --temperature, … from GenerationSettings' metadata, defaulting to the named set `use`."""
    base = DEFAULTS[use]
    types = typing.get_type_hints(GenerationSettings)
    for name in names:
        m, default = meta(name, GenerationSettings), getattr(base, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=types[name], default=default,
                       help=f"{m['help']} (default {default:g})")
    p.set_defaults(generation=(use, names))


def generation_settings(args):
    """The GenerationSettings the flags of `generation_flags` ask for; a bad value names its flag."""
    use, names = args.generation
    try:
        return defaults(use, **{name: getattr(args, name) for name in names})
    except ConfigError as e:
        raise UserError(re.sub(r"\b(" + "|".join(names) + r")\b(?= must)",
                               lambda k: "--" + k[1].replace("_", "-"), str(e))) from None


# --- the job slot -----------------------------------------------------------------------------

# Commands that never load a model, so they never wait for the job slot. Every other command runs the part that
# loads a model as a job on the one slot (studio/jobs.py), queued behind whatever holds it (a web training, another
# command), with the message the web app refuses with; tests/test_cli_slot.py holds the slot and runs each of them.
# (`label --rubric` and `winrate --pool` with a rubric or a labeller load no model either: they skip the slot too.)
NO_MODEL = {
    "presets": "reads the preset files",
    "settings": "reads RunConfig's metadata",
    "data check": "reads a file and at most a tokenizer",
}


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def on_slot(kind: str, title: str, work):
    """Run `work(job)` as a job on the slot once it is free (saying once what it waits for) and return its result,
    or raise its exception here. First Ctrl-C asks the work to stop where it can (generation, judging, export),
    a second one quits at once; the slot is free either way (the kernel drops a dead process's lock)."""

    job = wait_for_slot(Job(kind, title, work), say=_say)
    try:
        job.wait()
    except KeyboardInterrupt:
        _say("\nstopping after the current step (Ctrl-C again quits at once)…")
        job.stop()
        job.wait()
    if job.exception is not None:
        raise job.exception
    return job.result


def _judging(args):
    """`judging(pool, job)`: judge_pool with the --judge model and --template (read and checked before the slot)."""

    template = check_template(Path(args.template).read_text(encoding="utf-8") if args.template else DEFAULT_TEMPLATE)
    if is_embedded(args.judge):
        _say(f"note: {WEAK_JUDGE_NOTE}")

    def judging(pool, job):
        bar = TerminalProgress("judging", "pair")
        try:
            return judge_pool(pool, Judge(args.judge, template), progress=bar, should_stop=job.stopping)
        finally:
            bar.close()

    return judging


# --- commands ---------------------------------------------------------------------------------


def cmd_presets(args) -> int:
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
    model, run = resolve(args.model, folders=True)
    base = run.config() if run is not None else RunConfig()
    tokenizer = None
    if not args.no_tokens:
        tokenizer = load_tokenizer(resolve_model(model))
    max_length = args.max_length or base.max_length
    columns = Columns(args.prompt_col, args.chosen_col, args.rejected_col, args.system_col)
    data = load_preferences(args.file, columns, tokenizer=tokenizer, max_length=max_length if tokenizer else None)
    # The held-out pairs as a run would take them: --eval-data, else the split of a run's own settings.
    cfg = RunConfig(data=args.file, eval_data=args.eval_data, max_length=max_length, eval_fraction=base.eval_fraction,
                    seed=base.seed, prompt_col=args.prompt_col, chosen_col=args.chosen_col,
                    rejected_col=args.rejected_col, system_col=args.system_col)
    findings = data_findings(cfg, data, tokenizer=tokenizer)
    if args.suspects:
        findings += on_slot("suspects", f"scoring {len(data)} pairs with {args.model}",
                            lambda job: find_suspects(data, args.model, max_length=max_length, folders=True,
                                                      progress=lambda done, total: job.report("scoring pairs", done, total)))
    findings.sort(key=lambda f: KINDS.index(f["kind"]))
    report = {**data.report.to_dict(), "findings": findings}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['source']}: {report['format']}, layout: {report['layout']}")
    print("columns used: " + ", ".join(f"{part}={column}" for part, column in report["used"].items()))
    for note in report["notes"]:
        print(f"note: {note}")
    if report.get("unpaired"):  # KTO's single answers: say how many of each, and which objective reads them
        labels = report.get("labels") or {}
        print(f"rows read: {report['rows']}, usable answers: {report['pairs']} ({labels.get('up', 0)} thumbs up, "
              f"{labels.get('down', 0)} thumbs down; objective kto reads them), dropped: {len(report['dropped'])}")
    else:
        print(f"rows read: {report['rows']}, usable pairs: {report['pairs']}, dropped: {len(report['dropped'])}")
    for d in report["dropped"][:50]:
        print(f"  row {d['row']}: {d['reason']}")
    if len(report["dropped"]) > 50:
        print(f"  … and {len(report['dropped']) - 50} more (use --json for all)")
    if report.get("tokens"):
        print("tokens (min / mean / p95 / max):")
        for part, s in report["tokens"].items():
            print(f"  {part:<9} {s['min']:>6} {s['mean']:>8.1f} {s['p95']:>6} {s['max']:>6}")
    _print_findings(findings)
    return 0


def _print_findings(findings: list[dict], per_kind: int = 10) -> None:
    if not findings:
        print("findings: none")
        return
    print(f"findings: {len(findings)}")
    for kind in dict.fromkeys(f["kind"] for f in findings):
        of_kind = [f for f in findings if f["kind"] == kind]
        print(f"  {kind} ({len(of_kind)}):")
        for f in of_kind[:per_kind]:
            print(f"    {f['message']}")
        if len(of_kind) > per_kind:
            print(f"    … and {len(of_kind) - per_kind} more (use --json for all)")


def _preset_config(args):
    """The preset named by --preset with --data, --set and --max-steps applied: (preset, RunConfig)."""

    preset = load_preset(args.preset or "cpu-quickstart")
    cfg = preset.config
    if args.data:  # your data: its own held-out split, never the preset's held-out file
        cfg = cfg.replace(data=args.data, eval_data=None)
    if getattr(args, "eval_data", None):
        cfg = cfg.replace(eval_data=args.eval_data)
    cfg = apply_overrides(cfg, args.overrides)
    if args.max_steps is not None:
        cfg = cfg.replace(max_steps=args.max_steps)
    return preset, cfg


def _quiet_libraries() -> None:
    """--quiet: the libraries' own bars (tokenizing, loading weights) go too, not only ours."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _asked_backend(args) -> tuple[str, int | None]:
    """The backend and step count a train or sweep command asks for, read before anything imports torch.

    Unsloth must be imported before transformers or not at all, and once imported its patches break a
    transformers+PEFT run in the same process (seen on an H200, docs/gpu.md): so a command that asks for
    transformers, or for a run too short to repay Unsloth, must not import it."""
    asked = [pair.partition("=")[2].strip() for pair in args.overrides if pair.partition("=")[0].strip() == "backend"]
    if asked:
        return asked[-1], args.max_steps
    if getattr(args, "resume", None):
        return "auto", None
    try:
        return load_preset(args.preset or "cpu-quickstart").config.backend, args.max_steps
    except ConfigError:
        return "auto", args.max_steps  # the bad preset is reported by the command itself


def cmd_train(args) -> int:
    if args.quiet:
        _quiet_libraries()

    # deferred: training imports torch; the CLI's light commands (data check, list) answer without it
    from .training import TrainingJob, check_run

    say = lambda message: print(message, file=sys.stderr)  # noqa: E731
    main_process = is_main()  # launched as several processes, only the main one reports (and owns the run)
    if not main_process:
        say, args.quiet = (lambda message: None), True
        _quiet_libraries()
    if args.resume:
        job = _resume_job(args, say)
    else:
        preset, cfg = _preset_config(args)
        say("checking the data and the model…")
        explicit = {pair.partition("=")[0].strip() for pair in args.overrides}  # they win over fitting to the card
        job = TrainingJob(cfg, run_dir=args.out, preset=preset.name, explicit=explicit)
        check_run(job.config)  # a bad file, model or setting: exit 2 before any run folder exists
    if main_process:
        mark_interrupted()
    wait_for_slot(job, say=say)
    say(f"run folder: {job.run.path}" + (f" (resumed from step {job.step})" if args.resume else ""))
    try:
        follow(job, quiet=args.quiet)
    except KeyboardInterrupt:
        _stop_and_save(job, say)
    p = job.progress()
    if job.state == "failed":
        print(f"error: training failed: {job.error}\n(details: {job.run.path / 'error.log'})", file=sys.stderr)
        return 1
    if not main_process:
        return 130 if job.state == "stopped" else 0
    last = next((m for m in reversed(job.metrics.since(0)) if "rewards/margins" in m), {})
    print(f"{job.state}: {p['step']} steps in {p['elapsed']:.0f}s; "
          f"last loss {last.get('loss', float('nan')):.4f}, margins {last.get('rewards/margins', float('nan')):.4f}; "
          f"adapter: {job.run.adapter_dir}")
    return 130 if job.state == "stopped" else 0


def _resume_job(args, say):
    """The TrainingJob that continues --resume RUN; the run's own settings are used, so flags that change them are refused."""
    # deferred: training imports torch; the CLI's light commands (data check, list) answer without it
    from .training import TrainingJob

    given = [flag for flag, value in (("--preset", args.preset), ("--data", args.data), ("--eval-data", args.eval_data),
                                      ("--set", args.overrides), ("--max-steps", args.max_steps), ("--out", args.out))
             if value]
    if given:
        raise UserError(f"--resume continues a run with the settings it started with; drop {', '.join(given)} "
                        "(or start a new run with them).")
    mark_interrupted()  # a run whose process died is `interrupted` (resumable), not still `training`
    run = get_run(args.resume, folders=True)
    say(f"checking run {run.id} and its data…")
    return TrainingJob.resume(run)


def _stop_and_save(job, say) -> None:
    """First Ctrl-C: stop at the next step and save. Further Ctrl-C presses are ignored until the save is done,
    because killing the process mid-save is what loses an adapter."""

    say("\nstopping: the adapter is saved after the current step (Ctrl-C again will not interrupt the save)…")
    job.stop()
    previous = signal.signal(signal.SIGINT, lambda *_: say("still saving the adapter; it will not be interrupted…"))
    try:
        job.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def follow(job, quiet: bool = False, poll: float = 0.5) -> None:
    """A progress bar fed by the job's metrics log, the same stream the web app charts; phases are named."""
    from tqdm import tqdm

    bar, seen, phase = None, 0, None
    name = getattr(getattr(job, "config", None), "objective", "dpo").upper().replace("SIMPO", "SimPO")
    while job.is_alive():
        if job.phase != phase and not quiet:
            phase = job.phase
            if bar is None:
                print(f"[{phase}]", file=sys.stderr)
            else:
                bar.set_description(phase if phase != "training" else name)
        if bar is None and job.total_steps and not quiet:
            bar = tqdm(total=job.total_steps, initial=job.step, desc=name, unit="step", file=sys.stderr)
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


def cmd_settings(args) -> int:
    """Every run setting with its group, type, default, allowed values and help: read from RunConfig itself."""

    default = RunConfig()
    rows = []
    for f in fields_of():
        m = f.metadata
        bounds = " ".join(f"{op} {m[key]:g}" for key, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
                          if m.get(key) is not None)
        choices = choices_of(f)
        rows.append({"key": f.name, "group": m.get("group"), "default": getattr(default, f.name),
                     "allowed": ", ".join(choices) if choices else bounds, "help": m.get("help"),
                     "trl": bool(m.get("trl")), "sweep": m.get("sweep")})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for r in rows:
        allowed = f"  [{r['allowed']}]" if r["allowed"] else ""
        print(f"{r['key']} = {r['default']!r}{allowed}\n    {r['group']}: {r['help']}")
    return 0


def cmd_eval(args) -> int:
    # deferred: evaluate and probes import torch; the CLI's light commands (data check, list) answer without it
    from .evaluate import evaluate_run
    from .probes import read_prompts

    run = get_run(args.run, folders=True)
    probes = read_prompts(args.prompts) if args.prompts else None
    settings = generation_settings(args)


    def work(job):
        _say(f"evaluating {run.id}…")
        return evaluate_run(run, data=args.data, probes=probes, settings=settings)

    result = on_slot("evaluate", f"evaluating {run.id}", work)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"run: {result['run']}")
    print(f"data: {result['data']['source']} ({result['data']['split']})")

    n = result["pairs"]
    # Under SMALL_EVAL pairs one pair moves the accuracy a lot: each comes with its 95% (Wilson) interval.
    ci = (lambda a: "   95% interval {:.2f}-{:.2f}".format(*wilson(round(a * n), n))) if n < SMALL_EVAL else (lambda a: "")
    print(f"pairs: {n}" + (f"   (fewer than {SMALL_EVAL}: read each accuracy with its interval)" if n < SMALL_EVAL else ""))
    print(f"baseline_accuracy: {result['baseline_accuracy']:.3f}   (chosen answer more likely per token, SFT model)"
          f"{ci(result['baseline_accuracy'])}")
    print(f"tuned_accuracy:    {result['tuned_accuracy']:.3f}   (the same, with the DPO adapter){ci(result['tuned_accuracy'])}")
    print(f"reward_accuracy:   {result['reward_accuracy']:.3f}   (implicit reward of chosen > rejected, beta {result['beta']:g})"
          f"{ci(result['reward_accuracy'])}")
    print(f"mean_margin:       {result['mean_margin']:.4f}")
    if result["kl_drift"] is not None:
        print(f"kl_drift:          {result['kl_drift']:.4f}   (per-token log-ratio tuned/SFT on its own probe answers)")
    if result["probes"]:
        print(f"probe answers ({len(result['probes'])} prompts, greedy)   baseline -> tuned:")
        for key, label in (("repetition", "repeated 4-grams"), ("distinct_2", "distinct-2"), ("mean_words", "mean words"),
                           ("ended_on_own", "ended on own")):
            base, tuned = result.get(f"baseline_{key}"), result.get(key)
            show = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731
            print(f"  {label + ':':<18} {show(base):>6} -> {show(tuned):<6}")
        if result.get("length_ratio") is not None:
            print(f"  {'length ratio:':<18} {result['length_ratio']:.2f}   (tuned mean words / baseline's)")
        if result.get("chosen_length_ratio") is not None:
            print(f"  {'vs chosen:':<18} {result['chosen_length_ratio']:.2f}   (tuned mean words / the held-out chosen "
                  f"answers' {result['chosen_mean_words']:g})")
    for warning in result.get("damage") or []:
        print(f"WARNING: {warning}")
    print(f"saved: {run.path / 'eval.json'}", file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    # deferred: chat imports torch; the CLI's light commands (data check, list) answer without it
    from .chat import ChatEngine

    run = get_run(args.run, folders=True)
    cfg = run.config()
    settings = generation_settings(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]

    def work(job):
        engine = ChatEngine(cfg.model)
        adapter = engine.attach_run(run)
        answers = ("", "")
        for answers in engine.stream_pair(messages, messages, adapter, settings):
            pass
        return answers

    baseline, tuned = on_slot("chat", f"chat with run {run.id}", work)
    if args.json:
        print(json.dumps({"run": run.id, "prompt": args.prompt, "baseline": baseline.strip(), "tuned": tuned.strip(),
                          "settings": vars(settings)}, indent=2))
        return 0
    print(f"--- SFT baseline ---\n{baseline.strip()}\n\n--- DPO: {run.id} ---\n{tuned.strip()}")
    return 0


def cmd_compare(args) -> int:
    # deferred: probes imports torch; the CLI's light commands (data check, list) answer without it
    from .probes import default_probes, probe_grid, read_prompts

    runs = [get_run(r, folders=True) for r in args.runs]
    prompts = read_prompts(args.prompts) if args.prompts else default_probes(runs[0])
    settings = generation_settings(args)


    def work(job):
        _say(f"answering {len(prompts)} prompts with the SFT baseline and {len(runs)} run(s)…")
        return probe_grid(runs, prompts, settings=settings)

    grid = on_slot("grid", "building a probe grid", work)
    evals = {r.id: _eval_row(r.read_json("eval.json")) for r in runs if r.read_json("eval.json")}
    _write_grid_files(grid, args.csv, args.markdown)
    if args.json:
        print(json.dumps({**grid, "evals": evals}, indent=2))
        return 0
    if evals:
        print(_table([{"run": k, **v} for k, v in evals.items()]))
        print()
    print(_grid_text(grid))
    return 0


def cmd_sweep(args) -> int:
    preset, cfg = _preset_config(args)
    if args.quiet:
        _quiet_libraries()
    if not args.grid:
        raise UserError("give at least one --grid KEY=V1,V2 (e.g. --grid beta=0.1,0.5)")
    grid = parse_grid(args.grid)
    # deferred: probes imports torch; the CLI's light commands (data check, list) answer without it
    from .probes import read_prompts

    probes = read_prompts(args.prompts) if args.prompts else None
    mark_interrupted()
    settings = generation_settings(args)
    sweep = Sweep(cfg, grid, preset=preset.name, evaluate=not args.no_eval, probes=probes, settings=settings)
    total = len(sweep.configs())
    wait_for_slot(sweep, say=_say)
    print(f"sweep {sweep.id}: {total} runs ({' x '.join(f'{k} {v}' for k, v in sweep.grid.items())})", file=sys.stderr)
    try:
        _follow_sweep(sweep, total, quiet=args.quiet)
    except KeyboardInterrupt:
        print("\nstopping the sweep: the current run saves its adapter, the rest are skipped…", file=sys.stderr)
        sweep.stop()
        sweep.wait()
    rows, grid = sweep.comparison(), sweep.probe_grid
    if args.json:
        print(json.dumps({"sweep": sweep.id, "state": sweep.state, "error": sweep.error, "folder": str(sweep.path),
                          "runs": rows, "grid": grid}, indent=2, default=str))
    else:
        print(f"sweep {sweep.id}: {sweep.state}" + (f" ({sweep.error})" if sweep.error else ""))
        print(_table(rows))
        if grid is not None:
            print()
            print(_grid_text(grid))
            print(f"probe grid: {sweep.path / 'grid.md'}", file=sys.stderr)
    if sweep.state == "stopped":
        return 130
    return 1 if sweep.state == "failed" else 0


def _follow_sweep(sweep, total: int, quiet: bool) -> None:
    followed, said_eval = set(), False
    while sweep.is_alive():
        job = sweep.current
        if job is not None and id(job) not in followed:
            followed.add(id(job))
            n = sweep.index + 1
            values = " ".join(f"{k}={v}" for k, v in sweep.values[n - 1].items())
            print(f"[{n}/{total}] {values}: {job.run.id}", file=sys.stderr)
            follow(job, quiet=quiet)
            print(f"[{n}/{total}] {job.state} after {job.step} steps", file=sys.stderr)
        elif sweep.state == "evaluating" and not said_eval:
            said_eval = True
            print("evaluating every run on its held-out pairs…", file=sys.stderr)
        time.sleep(0.2)


def _phase_printer():
    """A progress callback that prints each new phase once, to stderr."""
    seen = set()

    def show(phase: str, done: int, total: int | None) -> None:
        if phase not in seen and phase != "done":
            seen.add(phase)
            print(f"{phase}…", file=sys.stderr)

    return show


def cmd_export(args) -> int:
    run = get_run(args.run, folders=True)
    record = on_slot("export", f"exporting {run.id} as {args.format}",
                     lambda job: export_run(run, args.format, out_dir=args.out, quant=args.quant,
                                            progress=_phase_printer(), should_stop=job.stopping))
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    kind = f"{record['format']} ({record['quant']})" if record.get("quant") else record["format"]
    print(f"exported {kind}: {record['path']} ({record['bytes'] / 2**20:.1f} MiB in {record['seconds']:.1f}s)")
    for f in record["files"]:
        print(f"  {f['name']:<40} {f['bytes'] / 2**20:>9.1f} MiB")
    for note in record.get("notes") or []:
        print(f"note: {note}")
    return 0


def cmd_push(args) -> int:
    run = get_run(args.run, folders=True)
    result = on_slot("push", f"pushing {run.id} to {args.repo}",
                     lambda job: push_to_hub(run, args.repo, what=args.what, private=not args.public,
                                             progress=_phase_printer(), should_stop=job.stopping))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"pushed {args.what} of {result.get('source')} to {result['path']}")
    return 0


# --- text output ------------------------------------------------------------------------------

def _eval_row(result: dict | None) -> dict:
    # deferred: evaluate imports torch; the CLI's light commands (data check, list) answer without it
    from .evaluate import EVAL_KEYS

    return {k: result.get(k) for k in EVAL_KEYS} if result else {}


def _table(rows: list[dict]) -> str:
    """A plain fixed-width table of dict rows (numbers shown to 4 significant digits)."""
    if not rows:
        return "(no runs)"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = {k: max(len(k), *(len(cell(r.get(k))) for r in rows)) for k in keys}
    lines = ["  ".join(f"{k:<{widths[k]}}" for k in keys)]
    lines += ["  ".join(f"{cell(r.get(k)):<{widths[k]}}" for k in keys) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _grid_text(grid: dict) -> str:
    """The probe grid for a terminal: each prompt, then each column's answer; the measures at the end."""

    out = []
    for i, prompt in enumerate(grid["prompts"]):
        out.append(f"## {prompt}")
        for c in grid["columns"]:
            out.append(f"[{c['name']}]\n{c['answers'][i]}\n")
    out.append(_table([{"column": c["name"], **{MEASURE_LABELS[k]: c["measures"].get(k) for k in MEASURE_LABELS}}
                       for c in grid["columns"]]))
    return "\n".join(out)


def _write_grid_files(grid: dict, csv_path: str | None, markdown_path: str | None) -> None:
    # deferred: probes imports torch; the CLI's light commands (data check, list) answer without it
    from .probes import grid_to_csv, grid_to_markdown

    for path, text in ((csv_path, grid_to_csv), (markdown_path, grid_to_markdown)):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text(grid), encoding="utf-8")
            print(f"wrote {path}", file=sys.stderr)


def cmd_generate(args) -> int:
    convs, source = load_prompts(args.prompts)
    settings = generation_settings(args)
    check_sampling(args.k, settings)

    def work(job):
        bar = TerminalProgress("generating", "prompt")
        try:
            return generate_pool(args.model, None, convs, k=args.k, settings=settings, progress=bar,
                                 should_stop=job.stopping, out=args.out, batch_size=args.batch_size,
                                 prompts_source=source)
        finally:
            bar.close()

    pool = on_slot("generate", f"{len(convs)} prompts × {args.k} answers from {args.model}", work)
    info = pool.info()
    if args.json:
        print(json.dumps({**info, "folder": str(pool.path)}, indent=2))
    else:
        print(f"pool {pool.id}: {info['done']} prompts x {info['k']} answers, {len(pool.pairs())} pairs to label "
              f"({info['state']})\nfolder: {pool.path}")
    return 130 if info["state"] == "stopped" else 0


def cmd_label(args) -> int:
    pool = get_pool(args.pool, folders=True)
    if args.rubric:  # no model: it never waits for the slot, as in the Label tab
        rubric = load_rubric(args.rubric)
        counts = label_with_rubric(pool, rubric)
    else:
        judging = _judging(args)
        counts = on_slot("judge", f"judging pool {pool.id} with {args.judge}", lambda job: judging(pool, job))
    labeller = counts["labeller"]
    result = {"pool": pool.id, **counts}
    if pool.info().get("kind") == "winrate":
        result["winrate"] = measure(pool, labeller)
        text = describe(result["winrate"])
    else:
        try:
            path, rows = to_preferences(pool, labeller)
            result.update(preferences=str(path), preference_rows=rows)
            text = f"preference file: {path} ({rows} pairs)"
        except StudioError as e:  # every pair a tie: nothing to train on, but the labels are saved
            text = str(e)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{labeller}: {counts.get('win', 0)} pairs with a winner, {counts.get('tie', 0)} ties"
              + (f", {counts['both_bad']} both bad" if counts.get("both_bad") else ""))
        print(text)
    return 0


def cmd_winrate(args) -> int:
    convs = None
    if args.pool:
        pool = get_pool(args.pool, folders=True)
    else:
        if len(args.models) != 2 or not args.prompts:
            raise UserError("give MODEL_A MODEL_B and --prompts FILE (or --pool POOL to measure an existing pool)")
        if not (args.rubric or args.judge or args.human):
            raise UserError("say who decides: --rubric FILE, --judge MODEL or --human")
        convs, source = load_prompts(args.prompts)
        settings = generation_settings(args)
    rubric = load_rubric(args.rubric) if args.rubric else None
    judging = _judging(args) if args.judge else None

    def work(job):
        """(pool, labeller): the answers made (if asked) and labelled; with a job, on the slot."""
        answered = pool if convs is None else None
        if answered is None:
            bar = TerminalProgress("answering", "prompt")
            try:
                answered = comparison_pool(args.models[0], args.models[1], convs, settings, progress=bar,
                                           should_stop=job.stopping, out=args.out, prompts_source=source)
            finally:
                bar.close()
            if job.stopping():  # Ctrl-C: the answers so far stay in the pool; nothing is labelled
                raise KeyboardInterrupt
        if rubric is not None:
            return answered, label_with_rubric(answered, rubric)["labeller"]
        if judging is not None:
            return answered, judging(answered, job)["labeller"]
        return answered, args.labeller

    if convs is None and judging is None:  # an existing pool by a rubric or a labeller: no model, no slot
        pool, labeller = work(None)
    else:
        title = (f"win rate of {args.models[0]} over {args.models[1]} on {len(convs)} prompts" if convs is not None
                 else f"judging pool {pool.id} with {args.judge}")
        pool, labeller = on_slot("winrate", title, work)
    if args.human:
        print(f"pool {pool.id}: label it blind in the Label tab, then run "
              f"`python -m studio winrate --pool {pool.id} --labeller human:NAME`")
        return 0
    result = measure(pool, labeller)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(describe(result))
    return 0

