"""Exports of a real run, each read back by a reader that shares no code with the writer.

One short run on the embedded model is trained and exported once per module (adapter, merged, GGUF f16 and
q8_0); every reload must give the studio's greedy answer on a fixed prompt. llama.cpp itself is not run: no
prebuilt llama.cpp reader installs from PyPI on this Debian 12 (glibc 2.36) machine (see docs/export.md), so
the GGUF is read by transformers' GGUF loader, and its metadata and layout are compared with the embedded
GGUF, which llama.cpp's own converter wrote.
"""

import json
import re
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from studio.cli import main
from studio.errors import AccessError, ModelError
from studio.export import export_run, list_exports
from studio.runs import Run

PROMPT = [{"role": "user", "content": "Tell me one thing about tea."}]
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def exported(finished_run):
    """(run, {format: record}, timings): the session's shared run (LoRA on q, k, v and o; conftest.SHARED_RUN),
    copied into this module's home, and its four exports."""
    run = finished_run
    records, timings, phases = {}, {}, []
    for key, fmt, quant in (("adapter", "adapter", "f16"), ("merged", "merged", "f16"),
                            ("gguf-f16", "gguf", "f16"), ("gguf-q8_0", "gguf", "q8_0")):
        start = time.time()
        records[key] = export_run(run, fmt, quant=quant if fmt == "gguf" else None,
                                  progress=lambda *p: phases.append(p))
        timings[key] = (round(time.time() - start, 1), records[key]["bytes"])
    print("\nexport seconds, bytes:", timings)
    return run, records, phases


@pytest.fixture(scope="module")
def studio_answers(exported):
    """The studio's own greedy answers (ChatEngine, fp32): the base model's and the run's."""
    from studio.chat import ChatEngine, GenerationSettings

    run, _, _ = exported
    engine = ChatEngine("embedded", device="cpu", dtype=torch.float32)
    adapter = engine.attach_run(run)
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS)
    return engine.answer(PROMPT, None, settings), engine.answer(PROMPT, adapter, settings)


def greedy(model, tokenizer) -> tuple[list[int], str]:
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    ids = torch.tensor([list(ids["input_ids"] if hasattr(ids, "keys") else ids)])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    return new, tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.slow
def test_the_adapter_changes_the_answer_so_the_comparisons_below_mean_something(studio_answers):
    base, tuned = studio_answers
    assert tuned and tuned != base


@pytest.mark.slow
def test_adapter_export_loads_with_peft_and_answers_like_the_studio(exported, studio_answers):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.models import embedded_checkpoint

    _, records, _ = exported
    folder = Path(records["adapter"]["path"])
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "export.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    base = AutoModelForCausalLM.from_pretrained(embedded_checkpoint(), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    _, text = greedy(model, AutoTokenizer.from_pretrained(embedded_checkpoint()))
    assert text == studio_answers[1]


@pytest.fixture(scope="module")
def merged_answer(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, records, _ = exported
    folder = Path(records["merged"]["path"])
    # Plain transformers and only this folder: no PEFT, no base model.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return greedy(model, AutoTokenizer.from_pretrained(folder)), model


@pytest.mark.slow
def test_merged_export_loads_with_transformers_alone_and_answers_like_the_studio(exported, merged_answer, studio_answers):
    from safetensors import safe_open

    _, records, _ = exported
    folder = Path(records["merged"]["path"])
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "README.md"} <= names
    assert "adapter_config.json" not in names
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # 16-bit weights, as exported
        assert not any("lora" in k for k in f.keys())
    (_, text), _ = merged_answer
    # fp16 rounding of the merged weights (relative 2^-11) could in principle flip a near-tie; on this prompt it does not.
    assert text == studio_answers[1]


@pytest.mark.slow
def test_gguf_f16_loads_through_transformers_and_answers_like_the_merged_model(exported, merged_answer, studio_answers):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, records, _ = exported
    record = records["gguf-f16"]
    folder = Path(record["path"])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=record["gguf"], dtype=torch.float32).eval()
    # transformers un-permutes Q/K and widens F16 to fp32: the very weights of the fp16 merged export.
    (merged_ids, _), merged_model = merged_answer
    reference = merged_model.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    ids, text = greedy(model, AutoTokenizer.from_pretrained(records["merged"]["path"]))
    assert ids == merged_ids and text == studio_answers[1]


