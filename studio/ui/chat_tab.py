"""Chat tab: the SFT baseline (adapter off) and the DPO model (a run's adapter on), side by side.

Both panes stream from one batched `generate` on one copy of the base weights (`studio.chat`), one
generator yielding both panes each token. Each pane keeps its own history, so a conversation goes on
over several turns in both. The model loads on the first message, not when the app starts.
"""

from __future__ import annotations

import time

import gradio as gr

from studio.access import require_reader
from studio.config import load_preset, preset_names
from studio.probes import HANDBOOK_PROBE
from studio.models import ModelError, display_name
from studio.runs import LIVE_STATES, get_run, list_runs

from .common import Services, user_errors
from .form import generation_from_widgets, generation_widget

THINKING = "…"
CUT_MARK = "\n\n*[cut at "  # ends an answer stopped by the token limit, not by the model


def run_choices() -> list[tuple[str, str]]:
    """Runs that have a saved adapter and are not training, newest first, as (label, run id)."""
    choices = []
    for run in list_runs():
        status = run.status()
        if run.has_adapter and status.get("state") not in LIVE_STATES:
            choices.append((f"{run.id} · {status.get('state')} · step {status.get('step')}", run.id))
    return choices


def sample_prompts() -> list[str]:
    prompts = [HANDBOOK_PROBE]
    for name in preset_names():
        for prompt in load_preset(name).card.get("sample_prompts") or []:
            if prompt not in prompts:
                prompts.append(prompt)
    return prompts


