"""Streamed generation for the SFT baseline and the DPO-tuned model side by side, from one copy of the base weights.

Each run's adapter is attached to the same base model under the run's id. Both panes answer in
one batched `generate`, rows routed by PEFT's per-row `adapter_names` ("__base__" = adapter off),
so the weights are read once per token for both answers. Every generation goes through
`_generate_on_gpu`, which runs under `@spaces.GPU` on a ZeroGPU Space (studio.zerogpu) and as a plain call elsewhere.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch

from . import zerogpu
from .config import detect_hardware
from .generation import GenerationSettings, defaults
from .models import NO_ADAPTER as BASE, attach_adapter, chat_dtype, chat_ids, load_base


# What the Chat tab starts with, and what an exported Modelfile carries so Ollama answers the same way.


class _RowStreamer:
    """A transformers streamer for a batch: queues each step's new token per row."""

    def __init__(self, rows: int):
        self.rows = rows
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt itself
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(self.rows, -1)[:, -1].tolist())

    def end(self) -> None:
        self.queue.put(None)


class ChatEngine:
    """Holds one base model; attaches run adapters by name; streams one or several answers."""

    def __init__(self, model_spec: str = "embedded", device: str | None = None, dtype=None):
        device = device or detect_hardware().device
        self.model_spec = model_spec
        self.dtype = dtype or chat_dtype(device)
        self.model, self.tokenizer = load_base(model_spec, device, self.dtype)
        self.device = next(self.model.parameters()).device
        self.adapters: dict[str, Path] = {}
        # Base-model answers by (prompts, settings), kept by studio.evaluate: the base weights never change in an
        # engine, so a sweep's evaluations and its probe grid generate the baseline column once.
        self.baseline_answers: dict = {}
        self._lock = threading.Lock()  # one generate at a time: two would halve each other's speed
        _engines[id(self)] = self

    # --- adapters ---
    def attach(self, adapter_dir: str | Path, name: str) -> str:
        """Attach a trained adapter (idempotent). Returns the name to use in `adapters=`."""

        safe = name.replace(".", "_")  # PEFT adapter names become module attribute names
        if safe not in self.adapters:
            with self._lock:
                self.model = attach_adapter(self.model, Path(adapter_dir), safe)
                self.adapters[safe] = Path(adapter_dir)
        return safe

    def attach_run(self, run) -> str:
        if not run.has_adapter:
            raise FileNotFoundError(f"Run {run.id} has no saved adapter yet (state: {run.state}).")
        return self.attach(run.adapter_dir, run.id)

    # --- generation ---
    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return chat_ids(self.tokenizer, messages, add_generation_prompt=True)

    def stream(self, conversations: list[list[dict]], adapters: list[str | None],
               settings: GenerationSettings | None = None, finished: list[bool] | None = None) -> Iterator[list[str]]:
        """Answer each conversation with its adapter (None = base model); yields every row's text so far.

        `finished`, when given, is filled once the stream ends with one flag per row: True where the
        answer ended on its own (EOS), False where it was cut at max_new_tokens.
        """
        settings = settings or defaults("chat")
        done = [False] * len(conversations)
        used = {a: str(self.adapters[a]) for a in adapters if a in self.adapters}
        for texts, done in _generate_on_gpu(id(self), self.model_spec, self.dtype, used, conversations, adapters,
                                            settings):
            yield texts
        if finished is not None:
            finished[:] = done

    def _stream_here(self, conversations: list[list[dict]], adapters: list[str | None],
                     settings: GenerationSettings) -> Iterator[tuple[list[str], list[bool]]]:
        """The generation loop in this process: every row's text so far, and which rows have ended (EOS)."""
        rows = len(conversations)
        ids = [self.prompt_ids(c) for c in conversations]
        width = max(len(i) for i in ids)
        pad = self.tokenizer.pad_token_id
        # Left padding: every row's next token lands in the same column.
        input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=self.device)
        attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=self.device)
        names = [a or BASE for a in adapters]
        kwargs = dict(input_ids=input_ids, attention_mask=attention, pad_token_id=pad,
                      eos_token_id=self.tokenizer.eos_token_id, **settings.kwargs())
        if any(n != BASE for n in names):
            kwargs["adapter_names"] = names
        elif hasattr(self.model, "disable_adapter"):
            kwargs["adapter_names"] = names  # a PeftModel with adapters: route every row to the base

        streamer = _RowStreamer(rows)
        errors: list[BaseException] = []

        def work():
            try:
                with self._lock, torch.inference_mode():
                    torch.manual_seed(settings.seed)
                    self.model.generate(**kwargs, streamer=streamer)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
                streamer.end()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        tokens: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        texts = [""] * rows
        eos = self.tokenizer.eos_token_id
        while True:
            step = streamer.queue.get()
            if step is None:
                break
            for r, tok in enumerate(step):
                if done[r]:
                    continue
                if tok == eos:
                    done[r] = True
                    continue
                tokens[r].append(tok)
            texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
            yield texts, list(done)
        # generate() returns right after the streamer's end; wait for it, or a process that exits now
        # kills a thread still inside torch ("terminate called without an active exception").
        worker.join()
        if errors:
            raise errors[0]

    def stream_pair(self, baseline: list[dict], tuned: list[dict], adapter: str,
                    settings: GenerationSettings | None = None,
                    finished: list[bool] | None = None, one_row: bool = False) -> Iterator[tuple[str, str]]:
        """The SFT baseline (adapter off) and the DPO model (adapter on), answering in one batch.

        one_row: each answer in a batch of its own, one after the other (the reference answer: in an fp32 engine
        it is, token for token, what the merged export gives; a batch pads rows and may round differently).
        """
        if not one_row:
            for texts in self.stream([baseline, tuned], [None, adapter], settings, finished):
                yield texts[0], texts[1]
            return
        ends: list[bool] = []
        base_text = ""
        for rows in (([baseline], [None]), ([tuned], [adapter])):
            done: list[bool] = []
            for texts in self.stream(*rows, settings, done):
                yield (texts[0], "") if not ends else (base_text, texts[0])
                if not ends:
                    base_text = texts[0]
            ends.extend(done or [True])
        if finished is not None:
            finished[:] = ends

    @property
    def precision(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def answer(self, messages: list[dict], adapter: str | None = None,
               settings: GenerationSettings | None = None) -> str:
        text = ""
        for texts in self.stream([messages], [adapter], settings):
            text = texts[0]
        return text


# The live engines by id, for `_generate_on_gpu`, which is handed the id rather than the engine (see below).
_engines: "weakref.WeakValueDictionary[int, ChatEngine]" = weakref.WeakValueDictionary()
_rebuilt: dict[int, ChatEngine] = {}  # in a ZeroGPU worker forked before its engine existed: the copy it loaded


@zerogpu.gpu()
def _generate_on_gpu(engine_id: int, model_spec: str, dtype, adapter_dirs: dict[str, str],
                     conversations: list[list[dict]], adapters: list[str | None],
                     settings: GenerationSettings) -> Iterator[tuple[list[str], list[bool]]]:
    """One batched generation, on the GPU that ZeroGPU lends for this call; a plain call everywhere else.

    On ZeroGPU this runs in a worker process forked from the server, and its arguments arrive pickled: an
    engine (its model, its lock) cannot travel, so the worker finds it by id in its copy of the server's
    memory. A worker kept from an earlier call was forked before a newer engine or adapter existed: it loads
    the engine or attaches the adapter from disk.
    """
    engine = _engines.get(engine_id) or _rebuilt.get(engine_id)
    if engine is None:
        _rebuilt.clear()
        engine = _rebuilt[engine_id] = ChatEngine(model_spec, dtype=dtype)
    for name, path in adapter_dirs.items():
        engine.attach(path, name)
    yield from engine._stream_here(conversations, adapters, settings)
