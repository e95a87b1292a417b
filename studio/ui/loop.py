"""The preference loop's long actions as boxes a tab lays out: generate a pool, judge it, train the next round.

A box is widgets plus handlers around one engine function (studio/generate.py, label.py, rounds.py via a
TrainingJob), run as a job on the one slot: each is a `JobBox` (jobbox.py) with a status line, a Stop
button and a timer. What a job makes is on disk (a pool, its labels, a run folder), so after a restart
the tabs read it from there.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio import jobs
from studio.access import require_user
from studio.config import PRESETS_DIR, preset_names
from studio.data import FORMATS
from studio.errors import ConfigError, DataError, StudioError
from studio.files import check_data_source, check_web_model, check_web_source, web_config
from studio.generate import K_RANGE, check_k, generate_pool, load_prompts, resolve_source, round_of
from studio.label import DEFAULT_TEMPLATE, WEAK_JUDGE_NOTE, Judge, check_template, judge_pool
from studio.pools import get_pool, preference_files
from studio.rounds import few_pairs_warning, lineage, next_round_config
from studio.runs import LIVE_STATES, list_runs
from studio.training import TrainingJob
from studio.training_data import check_sources

from .common import Services, user_errors
from .form import config_from_widgets, generation_from_widgets, generation_widget
from .jobbox import JobBox, job_html
from .status import status_html

SELF_IMPROVE_PROMPTS = PRESETS_DIR / "data" / "self-improve.prompts.txt"
PROMPT_SOURCES = [("Pasted lines", "paste"), ("A file", "file"), ("A preset's probe bank", "preset"),
                  ("The prompts of a data file", "data")]
PROMPT_FILE_TYPES = [".txt", ".md", *sorted(FORMATS)]
BASELINE = "baseline"


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def default_prompts() -> str:
    """The self-improve-cpu demo's prompts, written for the project: a ready list for a first pool."""
    try:
        return "\n".join(line for line in _lines(SELF_IMPROVE_PROMPTS.read_text(encoding="utf-8"))
                         if not line.startswith("#"))
    except OSError:
        return ""


def answering_runs() -> list:
    """Runs that can answer: a saved adapter and not training now (their adapter is final)."""
    return [r for r in list_runs() if r.has_adapter and r.state not in LIVE_STATES]


def model_choices(baseline: str = "embedded") -> list[tuple[str, str]]:
    """The SFT baseline(s) and every run that can answer, each run with its round."""
    runs = answering_runs()
    bases = dict.fromkeys([baseline, *(r.config().model for r in runs)])
    choices = [(f"SFT baseline ({base}) · round 0", base) for base in bases]
    return choices + [(f"{r.id} · round {round_of(r)}", r.id) for r in runs]


def data_file_choices() -> list[tuple[str, str]]:
    """Data files the app may read that hold prompts: the presets' data and every pool's preference file."""
    shipped = sorted(p for p in (PRESETS_DIR / "data").glob("*") if p.suffix.lower() in FORMATS)
    return ([(p.name, str(p)) for p in shipped]
            + [(f"pool {p.parent.name}: preferences", str(p)) for p in preference_files()])


def prompts_from(source: str, pasted: str | None, upload: str | None, preset: str | None,
                 data_file: str | None) -> tuple[list, str]:
    """(conversations, where they came from) for the chosen source; a DataError names what is missing."""
    if source == "paste":
        return load_prompts(_lines(pasted))
    if source == "file":
        if not upload:
            raise DataError("Upload a prompts file first: one prompt a line (.txt), or a preference file.")
        if not _in_gradio_uploads(upload):
            raise DataError("Refused: this prompts file was not uploaded through the app.")
        convs, _ = load_prompts(upload)
        return convs, f"uploaded file {Path(upload).name}"
    if source == "preset":
        if preset not in preset_names():
            raise DataError(f"Pick a preset whose probe bank to use (one of {', '.join(preset_names())}).")
        return load_prompts(f"preset:{preset}")
    if not (data_file or "").strip():
        raise DataError("Pick or type a data file whose prompts to answer.")
    return load_prompts(check_data_source(data_file.strip()))


def _in_gradio_uploads(path: str) -> bool:
    from gradio.utils import get_upload_folder

    return Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve())


# --- 1. generate ---------------------------------------------------------------------------------