def text_of(content) -> str:
    """A Chatbot message's content as plain text: Gradio 6 may hand back a list of typed blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(text_of(block) for block in content)
    return "" if content is None else str(content)


def as_messages(history) -> list[dict]:
    """Chatbot history -> [{role, content}] for the chat template (placeholders and empty turns dropped)."""
    messages = []
    for item in history or []:
        role = item.get("role") if isinstance(item, dict) else getattr(item, "role", None)
        content = text_of(item.get("content") if isinstance(item, dict) else getattr(item, "content", ""))
        if role in ("user", "assistant", "system") and content and content != THINKING:
            messages.append({"role": role, "content": content})
    return messages


def for_model(messages: list[dict]) -> list[dict]:
    """The conversation as the model should see it: the cut marks are for the reader, not for its next turn."""
    return [{**m, "content": m["content"].split(CUT_MARK)[0]} for m in messages]


class ChatTab:
    def __init__(self, services: Services):
        self.services = services
        with gr.Tab("Chat", id="chat") as self.tab:
            with gr.Row(equal_height=True):
                choices = run_choices()
                self.run = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Run",
                                       info="finished runs with a saved adapter, newest first", scale=5,
                                       elem_id="chat-run")
                self.refresh_btn = gr.Button("↻ Refresh", scale=0, min_width=100)
            self.status = gr.Markdown("Pick a run and send a prompt: the base model loads on the first message.",
                                      elem_id="chat-status", elem_classes="ds-caption")
            with gr.Row(equal_height=True, elem_id="chat-panes"):
                self.baseline = gr.Chatbot(label="SFT baseline (adapter off)", elem_id="chat-baseline", height=440,
                                           feedback_options=None, buttons=["copy"])
                self.tuned = gr.Chatbot(label="DPO (the run's adapter on)", elem_id="chat-tuned", height=440,
                                        feedback_options=None, buttons=["copy"])
            with gr.Row(equal_height=True):
                self.input = gr.Textbox(placeholder="Ask both models…", show_label=False, scale=6, lines=1,
                                        elem_id="chat-input", autofocus=False)
                self.send_btn = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="chat-send")
                self.clear_btn = gr.Button("Clear", scale=1, min_width=90, elem_id="chat-clear")
            gr.Examples([[p] for p in sample_prompts()], inputs=self.input, label="Sample prompts (click one)")
            with gr.Accordion("Generation settings", open=False):
                with gr.Row():  # the Chat tab's defaults (studio.generation.DEFAULTS["chat_tab"]) on sliders
                    self.max_new_tokens = generation_widget("max_new_tokens", "chat_tab", "chat", slider=(16, 1024, 8))
                    self.temperature = generation_widget("temperature", "chat_tab", "chat", slider=(0, 1.5, 0.05))
                    self.top_p = generation_widget("top_p", "chat_tab", "chat", slider=(0.05, 1, 0.05))
                    self.repetition_penalty = generation_widget("repetition_penalty", "chat_tab", "chat",
                                                                slider=(1.0, 1.5, 0.05))
        self._wire()

    def _wire(self) -> None:
        # One model, one generate at a time: a second chat waits in the queue. Its own concurrency group, so the
        # training timer and the other tabs' events keep answering during a long answer.
        # Send and the box are disabled while both panes answer, so a second message is never dropped silently.
        busy = gr.on([self.send_btn.click, self.input.submit], lambda: (gr.Button(interactive=False),
                                                                      gr.Textbox(interactive=False)),
                     outputs=[self.send_btn, self.input], api_visibility="private", show_progress="hidden",
                     concurrency_limit=None, queue=False)
        answer = busy.then(self.send, inputs=[self.input, self.run, self.baseline, self.tuned, self.max_new_tokens,
                                              self.temperature, self.top_p, self.repetition_penalty],
                           outputs=[self.input, self.baseline, self.tuned, self.status], api_name="chat",
                           concurrency_limit=1, concurrency_id="chat", show_progress="hidden")
        answer.then(lambda: (gr.Button(interactive=True), gr.Textbox(interactive=True)),
                    outputs=[self.send_btn, self.input], api_visibility="private", show_progress="hidden",
                    concurrency_limit=None, queue=False)
        self.clear_btn.click(lambda: ([], [], ""), outputs=[self.baseline, self.tuned, self.status],
                             api_name="clear_chat", concurrency_limit=None, cancels=[answer])
        gr.on([self.refresh_btn.click, self.tab.select], self.refresh, inputs=self.run, outputs=self.run,
              api_name="chat_runs", concurrency_limit=None, show_progress="hidden")
        self.run.change(self.pane_label, inputs=self.run, outputs=self.tuned, api_visibility="private",
                        show_progress="hidden")

    def connect(self, train) -> None:
        train.runs_changed.change(self.refresh, inputs=self.run, outputs=self.run, api_visibility="private",
                                  show_progress="hidden", concurrency_limit=None)

    # --- handlers ---
    def refresh(self, current: str | None):
        choices = run_choices()
        ids = [run_id for _, run_id in choices]
        return gr.Dropdown(choices=choices, value=current if current in ids else (ids[0] if ids else None))

    def pane_label(self, run_id: str | None):
        return gr.Chatbot(label=f"DPO · {run_id}" if run_id else "DPO (the run's adapter on)")

    @user_errors("Cannot chat", lambda self, message: {self.status: message})
    def send(self, message, run_id, baseline, tuned, max_new_tokens, temperature, top_p,
             repetition_penalty=1.0, request: gr.Request = None):
        message = (message or "").strip()
        if not message:
            yield {self.status: gr.skip()}
            return
        require_reader(request, "chat")
        if not run_id:
            problem = "No run to chat with yet: train one in the Train tab (or pick one above)."
            gr.Warning(problem)
            yield {self.status: problem}
            return
        run = get_run(run_id)  # a run deleted meanwhile is the user's warning; an unreadable one a logged bug
        model = run.config().model
        user = {"role": "user", "content": message}
        base_history, tuned_history = as_messages(baseline) + [user], as_messages(tuned) + [user]
        loading = not self.services.chat.loaded(model)
        yield {self.input: "", self.status: f"Loading {display_name(model)} (first chat only)…" if loading else "Answering…",
               self.baseline: base_history + [{"role": "assistant", "content": THINKING}],
               self.tuned: tuned_history + [{"role": "assistant", "content": THINKING}]}
        started = time.time()
        try:
            engine = self.services.chat.get(model)
            adapter = engine.attach_run(run)
        except (ModelError, FileNotFoundError) as e:
            yield {self.status: f"⚠️ {e}", self.baseline: base_history, self.tuned: tuned_history}
            return
        first_token, base_text, tuned_text, finished = None, "", "", []
        settings = generation_from_widgets("chat_tab", max_new_tokens=int(max_new_tokens),
                                           temperature=float(temperature), top_p=float(top_p),
                                           repetition_penalty=float(repetition_penalty or 1.0))
        for base_text, tuned_text in engine.stream_pair(for_model(base_history), for_model(tuned_history), adapter,
                                                        settings, finished):
            update = {self.baseline: base_history + [{"role": "assistant", "content": base_text or THINKING}],
                      self.tuned: tuned_history + [{"role": "assistant", "content": tuned_text or THINKING}]}
            if first_token is None:
                first_token = time.time()
                update[self.status] = "Answering…"  # the loading message goes as soon as tokens arrive
            yield update
        took = time.time() - started
        cut = f"{CUT_MARK}{int(max_new_tokens)} tokens]*"
        base_text += "" if not finished or finished[0] else cut
        tuned_text += "" if not finished or finished[1] else cut
        yield {self.baseline: base_history + [{"role": "assistant", "content": base_text}],
               self.tuned: tuned_history + [{"role": "assistant", "content": tuned_text}],
               self.status: f"Answered with run `{run.id}` in {took:.1f} s"
                            + (f" (first token after {first_token - started:.1f} s)." if first_token else ".")}
