"""Issue 21's probes against the real web app (build_app + launch_options), through raw HTTP and Gradio's file route,
in the four modes: local (open), password, Space (hf sign-in) and Space private.

The Space sign-in is simulated as Gradio's OAuth stores it: a session cookie signed with the key Gradio's
SessionMiddleware uses, holding `oauth_info` for a user. The pool and the export file are written with the
studio's own functions (no model is needed to show who may read them).
"""

import base64
import hashlib
import json
import os
import time
from pathlib import Path

import httpx
import pytest

from helpers import answer_pool, free_port

ACCESS_ENV = ("STUDIO_PASSWORD", "STUDIO_USER", "STUDIO_PRIVATE", "STUDIO_HF_USERS", "OAUTH_CLIENT_ID",
              "SPACE_AUTHOR_NAME", "STUDIO_LABELLERS")
ANSWERS = [("Nine minutes.", "Boiling an egg is a journey that starts with choosing the right pot."),
           ("Lisbon.", "Portugal's capital, a city of seven hills and trams, is Lisbon.")]
READS = ["runs", "poll", "run_exports", "run_lineage", "label_view", "chat_runs", "refresh_compare", "load_compare"]


def owner_app(mp, label: str, export_path: Path, content: bytes):
    """Launch the app with a labelling pool and one owner's export file in place; yields (url, demo, pool, export)
    and closes the app and undoes `mp` after."""
    from studio.export import exports_dir
    from studio.ui import build_app, launch_options

    pool = answer_pool(label, ANSWERS, "Secret question {n}?")
    export = exports_dir() / export_path
    export.parent.mkdir(parents=True, exist_ok=True)
    export.write_bytes(content)
    demo = build_app()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, **launch_options())
    try:
        yield url, demo, pool, export
    finally:
        demo.close()
        mp.undo()


def session_cookie(user: str, expires_in: float = 3600) -> dict:
    """The `session` cookie Gradio's OAuth callback would set for `user` (Starlette's SessionMiddleware format)."""
    import itsdangerous
    from gradio import oauth

    secret = hashlib.sha256(((oauth.OAUTH_CLIENT_SECRET or "") + "-v4").encode()).hexdigest()
    info = {"oauth_info": {"expires_at": time.time() + expires_in, "userinfo": {"preferred_username": user}}}
    signed = itsdangerous.TimestampSigner(secret).sign(base64.b64encode(json.dumps(info).encode())).decode()
    return {"Cookie": f"session={signed}"}


def call(url: str, api: str, data: list, headers: dict | None = None, client=None, timeout: float = 120,
         session: str | None = None):
    """(status, payload) of one event through /gradio_api/call: a refusal at the door is (401/403, message);
    an event that ran is (200, ("complete" | "error", data))."""
    http = client or httpx
    r = http.post(f"{url}gradio_api/call/{api}", json={"data": data, "session_hash": session}, headers=headers or {}, timeout=timeout)
    if r.status_code != 200:
        return r.status_code, r.json().get("detail")
    event = r.json()["event_id"]
    kind, payload = None, None
    with http.stream("GET", f"{url}gradio_api/call/{api}/{event}", headers=headers or {}, timeout=timeout) as s:
        for line in s.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("complete", "error"):
                payload = json.loads(line.split(":", 1)[1])
                break
    return 200, (kind, payload)


@pytest.fixture(scope="module")
def space_app(module_home, style_pairs):
    """The web app as a Space with hf_oauth builds it (a Sign-in button, Gradio's OAuth session middleware)."""
    import gradio.oauth

    mp = pytest.MonkeyPatch()
    for key in ACCESS_ENV:
        mp.delenv(key, raising=False)
    mp.setenv("OAUTH_CLIENT_ID", "space-oauth-client")
    mp.setenv("SPACE_AUTHOR_NAME", "owner")
    mp.setenv("STUDIO_DATA_DIRS", str(style_pairs.parent))
    # Off a Space, Gradio mocks the OAuth routes with the machine's HF login; tests sign in with a cookie instead.
    mp.setattr(gradio.oauth, "_get_mocked_oauth_info", lambda: {"userinfo": {"preferred_username": "nobody"}})

    yield from owner_app(mp, "space", Path("run-x") / "merged" / "model.safetensors", b"weights of the owner")