class GenerateBox(JobBox):
    kind = "generate"
    idle = "No pool generated since the app started; the pools on disk are in the Pool list below."

    def __init__(self, services: Services):
        super().__init__()
        self.services = services
        gr.Markdown("Sample K answers to each prompt from one model: the SFT baseline, or a run's adapter for the "
                    "next round. The answers become pairs to label below.", elem_classes="ds-caption")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                self.source = gr.Radio(PROMPT_SOURCES, value="paste", label="Prompts from", elem_id="gen-source")
                self.pasted = gr.Textbox(default_prompts(), lines=6, max_lines=14, label="Prompts (one a line)",
                                         elem_id="gen-prompts")
                self.upload = gr.File(label="Prompts file: .txt (one a line) or a preference file (its prompts)",
                                      file_types=PROMPT_FILE_TYPES, type="filepath", visible=False,
                                      elem_id="gen-upload", height=120)
                names = preset_names()
                self.preset = gr.Dropdown(names, value="self-improve-cpu" if "self-improve-cpu" in names else names[0],
                                          label="Preset", visible=False, elem_id="gen-preset")
                files = data_file_choices()
                self.data_file = gr.Dropdown(files, value=files[0][1] if files else None, allow_custom_value=True,
                                             label="Data file (its prompts, each once)", visible=False,
                                             elem_id="gen-data-file")
            with gr.Column(scale=2, min_width=260):
                choices = model_choices()
                self.model = gr.Dropdown(choices, value=choices[0][1], allow_custom_value=True, label="Model",
                                         info="the SFT baseline, or a run's adapter", elem_id="gen-model")
                self.k = gr.Slider(*K_RANGE, value=2, step=1, label="Answers per prompt (K)", elem_id="gen-k")
                with gr.Row():  # pool generation's defaults (studio.generation.DEFAULTS["pool"])
                    self.temperature = generation_widget("temperature", "pool", "gen", step=0.05, min_width=90)
                    self.top_p = generation_widget("top_p", "pool", "gen", step=0.05, min_width=90)
                with gr.Row():
                    self.max_new_tokens = generation_widget("max_new_tokens", "pool", "gen", min_width=90)
                    self.seed = generation_widget("seed", "pool", "gen", min_width=90)
        self.job_widgets("gen", "Generate a pool")

    @property
    def inputs(self) -> list:
        return [self.source, self.pasted, self.upload, self.preset, self.data_file, self.model, self.k,
                self.temperature, self.top_p, self.max_new_tokens, self.seed]

    def wire(self, tab) -> None:
        self.source.change(lambda s: [gr.update(visible=s == key) for key in ("paste", "file", "preset", "data")],
                           inputs=self.source, outputs=[self.pasted, self.upload, self.preset, self.data_file],
                           api_visibility="private", show_progress="hidden", queue=False)
        self.start_btn.click(self.start, inputs=self.inputs, outputs=self.job_outputs, api_name="generate_pool",
                             concurrency_limit=None)
        self.wire_job("generate", tab)
        tab.select(self.choices, outputs=[self.model, self.data_file], api_visibility="private",
                   show_progress="hidden", concurrency_limit=None)

    def choices(self):
        return gr.Dropdown(choices=model_choices()), gr.Dropdown(choices=data_file_choices())

    @user_errors("Cannot generate", JobBox.refused)
    def start(self, source, pasted, upload, preset, data_file, model, k, temperature, top_p, max_new_tokens, seed,
              request: gr.Request = None):
        require_user(request, "generate a pool")
        convs, described = prompts_from(source, pasted, upload, preset, data_file)
        k = check_k(int(k or 0))
        if not temperature or float(temperature) <= 0:
            raise ConfigError("Temperature must be above 0 to sample different answers (0 would give K copies).")
        settings = generation_from_widgets("pool", max_new_tokens=int(max_new_tokens or 0),
                                           temperature=float(temperature), top_p=float(top_p or 1.0),
                                           seed=int(seed or 0))
        model = check_web_source(model or "embedded")  # a run id, or a model the web app may load
        answerer = resolve_source(model)  # a run without an adapter is refused here, not in the job

        def work(job):
            import torch

            job.report("loading the model")
            engine = self.services.chat.get(answerer.model, dtype=torch.float32)
            return generate_pool(model or "embedded", None, convs, k=k, settings=settings, progress=job.report,
                                 should_stop=job.stopping, engine=engine, prompts_source=described)

        return self.launch(jobs.Job(self.kind, f"{len(convs)} prompts × {k} answers from {answerer.name}", work))

    def outcome(self, job) -> str:
        pool = job.result
        if pool is None:
            return ""
        info = pool.info()
        done = f"Pool {pool.id}: {info.get('done', 0)} prompts × {info.get('k')} answers, {len(pool.pairs())} pairs"
        if job.state == "stopped":
            return f"{done} (stopped early; the answered prompts are kept). Label them below."
        return f"{done}. It is picked below: label its pairs."

    def latest_pool(self) -> str | None:
        job = self.job
        return job.result.id if job is not None and job.result is not None else None


