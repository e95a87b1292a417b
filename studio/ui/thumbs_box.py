"""The Grow pairs tab's thumbs mode: one answer at a time, thumbs up or down, by button or key, saved at once.

Keys (while the box is open and the focus is not in a text field): u thumbs up, d thumbs down, x skip, b undo.
Nothing lives in the page: the next answer and the counter are read from the pool's thumbs.jsonl (studio.thumbs),
so a reload or a second browser resumes where it stopped. The verdicts become KTO's unpaired file
(pools/<id>/thumbs.kto.jsonl), which the next round trains on with objective kto.
"""

from __future__ import annotations


import gradio as gr

from studio.access import access_mode, labeller_name
from studio.pools import get_pool, human
from studio.thumbs import answer_view, next_answer, progress, thumb, to_kto, undo_thumb

from .common import chooser, key_shortcuts, quote_answer, user_errors

BUTTONS = {  # verdict -> (label, elem_id, key)
    "up": ("👍 Thumbs up", "thumb-btn-up", "u"),
    "down": ("👎 Thumbs down", "thumb-btn-down", "d"),
    "skip": ("Skip", "thumb-btn-skip", "x"),
}
UNDO = ("Undo", "thumb-btn-undo", "b")
KEYS_JS = key_shortcuts("__dsThumbKeys", [*BUTTONS.values(), UNDO])


class ThumbsBox:
    """Built inside the Grow pairs tab; `wire(tab, pool, name)` connects it to the tab's pool and name."""

    def __init__(self):
        gr.Markdown("Judge each sampled answer on its own: **thumbs up** if you would want the model to answer "
                    "like this, **thumbs down** if not. No model name is shown. Every click is saved at once; "
                    "the answers become KTO's file (one answer a row), which **3 · Train the next round** trains "
                    "on with *Learn from: thumbs*.", elem_classes="ds-caption")
        self.answer = gr.State(None)
        self.progress = gr.Markdown(elem_id="thumb-progress")
        self.prompt = gr.Markdown(elem_id="thumb-prompt")
        self.text = gr.Markdown(container=True, padding=True, min_height=120, max_height=420, elem_id="thumb-answer")
        with gr.Row():
            self.buttons = {verdict: gr.Button(f"{label}  [{key}]", elem_id=elem_id,
                                               variant="primary" if verdict != "skip" else "secondary")
                            for verdict, (label, elem_id, key) in BUTTONS.items()}
            self.undo_btn = gr.Button(f"{UNDO[0]}  [{UNDO[2]}]", elem_id=UNDO[1])
        gr.HTML("Keys: <b>u</b> thumbs up · <b>d</b> thumbs down · <b>x</b> skip · <b>b</b> undo",
                js_on_load=KEYS_JS, elem_classes="ds-muted", elem_id="thumb-keys")
        with gr.Row(equal_height=True):
            self.export_btn = gr.Button("Write the KTO file", scale=0, min_width=200, elem_id="thumb-export")
            self.export_status = gr.Markdown(elem_id="thumb-export-status")

    @property
    def view_outputs(self) -> list:
        return [self.progress, self.prompt, self.text, self.answer]

    def wire(self, tab, pool, name) -> None:
        inputs = [pool, name]
        gr.on([tab.select, pool.change, name.submit, name.blur], self.show, inputs=inputs, outputs=self.view_outputs,
              api_name="thumbs_view", show_progress="hidden", concurrency_limit=None)
        for verdict, button in self.buttons.items():
            button.click(chooser(self.choose, verdict, f"thumbs_{verdict}"), inputs=[*inputs, self.answer],
                         outputs=self.view_outputs, api_name=f"thumbs_{verdict}", show_progress="hidden",
                         concurrency_limit=None)
        self.undo_btn.click(self.undo, inputs=inputs, outputs=self.view_outputs, api_name="thumbs_undo",
                            show_progress="hidden", concurrency_limit=None)
        self.export_btn.click(self.export, inputs=pool, outputs=self.export_status, api_name="thumbs_export")

    # --- handlers ---
    def show(self, pool_id: str | None, name: str | None, answer_id: str | None = None, request: gr.Request = None):
        """(progress, prompt, answer, answer id) for this person's next answer (or `answer_id`)."""
        if not pool_id:
            return "No pool yet: generate one above.", "", "", None
        try:
            pool = get_pool(pool_id)
        except FileNotFoundError as e:
            return str(e), "", "", None
        # With a sign-in, thumbs are recorded under the signed-in name whatever the box says (access.labeller_name).
        name = labeller_name(request, name)
        who = human(name)
        view = answer_view(pool, answer_id) if answer_id else next_answer(pool, who)
        p = progress(pool, who)
        counter = (f"**{p['judged']} of {p['total']}** answers judged by `{who}` (👍 {p['up']} · 👎 {p['down']}"
                   + (f" · {p['skip']} skipped" if p["skip"] else "") + ")"
                   + ("" if name else " · type your name to judge as yourself" if access_mode() == "open"
                      else " · sign in to judge"))
        if view is None:
            done = "Every answer judged." if p["total"] else "This pool has no answers yet."
            return counter, f"{done} Write the KTO file below.", "", None
        return counter, f"**Prompt:** {quote_answer(view['prompt'])}", quote_answer(view["text"]), view["answer"]

    def choose(self, verdict: str, pool_id: str | None, name: str | None, answer_id: str | None,
               request: gr.Request = None):
        if pool_id and answer_id:
            self._save(verdict, pool_id, human(labeller_name(request, name)), answer_id)
        return self.show(pool_id, name, request=request)

    @user_errors("Not saved")
    def _save(self, verdict: str, pool_id: str, who: str, answer_id: str) -> None:
        thumb(pool_id, answer_id, verdict, who)

    @user_errors("Cannot undo")
    def undo(self, pool_id: str | None, name: str | None, request: gr.Request = None):
        if not pool_id:
            return self.show(pool_id, name, request=request)
        answer_id = undo_thumb(pool_id, human(labeller_name(request, name)))
        if answer_id is None:
            gr.Info("Nothing to undo.")
        return self.show(pool_id, name, answer_id, request=request)

    @user_errors("Cannot write the KTO file", lambda self, message: f"⚠️ {message}")
    def export(self, pool_id: str | None):
        if not pool_id:
            return "Pick a pool first."
        path, counts = to_kto(pool_id)
        return (f"Wrote **{counts['up'] + counts['down']}** answers ({counts['up']} 👍, {counts['down']} 👎) to "
                f"`{path}`: objective kto trains on it (Train tab, or the next round with *Learn from: thumbs*).")