@pytest.fixture(scope="module")
def readers(exported):
    """gguf.GGUFReader of our f16 and q8_0 files and of the embedded GGUF (parsing one takes seconds)."""
    import gguf

    from studio.models import embedded_gguf

    _, records, _ = exported
    read = lambda r: gguf.GGUFReader(Path(r["path"]) / r["gguf"])  # noqa: E731
    return read(records["gguf-f16"]), read(records["gguf-q8_0"]), gguf.GGUFReader(embedded_gguf())


@pytest.mark.slow
def test_gguf_metadata_and_layout_match_the_llama_cpp_written_reference(readers):
    import gguf

    from studio.model_card import EMBEDDED_LICENSE

    ours, _, ref = readers  # the embedded GGUF was written by llama.cpp's convert_hf_to_gguf.py
    value = lambda r, k: r.fields[k].contents()  # noqa: E731
    shared = [k for k in ref.fields if k.startswith(("llama.", "tokenizer.")) or k in ("general.architecture",)]
    for key in shared:
        assert key in ours.fields, key
        assert value(ours, key) == value(ref, key), key
    assert value(ref, "general.license") == EMBEDDED_LICENSE == value(ours, "general.license")
    assert value(ours, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    layout = lambda r: {t.name: list(t.shape) for t in r.tensors}  # noqa: E731
    assert layout(ours) == layout(ref)
    for t in ours.tensors:
        expected = "F32" if len(t.shape) == 1 else "F16"
        assert t.tensor_type.name == expected, t.name


@pytest.mark.slow
def test_gguf_q8_0_is_smaller_and_holds_the_same_weights_within_its_rounding(exported, readers):
    import gguf

    _, records, _ = exported
    f16, q8 = records["gguf-f16"], records["gguf-q8_0"]
    f16_file, q8_file = Path(f16["path"]) / f16["gguf"], Path(q8["path"]) / q8["gguf"]
    assert q8_file.stat().st_size < 0.6 * f16_file.stat().st_size
    a, b, _ = readers
    assert b.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    weights = {t.name: t for t in a.tensors}
    assert {t.name for t in b.tensors} == set(weights)
    for t in b.tensors:
        assert t.tensor_type.name == ("F32" if len(t.shape) == 1 else "Q8_0"), t.name
        exact = gguf.quants.dequantize(weights[t.name].data, weights[t.name].tensor_type)
        approx = gguf.quants.dequantize(t.data, t.tensor_type)
        # Q8_0: 32 weights share one scale, max|w|/127; the rounding error is at most half a step.
        assert abs(exact - approx).max() <= abs(exact).max() / 127 / 2 * 1.01 + 1e-3, t.name
    assert q8["notes"] == f16["notes"]


@pytest.mark.slow
def test_export_progress_counts_every_tensor(exported):
    _, records, phases = exported
    tensor_steps = [p for p in phases if p[0] == "converting tensors"]
    total = records["gguf-f16"]["tensors"]
    assert total == 272 and (total, total) in [(d, t) for _, d, t in tensor_steps]


# --- Ollama -----------------------------------------------------------------------------------

# Ollama's documented Modelfile instructions and PARAMETER names (docs/modelfile.md).
INSTRUCTIONS = {"FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE"}
PARAMETERS = {"mirostat", "mirostat_eta", "mirostat_tau", "num_ctx", "repeat_last_n", "repeat_penalty",
              "temperature", "seed", "stop", "num_predict", "top_k", "top_p", "min_p"}


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs per the documented format: `# comment`, `INSTRUCTION arguments`,
    arguments optionally in \"\"\"...\"\"\" spanning lines. Anything else fails the test."""
    out, lines = [], text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        assert word.upper() in INSTRUCTIONS, f"not a Modelfile instruction: {line!r}"
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body:
                assert i < len(lines), "unterminated \"\"\" string"
                body += "\n" + lines[i]
                i += 1
            body, _, tail = body.partition('"""')
            assert not tail.strip(), f"text after closing \"\"\": {tail!r}"
            rest = body
        out.append((word.upper(), rest))
    return out


def render_go(template: str, values: dict) -> str:
    """The few text/template actions the Modelfile uses: if/else if/else/end, range, eq, and .Field."""
    parts = re.split(r"({{-?\s*.*?\s*-?}})", template, flags=re.S)

    def parse(i, stop):
        nodes = []
        while i < len(parts):
            p = parts[i]
            if not p.startswith("{{"):
                nodes.append(("text", p))
                i += 1
                continue
            action = p.strip("{}- \n")
            if action in stop or action.startswith("else"):
                return nodes, i
            if action.startswith(("if ", "range ")):
                kind, cond = action.split(" ", 1)
                branches = []
                body, i = parse(i + 1, {"end"})
                branches.append((cond, body))
                while parts[i].strip("{}- \n").startswith("else"):
                    tail = parts[i].strip("{}- \n")[4:].strip()
                    body, i = parse(i + 1, {"end"})
                    branches.append((tail.removeprefix("if ").strip() or "true", body))
                nodes.append((kind, branches))
                i += 1
                continue
            nodes.append(("value", action))
            i += 1
        return nodes, i

    def evaluate(expr, ctx):
        if expr == "true":
            return True
        m = re.fullmatch(r'eq (\.\w+) "(.*)"', expr)
        if m:
            return evaluate(m.group(1), ctx) == m.group(2)
        assert expr.startswith("."), expr
        return ctx[expr[1:]]

    def run(nodes, ctx):
        out = ""
        for kind, arg in nodes:
            if kind == "text":
                out += arg
            elif kind == "value":
                out += str(evaluate(arg, ctx))
            elif kind == "if":
                out += next((run(body, ctx) for cond, body in arg if evaluate(cond, ctx)), "")
            else:
                out += "".join(run(arg[0][1], item) for item in evaluate(arg[0][0], ctx))
        return out

    return run(parse(0, set())[0], values)


def ollama_prompt(template: str, default_system: str | None, messages: list[dict]) -> str:
    # As Ollama's chat handler does: SYSTEM is prepended when the conversation has no system message, and the
    # template sees .System (the system messages joined) and .Messages (all messages, system ones included).
    if default_system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": default_system}, *messages]
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return render_go(template, {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]})


