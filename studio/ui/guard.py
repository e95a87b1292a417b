"""The web app's one gate: every HTTP request, Gradio's own routes included, is checked here before Gradio sees it.

Installed as an ASGI middleware through `launch(app_kwargs={"middleware": [...]})` (see guard_middleware()), inside
Gradio's session middleware, so an OAuth session is already decoded when the request arrives here. The rule for
each kind of action lives in studio.access.may(); this module only says which kind a request is:

- an event (queue/join, call, run, api): the kind of the function it names, from EVENT_KINDS (by api_name; any
  function not listed, such as a timer tick or a refresh, reads);
- Gradio's file route (`/gradio_api/file=...`): download for anything under the exports folder, else read;
- an upload: act;
- everything else: read, except the few routes that signing in needs (LOGIN_ROUTES).

A client that may not read gets a small sign-in page at `/` (no Gradio config, no API description, no ids, no
paths) and 401 everywhere else. Wrong passwords are throttled per client address (LoginThrottle).
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, JSONResponse

from studio.access import ACT, DOWNLOAD, LABEL, READ, USER_KEY, access_mode, may, refusal, user_from_session
from studio.export import exports_dir

API = "/gradio_api"
EVENT_KINDS = {
    **{name: ACT for name in (
        "start", "stop", "resume_run", "export_run", "push_run", "delete_run",
        "winrate", "stop_winrate", "generate_pool", "stop_generate", "judge_pool", "stop_judge",
        "train_next_round", "stop_next_round", "start_sweep", "stop_sweep", "evaluate_runs", "probe_grid",
        "check_upload", "check_hub", "check_mapping", "check_pool_file", "check_train_data",
        # A rubric labels the whole pool and the preference file is what the next round trains on: the owner's.
        "label_rubric", "label_export",
    )},
    # A cleaned copy becomes training data; suspects load a model on the job slot; the cache is the owner's.
    **{name: ACT for name in ("write_cleaned_copy", "find_suspects", "clear_refcache", "thumbs_export")},
    **{f"label_{choice}": LABEL for choice in ("a", "b", "tie", "both_bad", "skip", "undo")},
    **{f"thumbs_{verdict}": LABEL for verdict in ("up", "down", "skip", "undo")},
    "download_adapter": DOWNLOAD,
    # Public endpoints that only read (a private studio still asks for sign-in to reach them). Every public
    # endpoint is named here or above: tests/test_guard.py fails on one that is not.
    **{name: READ for name in (
        "runs", "poll", "chat", "chat_runs", "clear_chat", "compare_runs", "compare_selected", "estimate_sweep",
        "export_downloads", "label_view", "load_compare", "load_example", "load_preset", "poll_generate",
        "poll_judge", "poll_next_round", "poll_sweep", "poll_winrate", "read_winrate", "refresh_compare",
        "refresh_winrate", "resume_state", "run_exports", "run_lineage", "thumbs_view",
    )},
}
# Reached before signing in: the login form's POST, Hugging Face's OAuth round trip, and the check launch() makes.
LOGIN_ROUTES = {"/login", "/login/", "/logout", "/login/huggingface", "/login/callback", f"{API}/startup-events",
                "/favicon.ico"}
EVENT_ROUTES = ("queue/join", "call/v2/", "call/", "run/", "api/")
MAX_EVENT_BODY = 64 * 2**20  # chat text and settings; files travel through /upload


def guard_middleware() -> Middleware:
    return Middleware(Guard)


class Guard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or access_mode() == "open":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if scope["type"] == "http" and method == "POST" and path.rstrip("/") == "/login":
            return await THROTTLE.guard(scope, receive, send, self.app)
        if path in LOGIN_ROUTES:
            return await self.app(scope, receive, send)
        user = client_user(scope)
        # Handlers learn who is signed in from here (access.signed_in_user): Gradio's queue keeps a request's
        # state, not its session.
        scope.setdefault("state", {})[USER_KEY] = user
        if not may(READ, user):
            if scope["type"] == "http" and path in ("", "/") and method in ("GET", "HEAD"):
                return await sign_in_page(user)(scope, receive, send)
            return await refuse(READ, user, scope, receive, send)
        kind, receive = await request_kind(scope, receive)
        if kind != READ and not may(kind, user):
            return await refuse(kind, user, scope, receive, send)
        return await self.app(scope, receive, send)


def client_user(scope) -> str | None:
    """Who sent the request: the Gradio login's token cookie (password mode) or the OAuth session (hf mode)."""
    mode = access_mode()
    if mode == "hf":
        return user_from_session(scope.get("session"))
    app = scope.get("app")
    tokens = getattr(app, "tokens", None)
    if mode != "password" or not isinstance(tokens, dict):
        return None
    cookies = HTTPConnection(scope).cookies
    cookie_id = getattr(app, "cookie_id", "")
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return tokens.get(token) if token else None


async def request_kind(scope, receive):
    """(kind, receive): the kind of action the request is; the body, when read to find out, is replayed."""
    path = scope.get("path", "")
    if not path.startswith(API + "/"):
        return READ, receive
    route = path[len(API) + 1:]
    if route.startswith("file=") or route.startswith("file/"):
        return file_kind(unquote(route[5:])), receive
    if route.rstrip("/") == "upload":
        return ACT, receive
    if scope.get("method") != "POST" or not route.startswith(EVENT_ROUTES):
        return READ, receive
    body, receive = await read_body(receive)
    return event_kind(scope, route, body), receive


def file_kind(raw: str) -> str:
    try:
        target = Path(raw).resolve()
        inside = target.is_relative_to(exports_dir().resolve())
    except (OSError, RuntimeError, ValueError):
        return DOWNLOAD  # a path that cannot even be resolved is refused as strictly as an export
    return DOWNLOAD if inside else READ