@pytest.fixture
def space(space_app, monkeypatch):
    for key in ("STUDIO_PRIVATE", "STUDIO_HF_USERS", "STUDIO_LABELLERS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OAUTH_CLIENT_ID", "space-oauth-client")
    return space_app


def file_url(url: str, path: Path) -> str:
    return f"{url}gradio_api/file={path}"


# --- Space, private: nothing for a client that may not read ----------------------------------------------------


def test_a_private_space_serves_nothing_to_an_anonymous_client(space, monkeypatch):
    url, demo, pool, export = space
    monkeypatch.setenv("STUDIO_PRIVATE", "1")
    page = httpx.get(url)
    assert page.status_code == 401 and "Sign in with Hugging Face" in page.text
    for leak in ("gradio_api_info", "named_endpoints", pool.id, str(export.parent.parent), "/start", "label_a"):
        assert leak not in page.text
    for route in ("config", "gradio_api/info", "gradio_api/openapi.json", "gradio_api/runs", "manifest.json",
                  "gradio_api/app_id", "monitoring"):
        assert httpx.get(f"{url}{route}").status_code == 401, route
    for api in READS:
        status, message = call(url, api, [])
        assert status == 401 and "Sign in to read this studio" in message, api
    # Every event, named or not, through the queue.
    for fn_index in demo.fns:
        r = httpx.post(f"{url}gradio_api/queue/join", json={"fn_index": fn_index, "data": [], "session_hash": "x"})
        assert r.status_code == 401, demo.fns[fn_index].api_name
    assert httpx.get(file_url(url, export)).status_code == 401
    assert httpx.get(file_url(url, pool.path / "candidates.jsonl")).status_code == 401
    # A stranger signed in with Hugging Face is not a reader either.
    stranger = session_cookie("stranger")
    assert httpx.get(url, headers=stranger).status_code == 401
    assert call(url, "runs", [], stranger)[0] == 403
    # The owner reads.
    owner = session_cookie("owner")
    assert httpx.get(f"{url}config", headers=owner).status_code == 200
    status, (kind, _) = call(url, "label_view", [pool.id, "", {}], owner)
    assert status == 200 and kind == "complete"


def test_an_expired_or_forged_session_is_no_session(space, monkeypatch):
    url, _, _, _ = space
    monkeypatch.setenv("STUDIO_PRIVATE", "1")
    assert call(url, "runs", [], session_cookie("owner", expires_in=-5))[0] == 401
    forged = session_cookie("owner")["Cookie"][:-3] + "abc"
    assert call(url, "runs", [], {"Cookie": forged})[0] == 401


# --- Space: reading open, acting / labelling / downloading are not ------------------------------------------


def test_on_a_space_anyone_reads_but_only_the_owner_downloads_exports(space):
    url, _, _, export = space
    status, (kind, _) = call(url, "runs", [None, []])
    assert status == 200 and kind == "complete"
    r = httpx.get(file_url(url, export))
    assert r.status_code == 401 and "Sign in to download exported models" in r.json()["detail"]
    assert httpx.get(file_url(url, export), headers=session_cookie("stranger")).status_code == 403
    # Another spelling of the same file is the same file.
    dotted = export.parent / ".." / export.parent.name / export.name
    assert httpx.get(f"{url}gradio_api/file={dotted}").status_code == 401
    r = httpx.get(file_url(url, export), headers=session_cookie("owner"))
    assert r.status_code == 200 and r.content == b"weights of the owner"
    assert call(url, "download_adapter", ["run-x"])[0] == 401
    # Gradio's traffic page (every endpoint's timings and counts) is off, for the owner too.
    for route in ("monitoring", "monitoring/summary"):
        assert httpx.get(f"{url}{route}", headers=session_cookie("owner")).status_code == 403, route