@pytest.mark.slow
def test_modelfile_follows_ollama_syntax_and_renders_the_chat_template(exported):
    from transformers import AutoTokenizer

    _, records, _ = exported
    record = records["gguf-q8_0"]
    folder = Path(record["path"])
    pairs = parse_modelfile((folder / "Modelfile").read_text())
    kinds = [k for k, _ in pairs]
    assert kinds.count("FROM") == 1 and kinds.count("TEMPLATE") == 1
    assert dict(pairs)["FROM"] == f"./{record['gguf']}" and (folder / record["gguf"]).is_file()
    tokenizer = AutoTokenizer.from_pretrained(records["merged"]["path"])
    stops = []
    for kind, arg in pairs:
        if kind == "PARAMETER":
            name, value = arg.split(" ", 1)
            assert name in PARAMETERS, name
            if name == "stop":
                assert value.startswith('"') and value.endswith('"')
                stops.append(value[1:-1])
    assert tokenizer.eos_token in stops and all(s in tokenizer.get_vocab() for s in stops)
    template, system = dict(pairs)["TEMPLATE"], dict(pairs).get("SYSTEM")
    for messages in (PROMPT,
                     [{"role": "system", "content": "Be brief."}, *PROMPT],
                     [*PROMPT, {"role": "assistant", "content": "It is hot."}, {"role": "user", "content": "And coffee?"}]):
        jinja = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert ollama_prompt(template, system, messages) == jinja


# --- refusals ---------------------------------------------------------------------------------