def event_kind(scope, route: str, body: bytes) -> str:
    """The kind of the function an event names, found as Gradio finds it: queue/join by the body's fn_index;
    run/ and api/ by the body's fn_index when given, else the api_name in the path; call/ by the api_name only.
    A function this cannot find (or an fn_index that is not a plain number) counts as an action."""
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        payload = {}
    fn_index = payload.get("fn_index") if isinstance(payload, dict) else None
    api_name = None if route.startswith("queue/join") else route.rstrip("/").rsplit("/", 1)[-1]
    if route.startswith("call/"):
        fn_index = None  # Gradio drops a body's fn_index on these routes and goes by the name
    app = scope.get("app")
    blocks = app.get_blocks() if hasattr(app, "get_blocks") else None
    fns = getattr(blocks, "fns", {}) or {}
    fn = None
    if isinstance(fn_index, int) and not isinstance(fn_index, bool):
        fn = fns.get(fn_index)
    elif fn_index is None and api_name:
        fn = next((f for f in fns.values() if f.api_name == api_name), None)
    if fn is None:
        return ACT
    return EVENT_KINDS.get(fn.api_name, READ)


async def read_body(receive):
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_EVENT_BODY or not message.get("more_body"):
            break
    body = b"".join(chunks)
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def refuse(kind: str, user: str | None, scope, receive, send):
    message = refusal(kind, user)
    if scope["type"] == "websocket":
        return await send({"type": "websocket.close", "code": 1008})
    status = 401 if user is None else 403
    await JSONResponse({"detail": message, "error": message}, status_code=status)(scope, receive, send)


def sign_in_page(user: str | None) -> HTMLResponse:
    """The whole page a client that may not read gets: how to sign in, and nothing about the studio."""
    if access_mode() == "password":
        body = """<form id="login" aria-describedby="msg">
<label for="u">User</label><input id="u" name="username" autocomplete="username" required>
<label for="p">Password</label><input id="p" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form><p id="msg" role="status"></p>
<script>
document.getElementById('login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const r = await fetch('login', {method: 'POST', body: new URLSearchParams(new FormData(e.target)),
                                  credentials: 'same-origin'});
  if (r.ok) { location.reload(); return; }
  let text = 'Wrong user or password.';
  try { const j = await r.json(); if (typeof j.detail === 'string') text = j.detail; } catch (_) {}
  document.getElementById('msg').textContent = text;
});
</script>"""
    elif user:
        body = (f"<p>Signed in as {html.escape(user)}, who may not read this studio.</p>"
                '<p><a href="logout">Sign out</a></p>')
    else:
        body = '<p>This studio is private.</p><p><a href="login/huggingface">Sign in with Hugging Face</a></p>'
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>DPO Studio: sign in</title>
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem;color:#111;background:#fff}}
label,input,button{{display:block;width:100%;margin:.3rem 0;font-size:1rem}}input{{padding:.4rem;border:1px solid #555}}
button{{padding:.5rem;background:#3730a3;color:#fff;border:0}}a{{color:#3730a3}}
:focus-visible{{outline:3px solid #b45309;outline-offset:2px}}</style></head>
<body><main><h1>DPO Studio</h1>{body}</main></body></html>"""
    return HTMLResponse(page, status_code=200 if access_mode() == "password" else 401,
                        headers={"Cache-Control": "no-store"})


# --- wrong passwords ---------------------------------------------------------------------------------


@dataclass
class _Client:
    failures: int = 0
    locked_until: float = 0.0
    busy: bool = False
    seen: float = field(default_factory=time.monotonic)


class LoginThrottle:
    """Per client address: each wrong password waits longer before its answer (base * 2^(n-1), at most `cap` s),
    one attempt at a time, and after `limit` wrong ones in a row every attempt, right or wrong, is refused for
    `lock_s` seconds. A right password resets the count."""

    def __init__(self, base: float = 0.5, cap: float = 8.0, limit: int = 10, lock_s: float = 900.0):
        self.base, self.cap, self.limit, self.lock_s = base, cap, limit, lock_s
        self.clients: dict[str, _Client] = {}

    def delay(self, failures: int) -> float:
        return 0.0 if failures <= 0 else min(self.cap, self.base * 2 ** (failures - 1))

    def _client(self, key: str) -> _Client:
        now = time.monotonic()
        if len(self.clients) > 10_000:  # forget quiet, unlocked addresses so the table stays small
            self.clients = {k: c for k, c in self.clients.items() if c.locked_until > now or now - c.seen < 3600}
        client = self.clients.setdefault(key, _Client())
        client.seen = now
        return client

    async def guard(self, scope, receive, send, app):
        key = (scope.get("client") or ("unknown",))[0]
        client = self._client(key)
        now = time.monotonic()
        if client.locked_until > now:
            wait = int(client.locked_until - now) + 1
            return await self._refuse(f"Too many wrong passwords from this address: try again in {wait} s.",
                                      scope, receive, send)
        if client.busy:
            return await self._refuse("One sign-in attempt at a time, please.", scope, receive, send)
        client.busy = True
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await asyncio.sleep(self.delay(client.failures))
            await app(scope, receive, watch)
        finally:
            client.busy = False
            if status.get("code") == 200:
                client.failures = 0
            elif status.get("code") in (400, 401, 403):
                client.failures += 1
                if client.failures >= self.limit:
                    client.failures, client.locked_until = 0, time.monotonic() + self.lock_s

    @staticmethod
    async def _refuse(message, scope, receive, send):
        await JSONResponse({"detail": message, "error": message}, status_code=429)(scope, receive, send)


THROTTLE = LoginThrottle()