def test_on_a_space_actions_need_the_owner(space):
    url, demo, pool, _ = space
    acts = ["start", "stop", "resume_run", "delete_run", "export_run", "push_run", "generate_pool", "judge_pool",
            "train_next_round", "start_sweep", "winrate", "label_rubric", "label_export", "check_upload"]
    for api in acts:
        status, message = call(url, api, [])
        assert status == 401 and "Sign in to train" in message, api
        assert call(url, api, [], session_cookie("stranger"))[0] == 403, api
    r = httpx.post(f"{url}gradio_api/upload", files={"files": ("x.jsonl", b"{}\n")})
    assert r.status_code == 401
    # The preference file the next round trains on is untouched.
    assert not (pool.path / "preferences.jsonl").exists()


def test_labels_need_an_invited_user_and_carry_the_signed_in_name(space, monkeypatch):
    from studio.label import next_pair
    from studio.pools import get_pool, human

    url, _, pool, _ = space
    pair = next_pair(pool, human("alice"))["pair"]
    status, message = call(url, "label_a", [pool.id, "owner", pair])
    assert status == 401 and "Sign in to label" in message
    assert call(url, "label_a", [pool.id, "owner", pair], session_cookie("alice"))[0] == 403
    monkeypatch.setenv("STUDIO_LABELLERS", "alice")
    alice = session_cookie("alice")
    assert call(url, "label_view", [pool.id, "owner", {}], alice, session="alice-page")[0] == 200  # shows a pair
    status, (kind, _) = call(url, "label_a", [pool.id, "owner"], alice, session="alice-page")
    assert status == 200 and kind == "complete"
    labellers = get_pool(pool.id).labellers()
    assert human("alice") in labellers and human("owner") not in labellers  # the typed name is ignored
    # An invited labeller labels, but does not write the preference file nor act.
    assert call(url, "label_export", [pool.id, "(everyone)"], session_cookie("alice"))[0] == 403
    assert call(url, "label_undo", [pool.id, "owner"], alice, session="alice-page")[0] == 200
    assert get_pool(pool.id).decisions(human("alice")) == {}


# --- ids are names ---------------------------------------------------------------------------------------------


def test_a_pool_id_is_never_a_path(space, tmp_path):
    from studio.pools import create_pool_at

    url, _, _, _ = space
    other = create_pool_at(tmp_path / "other_home" / "pools" / "p1", "generate", models=[], base_model="embedded")
    other.add_candidate([{"role": "user", "content": "Other home's secret?"}],
                        [{"text": "one", "name": "m"}, {"text": "two", "name": "m"}])
    owner = session_cookie("owner")
    from studio.pools import pools_root

    relative = os.path.relpath(other.path, pools_root())  # ../../<tmp>/other_home/pools/p1
    for pool_id in (relative, str(other.path), "p1/../p1", "", ".."):
        status, (kind, data) = call(url, "label_view", [pool_id, "owner", {}], owner)
        assert status == 200 and "Other home's secret" not in json.dumps(data), pool_id
        pair = other.pairs()[0].id
        call(url, "label_a", [pool_id, "owner", pair], owner)
        call(url, "label_export", [pool_id, "(everyone)"], owner)
    assert not (other.path / "labels.jsonl").exists() and not (other.path / "preferences.jsonl").exists()


def test_model_folders_and_init_adapter_from_a_browser(space, tmp_path):
    url, _, _, _ = space
    owner = session_cookie("owner")
    outside = tmp_path / "adapter"
    outside.mkdir()
    (outside / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "secret-field"}))

    def start(**fields):
        r = httpx.post(f"{url}gradio_api/call/v2/start", json=fields, headers=owner, timeout=60)
        assert r.status_code == 200, r.text
        event = r.json()["event_id"]
        with httpx.stream("GET", f"{url}gradio_api/call/start/{event}", headers=owner, timeout=120) as s:
            return "".join(s.iter_text())

    from studio.runs import list_runs

    before = len(list_runs())
    text = start(init_adapter=str(outside))
    assert "init_adapter takes the id of a finished run" in text and "secret-field" not in text
    etc, missing = start(model="/etc"), start(model="/nonexistent")
    for text in (etc, missing):
        assert "No model" in text and "STUDIO_DATA_DIRS" in text
    assert etc.replace("/etc", "X").split("No model")[1][:150] == missing.replace("/nonexistent", "X").split(
        "No model")[1][:150]
    assert len(list_runs()) == before  # nothing was started, no run folder made


