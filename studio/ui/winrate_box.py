"""The Compare tab's win-rate box: model A against model B on held-out prompts, decided by a rubric, a judge or people.

Each model answers every prompt once, greedily (`studio.winrate.comparison_pool`), into a win-rate pool;
a rubric or a judge (both orders) labels it, and `studio.winrate.measure` gives wins / ties / losses, the
win rate with its Wilson 95% interval, the length-controlled win rate and the mean lengths side by side.
With "people", the pool is labelled blind in the Grow pairs tab and read back here. The whole measure
runs as one job on the slot; its result is saved in the pool's pool.json, so a reload shows it again.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from studio import jobs
from studio.access import require_user
from studio.files import check_web_source
from studio.config import PRESETS_DIR
from studio.errors import ConfigError, EvalError
from studio.generate import BASELINE_WORDS, resolve_source, round_of
from studio.label import (
    DEFAULT_TEMPLATE, WEAK_JUDGE_NOTE, Judge, check_template, judge_pool, label_with_rubric, load_rubric,
)
from studio.pools import get_pool, list_pools
from studio.rounds import lineage
from studio.winrate import comparison_pool, measure, ties_text

from .common import Services, escape, user_errors
from .form import generation_from_widgets, generation_widget
from .jobbox import JobBox
from .loop import BASELINE, answering_runs, lineage_markdown

HELDOUT = PRESETS_DIR / "data" / "self-improve.heldout.txt"
RUBRIC = PRESETS_DIR / "data" / "self-improve.rubric.yaml"
DECIDERS = [("a rubric", "rubric"), ("a judge model", "judge"), ("people, blind (in the Grow pairs tab)", "human")]


def _read(path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def heldout_prompts() -> str:
    return "\n".join(line.strip() for line in _read(HELDOUT).splitlines() if line.strip() and not line.startswith("#"))


def model_choices() -> list[tuple[str, str]]:
    return [("SFT baseline (the other model's base) · round 0", BASELINE),
            *((f"{r.id} · round {round_of(r)}", r.id) for r in answering_runs())]


def previous_round(run_id: str | None) -> str:
    """The model a run's round improves on: the run it continued, else the baseline."""
    try:
        chain = lineage(run_id) if run_id and run_id != BASELINE else []
    except (FileNotFoundError, OSError):
        chain = []
    return (chain[-2]["run"] or BASELINE) if len(chain) >= 2 else BASELINE


def lineage_line(model_a: str | None) -> str:
    line = lineage_markdown(model_a) if model_a and model_a != BASELINE else ""
    return line or "Picking a run as model A sets model B to the round before it (its lineage shows here)."


def winrate_pools() -> list[tuple[str, str]]:
    out = []
    for pool in list_pools():
        info = pool.info()
        if info.get("kind") == "winrate":
            names = " vs ".join(m.get("name", "?") for m in info.get("models", []))
            out.append((f"{pool.id} · {names} · {', '.join(pool.labellers()) or 'not labelled'}", pool.id))
    return out


def latest_result() -> dict | None:
    """The newest measured win rate on disk (any pool, any labeller)."""
    results = [r for pool in list_pools() if pool.info().get("kind") == "winrate"
               for r in (pool.info().get("winrate") or {}).values()]
    return max(results, key=lambda r: r.get("time") or 0) if results else None


def result_markdown(result: dict | None) -> str:
    if not result:
        return "No win rate measured yet."
    low, high = result["ci95"]
    return (f"**Win rate of A over B: {result['win_rate']:.3f}** (95% CI {low:.3f}–{high:.3f}, Wilson; ties and "
            f"'both bad' count half) · **length-controlled: {result['lc_win_rate']:.3f}**\n\n"
            f"{result['wins']} wins · {ties_text(result)} · {result['losses']} losses "
            f"on {result['pairs']} prompts, "
            f"decided by `{escape(result['labeller'])}` (pool `{result['pool']}`)\n\n"
            "| | model | mean words |\n| --- | --- | ---: |\n"
            f"| A | {escape(result['model_a'])} | {result['mean_words_a']:.1f} |\n"
            f"| B | {escape(result['model_b'])} | {result['mean_words_b']:.1f} |")


def outcomes_frame(pool_id: str | None, labeller: str | None) -> pd.DataFrame:
    """One row per prompt: both answers side by side, the verdict and its reason."""
    columns = ["prompt", "A", "B", "verdict", "reason"]
    if not pool_id or not labeller:
        return pd.DataFrame([], columns=columns)
    try:
        pool = get_pool(pool_id)
    except FileNotFoundError:
        return pd.DataFrame([], columns=columns)
    candidates, decided = pool.candidates(), pool.decisions(labeller)
    rows = []
    for pair in pool.pairs():
        d = decided.get((pair.id, labeller))
        c = candidates[pair.candidate]
        verdict = ("" if d is None else "A wins" if d.outcome == "win" and d.winner == 0 else
                   "B wins" if d.outcome == "win" else d.outcome.replace("_", " "))
        rows.append([c["prompt"], c["answers"][0]["text"], c["answers"][1]["text"], verdict, d.reason if d else ""])
    return pd.DataFrame(rows, columns=columns)


