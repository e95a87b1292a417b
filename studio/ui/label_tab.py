"""Grow pairs tab: sample a pool from your own model, label its pairs (blind, a rubric or a judge), train the next round.

Labelling: a person picks a pool and types a name (kept in the browser), then answers "A is better", "B is
better", "tie", "both bad" or skips, by button or key (1 / 2 / 3 / 0 / s, z to undo). The A/B order is the
pair's stored order and no model name is shown. Nothing lives in the page: the next pair and the counter
are read from the pool's labels.jsonl, so a reload or a second browser resumes where it stopped. A rubric
can label the whole pool at once (instant, each decision with its reason), a judge model as a job, and
the decisions become a preference file (pools/<id>/preferences.jsonl) that `data check` and training read
as it is. Generating, judging and the next round are boxes from `loop.py` (jobs on the one slot).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from studio.access import access_mode, labeller_name
from studio.label import label_human, label_with_rubric, load_rubric, next_pair, pair_view, undo_human
from studio.pools import get_pool, human, list_pools, to_preferences

from .common import Services, chooser, key_shortcuts, quote_answer, user_errors
from .loop import GenerateBox, JudgeBox, NextRoundBox
from .thumbs_box import ThumbsBox

RUBRIC_EXAMPLE = Path(__file__).resolve().parent.parent.parent / "presets" / "data" / "self-improve.rubric.yaml"
ALL = "(everyone)"
BUTTONS = {  # choice -> (label, elem_id, key)
    "A": ("A is better", "label-btn-a", "1"),
    "B": ("B is better", "label-btn-b", "2"),
    "tie": ("Tie", "label-btn-tie", "3"),
    "both_bad": ("Both bad", "label-btn-bad", "0"),
    "skip": ("Skip", "label-btn-skip", "s"),
}
UNDO = ("Undo", "label-btn-undo", "z")
KEYS_JS = key_shortcuts("__dsLabelKeys", [*BUTTONS.values(), UNDO])


def pool_choices() -> list[tuple[str, str]]:
    choices = []
    for pool in list_pools():
        s = pool.summary()
        choices.append((f"{pool.id} · {s['kind']} · {s['pairs']} pairs · {s['state']}", pool.id))
    return choices


class LabelTab:
    def __init__(self, services: Services | None = None):
        services = services or Services()
        with gr.Tab("Grow pairs", id="label") as self.tab:
            gr.Markdown("Grow a preference data set from your own model: **1** sample answers into a pool, **2** "
                        "label its pairs, **3** train the next round on them, **4** measure the new round's win "
                        "rate over the one before in the **Compare** tab.", elem_classes="ds-caption")
            with gr.Accordion("1 · Generate a pool", open=not list_pools(), elem_id="gen-box"):
                self.generate = GenerateBox(services)
            gr.Markdown("#### 2 · Label")
            gr.Markdown("Pick a pool and label its pairs **blind**: which model wrote which answer is never shown, "
                        "and the A/B order is random (the same for everyone). Every click is saved at once.",
                        elem_classes="ds-caption")
            with gr.Row(equal_height=True):
                choices = pool_choices()
                self.pool = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Pool", scale=4,
                                        allow_custom_value=True, elem_id="label-pool")
                self.name = gr.Textbox(label="Your name", placeholder="recorded with each decision", scale=2,
                                       elem_id="label-name")
                self.refresh_btn = gr.Button("↻ Refresh", scale=0, min_width=100)
            self.remember = gr.BrowserState({"name": "", "pool": None}, storage_key="ds-label")
            self.pair = gr.State(None)
            self.progress = gr.Markdown(elem_id="label-progress")
            self.prompt = gr.Markdown(elem_id="label-prompt")
            with gr.Row(equal_height=True):
                with gr.Column():
                    gr.Markdown("**A**")
                    self.a = gr.Markdown(container=True, padding=True, min_height=120, max_height=420, elem_id="label-a")
                with gr.Column():
                    gr.Markdown("**B**")
                    self.b = gr.Markdown(container=True, padding=True, min_height=120, max_height=420, elem_id="label-b")
            with gr.Row():
                self.buttons = {choice: gr.Button(f"{label}  [{key}]", elem_id=elem_id,
                                                  variant="primary" if choice in ("A", "B") else "secondary")
                                for choice, (label, elem_id, key) in BUTTONS.items()}
                self.undo_btn = gr.Button(f"{UNDO[0]}  [{UNDO[2]}]", elem_id=UNDO[1])
            gr.HTML("Keys: <b>1</b> A is better · <b>2</b> B is better · <b>3</b> tie · <b>0</b> both bad · "
                    "<b>s</b> skip · <b>z</b> undo", js_on_load=KEYS_JS,
                    elem_classes="ds-muted", elem_id="label-keys")
            with gr.Accordion("Or: thumbs up / down, one answer at a time (trains KTO)", open=False,
                              elem_id="thumbs-box"):
                self.thumbs = ThumbsBox()
            with gr.Accordion("Label the whole pool with a rubric", open=False):
                gr.Markdown("Rules applied in order: the first rule that tells the two answers apart decides, and "
                            "each decision shows the rule and the numbers it saw. Rule types: `shorter`, `longer`, "
                            "`first_person`, `readability` (with `min_difference`), `must_match`, `must_not_match` "
                            "(with `pattern`), `finished` (not cut off at the token limit).", elem_classes="ds-caption")
                self.rubric = gr.Code(RUBRIC_EXAMPLE.read_text(encoding="utf-8") if RUBRIC_EXAMPLE.is_file() else "",
                                      language="yaml", label="Rubric (YAML)", elem_id="label-rubric")
                self.apply_btn = gr.Button("Apply the rubric to this pool", elem_id="label-apply-rubric")
                self.decisions = gr.Dataframe(interactive=False, wrap=True, max_height=400, elem_id="label-decisions",
                                              label="Rubric decisions")
            with gr.Accordion("Label the whole pool with a judge model", open=False, elem_id="judge-box"):
                self.judge = JudgeBox(services)
                self.judged = gr.Dataframe(interactive=False, wrap=True, max_height=400, elem_id="judge-decisions",
                                           label="Judge decisions")
            with gr.Row(equal_height=True):
                self.labeller = gr.Dropdown([ALL], value=ALL, label="Decisions of", scale=3, allow_custom_value=True,
                                            elem_id="label-labeller")
                self.export_btn = gr.Button("Write the preference file", scale=1, elem_id="label-export")
            self.export_status = gr.Markdown(elem_id="label-export-status")
            with gr.Accordion("3 · Train the next round", open=True, elem_id="round-box"):
                self.next_round = NextRoundBox()
            gr.Markdown("**4 · Measure:** the **Compare** tab's *Win rate* box sets model A to the new round and "
                        "model B to the round before it.", elem_classes="ds-caption")
        self._wire()

    @property
    def view_outputs(self) -> list:
        return [self.progress, self.prompt, self.a, self.b, self.pair, self.labeller]

    def _wire(self) -> None:
        inputs = [self.pool, self.name]
        gr.on([self.tab.select, self.refresh_btn.click], self.restore, inputs=[self.pool, self.name, self.remember],
              outputs=[self.pool, self.name, *self.view_outputs], api_name="label_view", concurrency_limit=None,
              show_progress="hidden")
        gr.on([self.pool.input, self.name.submit, self.name.blur], self.show, inputs=inputs,
              outputs=self.view_outputs, api_visibility="private", show_progress="hidden", concurrency_limit=None)
        gr.on([self.pool.change, self.name.change], lambda pool, name: {"name": name or "", "pool": pool},
              inputs=inputs, outputs=self.remember, api_visibility="private", show_progress="hidden",
              queue=False)
        for choice, button in self.buttons.items():
            button.click(chooser(self.choose, choice, f"choose_{choice.lower()}"), inputs=[*inputs, self.pair],
                         outputs=self.view_outputs, api_name=f"label_{choice.lower()}", show_progress="hidden",
                         concurrency_limit=None)
        self.undo_btn.click(self.undo, inputs=inputs, outputs=self.view_outputs, api_name="label_undo",
                            show_progress="hidden", concurrency_limit=None)
        self.apply_btn.click(self.apply_rubric, inputs=[*inputs, self.rubric],
                             outputs=[self.decisions, *self.view_outputs], api_name="label_rubric")
        self.export_btn.click(self.export, inputs=[self.pool, self.labeller], outputs=self.export_status,
                              api_name="label_export")
        self.generate.wire(self.tab)
        self.judge.wire(self.tab, self.pool)
        self.thumbs.wire(self.tab, self.pool, self.name)
        # A pool just generated is shown at once; a judged pool shows its decisions.
        self.generate.finished.change(self.after_generate, inputs=[self.name, self.remember],
                                      outputs=[self.pool, self.name, *self.view_outputs], api_visibility="private",
                                      show_progress="hidden")
        self.judge.finished.change(self.after_judge, inputs=inputs, outputs=[self.judged, *self.view_outputs],
                                   api_visibility="private", show_progress="hidden")

    def connect(self, train) -> None:
        """The next round trains with the Train tab's settings, through the same TrainingJob as its Start."""
        self.next_round.connect(train, self.tab, self.pool, self.labeller)

    # --- handlers ---
    def restore(self, pool_id: str | None, name: str | None, remembered: dict | None, request: gr.Request = None):
        """Refresh the pool list and show the next pair; a fresh page takes its name and pool from the browser."""
        remembered = remembered or {}
        # Fill the name only from the browser's memory: a name being typed right now is never overwritten.
        name_out = remembered["name"] if not name and remembered.get("name") else gr.skip()
        name = name or remembered.get("name") or ""
        ids = [value for _, value in pool_choices()]
        wanted = pool_id or remembered.get("pool")
        pool_id = wanted if wanted in ids else (ids[0] if ids else None)
        return (gr.Dropdown(choices=pool_choices(), value=pool_id), name_out, *self.show(pool_id, name, request=request))

    def show(self, pool_id: str | None, name: str | None, pair_id: str | None = None, request: gr.Request = None):
        """(progress, prompt, A, B, pair id, labeller choices) for this person's next pair (or `pair_id`)."""
        if not pool_id:
            return ("No pool yet: generate one above.",
                    "", "", "", None, gr.Dropdown(choices=[ALL], value=ALL))
        try:
            pool = get_pool(pool_id)
        except FileNotFoundError as e:
            return (str(e), "", "", "", None, gr.Dropdown(choices=[ALL], value=ALL))
        # With a sign-in, decisions are recorded under the signed-in name whatever the box says (access.labeller_name).
        name = labeller_name(request, name)
        who = human(name)
        view = pair_view(pool, pair_id) if pair_id else next_pair(pool, who)
        p = pool.progress(who)
        counter = (f"**{p['labelled']} of {p['total']}** pairs labelled by `{who}`"
                   + (f" · {p['skipped']} skipped" if p["skipped"] else "")
                   + ("" if name else " · type your name to label as yourself" if access_mode() == "open"
                      else " · sign in to label"))
        labellers = gr.Dropdown(choices=[ALL, *pool.labellers()])
        if view is None:
            done = "All pairs labelled." if p["total"] else "This pool has no pairs yet."
            return counter, f"{done} Write the preference file below.", "", "", None, labellers
        return (counter, f"**Prompt:** {quote_answer(view['prompt'])}", quote_answer(view["a"]), quote_answer(view["b"]), view["pair"],
                labellers)

    def after_generate(self, name: str | None, remembered: dict | None):
        return self.restore(self.generate.latest_pool(), name, remembered)

    def after_judge(self, pool_id: str | None, name: str | None, request: gr.Request = None):
        job = self.judge.job
        counts = job.result if job is not None else None
        if not counts or job.pool_id != pool_id:  # the page shows another pool now
            return (gr.skip(), *self.show(pool_id, name, request=request))
        return (decisions_frame(get_pool(pool_id), counts["labeller"]), *self.show(pool_id, name, request=request))

    def choose(self, choice: str, pool_id: str | None, name: str | None, pair_id: str | None,
               request: gr.Request = None):
        if pool_id and pair_id:
            self._save(choice, pool_id, human(labeller_name(request, name)), pair_id)  # a deleted pool: a warning
        return self.show(pool_id, name, request=request)

    @user_errors("Not saved")
    def _save(self, choice: str, pool_id: str, who: str, pair_id: str) -> None:
        label_human(pool_id, pair_id, choice, who)

    @user_errors("Cannot undo")  # a pool deleted meanwhile: a warning, the page as it was
    def undo(self, pool_id: str | None, name: str | None, request: gr.Request = None):
        if not pool_id:
            return self.show(pool_id, name, request=request)
        pair_id = undo_human(pool_id, human(labeller_name(request, name)))
        if pair_id is None:
            gr.Info("Nothing to undo.")
        return self.show(pool_id, name, pair_id, request=request)

    def apply_rubric(self, pool_id: str | None, name: str | None, text: str, request: gr.Request = None):
        if not pool_id:
            gr.Warning("Pick a pool first.")
            return (gr.skip(), *self.show(pool_id, name, request=request))
        labelled = self._label_with_rubric(pool_id, text)
        if labelled is None:
            return (gr.skip(), *self.show(pool_id, name, request=request))
        pool, rubric, counts = labelled
        gr.Info(f"{rubric.labeller}: {counts['win']} with a winner, {counts['tie']} ties, "
                f"{counts['both_bad']} both bad.")
        return (decisions_frame(pool, rubric.labeller), *self.show(pool_id, name, request=request))

    @user_errors("Cannot apply the rubric", lambda self, message: None)
    def _label_with_rubric(self, pool_id: str, text: str):
        """(pool, rubric, counts) once the rubric labelled the pool; None after a warning."""
        pool = get_pool(pool_id)
        rubric = load_rubric(text)
        return pool, rubric, label_with_rubric(pool, rubric)

    @user_errors("Cannot write the preference file", lambda self, message: f"⚠️ {message}")
    def export(self, pool_id: str | None, labeller: str | None):
        if not pool_id:
            return "Pick a pool first."
        path, rows = to_preferences(pool_id, None if labeller in (None, ALL) else labeller)
        return (f"Wrote **{rows}** pairs to the pool's preference file: train on it with *Train the next round* "
                f"below, or pick it in the Data tab to check it.")


def decisions_frame(pool, labeller: str) -> pd.DataFrame:
    """One row per pair: the prompt, both answers (shortened), the verdict and the rule's reason."""
    candidates = pool.candidates()
    decided = pool.decisions(labeller)
    rows = []
    for pair in pool.pairs():
        d = decided.get((pair.id, labeller))
        if d is None:
            continue
        c = candidates[pair.candidate]
        verdict = f"answer {d.winner + 1}" if d.outcome == "win" else d.outcome.replace("_", " ")
        rows.append([c["prompt"], _short(c["answers"][pair.first]["text"]), _short(c["answers"][pair.second]["text"]),
                     verdict, d.reason])
    return pd.DataFrame(rows, columns=["prompt", "answer 1", "answer 2", "verdict", "reason"])


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + "…"