# --- password mode --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def password_app(module_home):
    mp = pytest.MonkeyPatch()
    for key in ACCESS_ENV:
        mp.delenv(key, raising=False)
    mp.setenv("STUDIO_PASSWORD", "s3cret")
    from studio.ui import guard

    mp.setattr(guard, "THROTTLE", guard.LoginThrottle(base=0.05, cap=0.4, limit=6, lock_s=3))
    yield from owner_app(mp, "pw", Path("run-y") / "adapter.zip", b"zip of the owner")


def test_the_login_page_gives_nothing_away(password_app, module_home):
    url, demo, pool, export = password_app
    page = httpx.get(url)
    assert page.status_code == 200 and 'type="password"' in page.text
    for leak in ("gradio_api_info", "named_endpoints", "api_name", pool.id, str(module_home), "/start", "site-packages"):
        assert leak not in page.text, leak
    for route in ("config", "gradio_api/info", "gradio_api/openapi.json", "gradio_api/runs", "manifest.json"):
        assert httpx.get(f"{url}{route}").status_code == 401, route
    for fn in demo.fns.values():
        assert call(url, fn.api_name, [])[0] == 401, fn.api_name
    assert httpx.get(file_url(url, export)).status_code == 401


def test_wrong_passwords_are_throttled_then_refused(password_app):
    from studio.ui import guard

    url, _, _, export = password_app
    throttle = guard.THROTTLE
    with httpx.Client() as client:
        times = []
        for _ in range(throttle.limit):
            t0 = time.monotonic()
            r = client.post(f"{url}login", data={"username": "studio", "password": "guess"})
            times.append(time.monotonic() - t0)
            assert r.status_code == 400
        assert times[-1] > times[1] >= throttle.base * 0.9  # a growing delay
        r = client.post(f"{url}login", data={"username": "studio", "password": "s3cret"})
        assert r.status_code == 429 and "Too many wrong passwords" in r.json()["detail"]  # even the right one
        time.sleep(throttle.lock_s + 0.2)
        r = client.post(f"{url}login", data={"username": "studio", "password": "s3cret"})
        assert r.status_code == 200
        assert client.get(file_url(url, export)).content == b"zip of the owner"
        status, (kind, _) = call(url, "runs", [None, []], client=client)
        assert status == 200 and kind == "complete"


def test_parallel_guesses_get_one_at_a_time(password_app):
    import concurrent.futures

    url, _, _, _ = password_app

    def guess(_):
        return httpx.post(f"{url}login", data={"username": "studio", "password": "guess"}).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(guess, range(40)))
    from studio.ui import guard

    assert codes.count(400) <= guard.THROTTLE.limit and codes.count(429) >= 40 - guard.THROTTLE.limit
    guard.THROTTLE.clients.clear()


def test_the_password_check_is_constant_time(monkeypatch):
    import hmac

    from studio.access import auth_from_env

    monkeypatch.setenv("STUDIO_PASSWORD", "s3cret")
    seen = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: seen.append((a, b)) or real(a, b))
    assert not auth_from_env()("nobody", "wrong")
    assert len(seen) == 2  # user and password both compared, whatever was wrong


@pytest.mark.browser
def test_in_a_browser_the_sign_in_page_leads_to_the_app(password_app, open_page):
    from studio.ui import guard

    guard.THROTTLE.clients.clear()
    url, _, _, _ = password_app
    page = open_page(1200, 900)
    page.goto(url)
    page.get_by_label("User").fill("studio")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Incorrect credentials").wait_for()
    page.get_by_label("Password").fill("s3cret")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("tab", name="Train").wait_for(timeout=60_000)  # the app itself, after the reload


def test_every_public_endpoint_has_a_declared_kind(studio_home):
    # A new button's endpoint that nobody classified would count as a read: anyone who may read could then act.
    from studio.ui import build_app
    from studio.ui.guard import EVENT_KINDS

    demo = build_app()
    public = {fn.api_name for fn in demo.fns.values() if fn.api_name and fn.api_visibility == "public"}
    assert public, "the app has no public endpoint?"
    assert sorted(public - set(EVENT_KINDS)) == []
    assert EVENT_KINDS["thumbs_up"] == EVENT_KINDS["label_a"] and EVENT_KINDS["write_cleaned_copy"] != "read"