class WinRateBox(JobBox):
    kind = "winrate"
    idle = "No win rate measured since the app started; the newest result on disk is below."

    def __init__(self, services: Services, tab):
        super().__init__()
        self.services = services
        with gr.Accordion("Win rate: model A against model B", open=True, elem_id="winrate-box"):
            gr.Markdown("Both models answer the same held-out prompts (prompts never used for training), greedily; a "
                        "rubric, a judge (in both orders) or people reading the answers blind decide each pair. The "
                        "length-controlled win rate is read from a logistic regression of the outcome on the length "
                        "difference, at zero difference: a win that came only from longer (or shorter) answers "
                        "shrinks there.", elem_classes="ds-caption")
            choices = model_choices()
            first = choices[1][1] if len(choices) > 1 else BASELINE
            with gr.Row(equal_height=True):
                self.model_a = gr.Dropdown(choices, value=first, label="Model A", elem_id="winrate-a", scale=3,
                                           allow_custom_value=True)
                self.model_b = gr.Dropdown(choices, value=previous_round(first), label="Model B", elem_id="winrate-b",
                                           scale=3, allow_custom_value=True)
            self.lineage = gr.Markdown(lineage_line(first), elem_id="winrate-lineage")
            with gr.Row(equal_height=False):
                self.prompts = gr.Textbox(heldout_prompts(), lines=5, max_lines=12, scale=4, elem_id="winrate-prompts",
                                          label="Held-out prompts (one a line)")
                with gr.Column(scale=2, min_width=220):
                    self.max_new_tokens = generation_widget("max_new_tokens", "winrate", "winrate")
                    self.decider = gr.Radio(DECIDERS, value="rubric", label="Decided by", elem_id="winrate-decider")
            with gr.Group() as self.rubric_box:
                self.rubric = gr.Code(_read(RUBRIC), language="yaml", label="Rubric (YAML)", elem_id="winrate-rubric")
            with gr.Group(visible=False) as self.judge_box:
                gr.Markdown(f"⚠️ **{WEAK_JUDGE_NOTE}**", elem_classes="ds-pad")
                self.judge_model = gr.Textbox("embedded", label="Judge model", elem_id="winrate-judge-model")
                self.template = gr.Textbox(DEFAULT_TEMPLATE, lines=8, max_lines=30, label="Pairwise prompt template",
                                           elem_id="winrate-template")
            self.job_widgets("winrate", "Measure the win rate")
            latest = latest_result() or {}
            self.result = gr.Markdown(result_markdown(latest), elem_id="winrate-result")
            self.table = gr.Dataframe(outcomes_frame(latest.get("pool"), latest.get("labeller")),
                                      interactive=False, wrap=True, max_height=500, label="Answers side by side",
                                      elem_id="winrate-table")
            gr.Markdown("**Read a labelled win-rate pool** (for pools labelled by people in the Grow pairs tab, or "
                        "by a rubric or a judge).", elem_classes="ds-caption")
            with gr.Row(equal_height=True):
                self.read_pool = gr.Dropdown(winrate_pools(), value=None, label="Win-rate pool", scale=4,
                                             allow_custom_value=True, elem_id="winrate-read-pool")
                self.read_labeller = gr.Dropdown([], value=None, label="Decisions of", scale=2,
                                                 allow_custom_value=True, elem_id="winrate-read-labeller")
                self.read_btn = gr.Button("Read the win rate", scale=1, elem_id="winrate-read")
        self._wire(tab)

    def _wire(self, tab) -> None:
        self.model_a.input(self.pick_a, inputs=self.model_a, outputs=[self.model_b, self.lineage],
                           api_visibility="private", show_progress="hidden")
        self.decider.change(lambda d: (gr.Group(visible=d == "rubric"), gr.Group(visible=d == "judge")),
                            inputs=self.decider, outputs=[self.rubric_box, self.judge_box], api_visibility="private",
                            queue=False)
        self.start_btn.click(self.start, inputs=[self.model_a, self.model_b, self.prompts, self.max_new_tokens,
                                                 self.decider, self.rubric, self.judge_model, self.template],
                             outputs=self.job_outputs, api_name="winrate", concurrency_limit=None)
        self.wire_job("winrate", tab)
        shown = [self.result, self.table, self.read_pool]
        self.finished.change(self.show_latest, outputs=shown, api_visibility="private", show_progress="hidden")
        tab.select(self.refresh, inputs=[self.model_a, self.model_b],
                   outputs=[self.model_a, self.model_b, self.lineage, *shown], api_name="refresh_winrate",
                   show_progress="hidden", concurrency_limit=None)
        self.read_pool.input(self.labellers, inputs=self.read_pool, outputs=self.read_labeller,
                             api_visibility="private", show_progress="hidden")
        self.read_btn.click(self.read, inputs=[self.read_pool, self.read_labeller], outputs=[self.result, self.table],
                            api_name="read_winrate")

    # --- handlers ---
    def pick_a(self, model_a: str | None):
        return gr.Dropdown(value=previous_round(model_a)), lineage_line(model_a)

    def show_latest(self):
        latest = latest_result()
        frame = outcomes_frame(latest["pool"], latest["labeller"]) if latest else outcomes_frame(None, None)
        return result_markdown(latest), frame, gr.Dropdown(choices=winrate_pools())

    def refresh(self, model_a: str | None, model_b: str | None):
        choices = model_choices()
        ids = [value for _, value in choices]
        # A page built before the newest run (its A still the baseline) offers that run as A.
        a = model_a if model_a in ids and model_a != BASELINE else (ids[1] if len(ids) > 1 else BASELINE)
        b = model_b if model_b in ids and (model_b != a or a == BASELINE) else previous_round(a)
        return (gr.Dropdown(choices=choices, value=a), gr.Dropdown(choices=choices, value=b),
                lineage_line(a), *self.show_latest())

    def labellers(self, pool_id: str | None):
        try:
            names = get_pool(pool_id).labellers() if pool_id else []
        except FileNotFoundError:
            names = []
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    @user_errors("Cannot read the win rate")
    def read(self, pool_id: str | None, labeller: str | None):
        if not pool_id:
            raise EvalError("Pick a win-rate pool first.")
        result = measure(pool_id, labeller or None)
        return result_markdown(result), outcomes_frame(pool_id, result["labeller"])

    @user_errors("Cannot measure the win rate", JobBox.refused)
    def start(self, model_a, model_b, prompts, max_new_tokens, decider, rubric_text, judge_model, template,
              request: gr.Request = None):
        require_user(request, "measure a win rate")
        a, b = (model_a or BASELINE).strip(), (model_b or BASELINE).strip()
        a, b = (m if m.lower() in BASELINE_WORDS else check_web_source(m) for m in (a, b))
        if a == b or (a.lower() in BASELINE_WORDS and b.lower() in BASELINE_WORDS):
            raise ConfigError("Model A and model B are the same; pick two different models.")
        # Resolved now, so a run without an adapter is refused here and not in the job.
        answering = [resolve_source(m) for m in (a, b) if m.lower() not in BASELINE_WORDS]
        lines = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
        if not lines:
            raise EvalError("Write at least one held-out prompt, one a line.")
        settings = generation_from_widgets("winrate", max_new_tokens=int(max_new_tokens or 0))
        rubric = load_rubric(rubric_text) if decider == "rubric" else None
        spec = check_web_source((judge_model or "").strip() or "embedded")
        if decider == "judge":
            check_template(template)

        def work(job):
            import torch

            job.report("loading the model")
            engine = self.services.chat.get(answering[0].model, dtype=torch.float32)
            pool = comparison_pool(a, b, lines, settings, progress=job.report, should_stop=job.stopping, engine=engine,
                                   prompts_source="held-out prompts from the Compare tab")
            if job.stopping() or decider == "human":
                return {"pool": pool.id}
            if rubric is not None:
                labeller = label_with_rubric(pool, rubric, progress=job.report, should_stop=job.stopping)["labeller"]
            else:
                job.report("loading the judge")
                judge = Judge(spec, template, engine=self.services.chat.get(spec, dtype=torch.float32))
                labeller = judge_pool(pool, judge, progress=job.report, should_stop=job.stopping)["labeller"]
            if job.stopping():
                return {"pool": pool.id}
            return measure(pool, labeller)

        title = f"win rate of {a} over {b} on {len(lines)} prompts"
        return self.launch(jobs.Job(self.kind, title, work))

    def outcome(self, job) -> str:
        result = job.result or {}
        if "win_rate" in result:
            low, high = result["ci95"]
            return (f"Win rate {result['win_rate']:.3f} (95% CI {low:.3f}–{high:.3f}); the table below has every "
                    "answer.")
        if result.get("pool"):
            return (f"Pool {result['pool']} holds both models' answers: label it blind in the Grow pairs tab, then "
                    "read its win rate below.")
        return ""