# --- 2. judge ------------------------------------------------------------------------------------


class JudgeBox(JobBox):
    kind = "judge"
    idle = "No pool judged since the app started."

    def __init__(self, services: Services):
        super().__init__()
        self.services = services
        gr.Markdown(f"⚠️ **{WEAK_JUDGE_NOTE}**", elem_id="judge-note")
        gr.Markdown("Each pair is judged twice, once in each order (the first answer as A, then as B), by the "
                    "judge's log-probability of the letters A and B. A pair is won only when both orders prefer the "
                    "same answer; otherwise it is a tie. Pairs this judge already decided are not judged again.",
                    elem_classes="ds-caption")
        self.model = gr.Textbox("embedded", label="Judge model", info="embedded, a model folder or a hub id",
                                elem_id="judge-model")
        self.template = gr.Textbox(DEFAULT_TEMPLATE, lines=10, max_lines=30, label="Pairwise prompt template",
                                   info="{prompt}, {a} and {b} are replaced by the request and the two answers",
                                   elem_id="judge-template")
        self.job_widgets("judge", "Judge this pool")

    def wire(self, tab, pool) -> None:
        self.start_btn.click(self.start, inputs=[pool, self.model, self.template], outputs=self.job_outputs,
                             api_name="judge_pool", concurrency_limit=None)
        self.wire_job("judge", tab)

    @user_errors("Cannot judge", JobBox.refused)
    def start(self, pool_id: str | None, model: str, template: str, request: gr.Request = None):
        require_user(request, "judge a pool")
        if not pool_id:
            raise DataError("Pick a pool first.")
        pool = get_pool(pool_id)
        check_template(template)
        spec = check_web_model((model or "").strip() or "embedded")

        def work(job):
            import torch

            job.report("loading the judge")
            judge = Judge(spec, template, engine=self.services.chat.get(spec, dtype=torch.float32))
            return judge_pool(pool, judge, progress=job.report, should_stop=job.stopping)

        job = jobs.Job(self.kind, f"judging pool {pool.id} with {spec}", work)
        job.pool_id = pool.id  # which pool's decisions to show when it ends
        return self.launch(job)

    def outcome(self, job) -> str:
        counts = job.result
        if not counts:
            return ""
        return (f"{counts['labeller']}: {counts['win']} pairs won in both orders, {counts['tie']} ties"
                + (f" ({counts['already']} judged before)" if counts.get("already") else "")
                + ". Write the preference file below, or train the next round.")


# --- 3. the next round -----------------------------------------------------------------------------


START_FROM = [("the base model (a fresh adapter)", "base"), ("a previous round's adapter", "continue")]