def test_an_unsupported_family_is_refused_by_name_and_nothing_is_written(module_home, tmp_path):
    base = tmp_path / "tiny-qwen"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}))
    run = Run(module_home / "runs" / "fake-qwen").create()
    run.write_status(state="done")
    (run.path / "config.yaml").write_text(yaml.safe_dump({"model": str(base), "method": "lora"}))
    run.adapter_dir.mkdir()
    (run.adapter_dir / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="Qwen2ForCausalLM") as e:
        export_run(run, "gguf", out_dir=tmp_path / "out")
    assert "Qwen2ForCausalLM" in str(e.value) and "LlamaForCausalLM" in str(e.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    assert list_exports(run) == []


@pytest.mark.slow
def test_a_stop_leaves_no_export_behind(exported, tmp_path):
    run, _, _ = exported
    before = list_exports(run)
    record = export_run(run, "adapter", out_dir=tmp_path / "stopped", should_stop=lambda: True)
    assert record["state"] == "stopped" and record["path"] is None
    assert not (tmp_path / "stopped").exists() and list(tmp_path.iterdir()) == []
    assert list_exports(run) == before


@pytest.mark.slow
def test_exports_are_listed_for_the_runs_tab(exported):
    run, records, _ = exported
    listed = {(e["format"], e["quant"]): e for e in list_exports(run)}
    for record in records.values():
        entry = listed[(record["format"], record["quant"])]
        assert entry["path"] == record["path"] and entry["bytes"] == record["bytes"] and entry["exists"]
        assert entry["bytes"] == sum(p.stat().st_size for p in Path(record["path"]).iterdir() if p.name != "export.json")


@pytest.mark.slow
def test_cli_export_writes_json_refuses_a_foreign_folder_and_replaces_its_own(exported, tmp_path, capsys):
    run, _, _ = exported
    out = tmp_path / "adapter-out"
    assert main(["export", run.id, "--format", "adapter", "--out", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["path"] == str(out) and (out / "adapter_model.safetensors").is_file()
    assert main(["export", run.id, "--format", "adapter", "--out", str(out)]) == 0  # an earlier export: replaced
    assert "exported adapter" in capsys.readouterr().out
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["export", run.id, "--format", "adapter", "--out", str(foreign)]) == 2
    assert "not an earlier DPO Studio export" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert main(["export", "no-such-run", "--format", "adapter"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["export", run.id, "--format", "onnx"])
    assert e.value.code == 2


# --- hub --------------------------------------------------------------------------------------

TOKEN = "hf_TestTokenThatMustNeverBeWritten123"


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.mark.slow
def test_push_offline_fails_at_once_without_leaking_the_token(exported, module_home, monkeypatch, capsys):
    from studio.hub import push_to_hub

    run, _, _ = exported
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    start = time.time()
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE") as e:
        push_to_hub(run, "someone/smollm2-dpo")
    assert time.time() - start < 2 and TOKEN not in str(e.value)
    assert main(["push", run.id, "--repo", "someone/smollm2-dpo"]) == 2
    err = capsys.readouterr().err
    assert "cannot push" in err.lower() and TOKEN not in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # read at import, maybe while set
    with socket.socket() as s:  # a port nobody listens on: the hub "unreachable"
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")
    with pytest.raises(ModelError, match="cannot be reached"):
        push_to_hub(run, "someone/smollm2-dpo", token=TOKEN)
    assert files_containing(module_home, TOKEN) == []


@pytest.mark.slow
def test_a_hub_error_reaches_the_user_without_the_token(exported, module_home, monkeypatch):
    """A stand-in hub that accepts the token, then refuses the upload and echoes the token back."""
    from studio.hub import push_to_hub

    class Hub(BaseHTTPRequestHandler):
        def _reply(self):
            if self.path.startswith("/api/whoami"):
                code, body = 200, {"name": "tester", "type": "user"}
            else:
                code, body = 403, {"error": f"no write access for {self.headers.get('Authorization')}"}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_HEAD = _reply

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    original, _, _ = exported
    run = Run(Path(shutil.copytree(original.path, original.path.with_name(original.id + "-push"))))
    (run.path / "exports.json").unlink()  # no earlier export: the push writes one first
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    try:
        with pytest.raises((ModelError, AccessError)) as e:
            push_to_hub(run, "someone/smollm2-dpo", what="adapter")
    finally:
        server.shutdown()
    assert "403" in str(e.value) and "***" in str(e.value) and TOKEN not in str(e.value)
    assert (module_home / "exports" / run.id / "adapter" / "adapter_model.safetensors").is_file()
    assert files_containing(module_home, TOKEN) == []


@pytest.mark.slow
def test_model_card_front_matter_comes_from_the_run(exported, tmp_path):
    from studio.model_card import model_card

    run, _, _ = exported
    copy = Run(Path(shutil.copytree(run.path, tmp_path / run.id)))
    raw = copy.read_config_raw()
    copy_cfg = {**raw, "data": "trl-lib/ultrafeedback_binarized"}
    (copy.path / "config.yaml").write_text(yaml.safe_dump(copy_cfg))
    copy.write_json("eval.json", {"pairs": 3, "baseline_accuracy": 0.3333, "tuned_accuracy": 1.0, "reward_accuracy": 1.0,
                                  "mean_margin": 0.52, "win_rate_vs_baseline": 0.75})
    card = model_card(copy, "merged")
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and front["library_name"] == "transformers"
    assert {"dpo", "trl"} <= set(front["tags"]) and front["license"] == "apache-2.0"
    assert front["datasets"] == ["trl-lib/ultrafeedback_binarized"]
    assert "| beta | 0.1 |" in card and "preference accuracy, DPO: 1.000" in card and "win rate vs baseline: 0.750" in card
    adapter_card = yaml.safe_load(model_card(run, "adapter").split("---")[1])
    assert adapter_card["library_name"] == "peft" and "datasets" not in adapter_card  # a local file is no hub dataset


# --- issue 23: names, metadata, the Modelfile's settings, refusals, the reference answer -------------


@pytest.mark.slow
def test_gguf_is_named_base_objective_run_quant_with_matching_metadata(exported, readers):
    from studio.model_card import EMBEDDED_LICENSE

    run, records, _ = exported
    ours, q8, _ = readers
    assert records["gguf-f16"]["gguf"] == f"SmolLM2-135M-Instruct-dpo-{run.id}-f16.gguf"
    assert records["gguf-q8_0"]["gguf"] == f"SmolLM2-135M-Instruct-dpo-{run.id}-q8_0.gguf"
    value = lambda r, k: r.fields[k].contents()  # noqa: E731
    for reader in (ours, q8):
        assert value(reader, "general.name") == f"SmolLM2-135M-Instruct-dpo-{run.id}"
        assert value(reader, "general.basename") == "SmolLM2-135M-Instruct"
        assert value(reader, "general.finetune") == "dpo"
        assert value(reader, "general.base_model.count") == 1
        assert value(reader, "general.base_model.0.name") == "SmolLM2-135M-Instruct"
        assert value(reader, "general.base_model.0.organization") == "HuggingFaceTB"
        assert value(reader, "general.base_model.0.repo_url") == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"
        assert value(reader, "general.license") == EMBEDDED_LICENSE


@pytest.mark.slow
def test_modelfile_carries_the_chats_greedy_settings_the_context_and_the_licence(exported):
    from studio.generation import DEFAULTS
    from studio.model_card import EMBEDDED_LICENSE

    CHAT_DEFAULTS = DEFAULTS["chat_tab"]

    _, records, _ = exported
    pairs = parse_modelfile((Path(records["gguf-f16"]["path"]) / "Modelfile").read_text())
    params = dict(arg.split(" ", 1) for kind, arg in pairs if kind == "PARAMETER" and not arg.startswith("stop "))
    assert float(params["temperature"]) == 0 == CHAT_DEFAULTS.temperature  # greedy, as the Chat tab starts
    assert float(params["repeat_penalty"]) == CHAT_DEFAULTS.repetition_penalty and params["repeat_last_n"] == "-1"
    assert int(params["num_predict"]) == CHAT_DEFAULTS.max_new_tokens
    assert int(params["num_ctx"]) == 8192  # SmolLM2-135M's max_position_embeddings
    assert dict(pairs)["LICENSE"] == EMBEDDED_LICENSE


@pytest.mark.slow
def test_out_holding_another_formats_export_is_refused_and_kept(exported, tmp_path, capsys):
    run, _, _ = exported
    out = tmp_path / "adapter-here"
    assert main(["export", run.id, "--format", "adapter", "--out", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(["export", run.id, "--format", "merged", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"holds the adapter export of run {run.id}" in err, err
    assert "this export is merged" in err and str(out) in err
    assert sorted(p.name for p in out.iterdir()) == before  # the adapter export is still there, untouched


@pytest.mark.slow
def test_quant_with_a_format_other_than_gguf_is_refused_by_name(exported, tmp_path, capsys):
    run, _, _ = exported
    assert main(["export", run.id, "--format", "merged", "--quant", "q8_0", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "--quant q8_0 applies to the gguf format only" in err and not (tmp_path / "m").exists()


@pytest.mark.slow
def test_the_reference_answer_is_the_merged_exports_greedy_answer_token_for_token(exported):
    """The Chat tab's *Reference answer* (an fp32 engine, one answer at a time, the chat's own settings) against the
    merged fp16 export loaded by plain transformers: the same tokens, at the chat's default length."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.chat import ChatEngine, GenerationSettings
    from studio.generation import DEFAULTS

    CHAT_DEFAULTS = DEFAULTS["chat_tab"]

    run, records, _ = exported
    settings = GenerationSettings(max_new_tokens=60, repetition_penalty=CHAT_DEFAULTS.repetition_penalty)
    engine = ChatEngine("embedded", device="cpu", dtype=torch.float32)
    adapter = engine.attach_run(run)
    finished: list[bool] = []
    base_text = tuned_text = ""
    for base_text, tuned_text in engine.stream_pair(PROMPT, PROMPT, adapter, settings, finished, one_row=True):
        pass
    folder = Path(records["merged"]["path"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([engine.prompt_ids(PROMPT)])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **settings.kwargs(),
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    merged_ids = [t for t in out[0, ids.shape[1]:].tolist() if t != tokenizer.eos_token_id]
    assert tokenizer.decode(merged_ids, skip_special_tokens=True) == tuned_text
    assert len(merged_ids) > 20 and base_text and base_text != tuned_text  # a real answer, and the adapter shows