class NextRoundBox(JobBox):
    kind = "train"
    idle = "No round started since the app started; the Runs tab lists every run and its lineage."
    stopping_note = "Stopping after the current step; the adapter trained so far is saved."

    def __init__(self):
        super().__init__()
        gr.Markdown("Train a new run on the pool's labelled pairs (the decisions chosen under **Decisions of**). "
                    "Every other setting (steps, learning rate, beta, LoRA) comes from the **Train** tab's form, "
                    "and the Train tab follows the run live. The run records its round and the pool it came from.",
                    elem_classes="ds-caption")
        with gr.Row(equal_height=True):
            self.include_original = gr.Checkbox(False, label="Also train on the Train tab's data",
                                                info="the pool's pairs plus the original preference file",
                                                elem_id="round-include-original")
            self.start_from = gr.Radio(START_FROM, value="base", label="Start from", elem_id="round-start-from")
            # Thumbs (one answer at a time) train KTO; the A/B pairs train the Train tab's objective.
            self.feedback = gr.Radio([("A/B pairs", "pairs"), ("thumbs up / down (KTO)", "thumbs")], value="pairs",
                                     label="Learn from", elem_id="round-feedback")
            runs = [r.id for r in answering_runs()]
            self.parent = gr.Dropdown(runs, value=None, label="Continue this run's adapter", visible=False,
                                      allow_custom_value=True, elem_id="round-parent")
        self.job_widgets("round", "Train the next round")

    def render(self, progress: dict | None, note: str = "") -> str:
        if progress is None:
            return job_html(None, idle=self.idle)
        return status_html(progress, note)

    def connect(self, train, tab, pool, labeller) -> None:
        self.start_from.change(lambda s: gr.Dropdown(visible=s == "continue"), inputs=self.start_from,
                               outputs=self.parent, api_visibility="private", queue=False)
        pool.change(self.parent_for, inputs=pool, outputs=self.parent, api_visibility="private",
                    show_progress="hidden")
        self.start_btn.click(
            self.start, inputs_kwargs={"pool_id": pool, "labeller": labeller, "include_original": self.include_original,
                                       "feedback": self.feedback,
                                       "start_from": self.start_from, "parent": self.parent, "preset": train.preset,
                                       **train.fields},
            outputs=self.job_outputs, api_name="train_next_round", concurrency_limit=None)
        self.wire_job("next_round", tab)
        # The Chat and Runs tabs refresh when a run starts or ends: tell them through the Train tab's signal.
        self.finished.change(lambda key: key, inputs=self.finished, outputs=train.runs_changed,
                             api_visibility="private", show_progress="hidden")

    def parent_for(self, pool_id: str | None):
        """The run that answered the pool (the previous round), offered to continue from."""
        runs = [r.id for r in answering_runs()]
        try:
            models = get_pool(pool_id).info().get("models", []) if pool_id else []
        except FileNotFoundError:
            models = []
        parent = next((m.get("run") for m in models if m.get("run") in runs), None)
        return gr.Dropdown(choices=runs, value=parent)

    @user_errors("Cannot start the round", JobBox.refused)
    def start(self, pool_id=None, labeller=None, include_original=False, start_from="base", parent=None, preset=None,
              feedback="pairs", request: gr.Request = None, **fields):
        require_user(request, "start training")
        if not pool_id:
            raise DataError("Pick a labelled pool first.")
        base = config_from_widgets(fields)
        if include_original:  # a path from the form: the web app reads it only inside its allowed folders
            base = web_config(base)
        else:  # the pool's preference file is the data; the model still comes from a browser
            base = base.replace(model=check_web_model(base.model) or base.model)
        if start_from == "continue" and not parent:
            raise ConfigError("Pick the run whose adapter this round continues, or start from the base model.")
        labeller = None if labeller in (None, "", "(everyone)") or feedback == "thumbs" else labeller
        cfg = next_round_config(pool_id, base, continue_from=parent if start_from == "continue" else None,
                                include_original=bool(include_original), labeller=labeller,
                                feedback=feedback or "pairs")
        check_sources(cfg)
        if not include_original:
            with open(cfg.data, encoding="utf-8") as f:
                warning = few_pairs_warning(sum(1 for line in f if line.strip()))
            if warning:
                gr.Warning(warning, title="Few pairs")
        return self.launch(TrainingJob(cfg, preset=preset if preset in preset_names() else None,
                                       label=f"round{cfg.round}"))

    def outcome(self, job) -> str:
        run = job.run
        if job.state == "done":
            return (f"Round {run.config().round} is run {run.id}: measure its win rate over the baseline in the "
                    "Compare tab.")
        if job.state == "stopped" and run.has_adapter:
            return f"Stopped; run {run.id} kept the adapter trained so far."
        return ""



def lineage_markdown(run_id: str | None) -> str:
    """One line: the run's rounds from the SFT baseline (round 0) to it, each with the pool or data it learned from."""

    if not run_id:
        return ""
    try:
        chain = lineage(run_id)
    except (FileNotFoundError, OSError, StudioError):
        return ""
    steps = []
    for entry in chain:
        if entry["run"] is None:
            steps.append(f"round 0 · SFT baseline ({entry.get('model') or '?'})")
            continue
        source = (f"pool `{entry['pool']}`" if entry.get("pool")
                  else f"data `{Path(entry['data']).name}`" if entry.get("data") else "")
        steps.append(f"round {entry['round']} · `{entry['run']}`" + (f" ({source})" if source else ""))
    return "**Lineage:** " + " → ".join(steps)
