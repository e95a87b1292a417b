"""studio.access through a real Gradio server: refused without credentials, allowed with them."""

# No `from __future__ import annotations`: Gradio reads the gr.Request annotation at registration.
import time
from types import SimpleNamespace

import httpx
import pytest

from studio.access import (
    access_mode, auth_from_env, check_access_settings, require_reader, require_user, signed_in_user,
)
from studio.errors import AccessError, ConfigError

ACCESS_ENV = ("STUDIO_PASSWORD", "STUDIO_USER", "STUDIO_PRIVATE", "STUDIO_HF_USERS", "OAUTH_CLIENT_ID",
              "SPACE_AUTHOR_NAME")


@pytest.fixture
def env(monkeypatch):
    for key in ACCESS_ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def guarded_app():
    """One action that needs sign-in and one read that is open unless STUDIO_PRIVATE=1, as the app wires them."""
    import gradio as gr

    def train(name: str, request: gr.Request) -> str:
        try:
            user = require_user(request, "start training")
        except AccessError as e:
            raise gr.Error(str(e)) from None
        return f"training {name} for {user}"

    def runs(request: gr.Request) -> str:
        try:
            require_reader(request, "read runs")
        except AccessError as e:
            raise gr.Error(str(e)) from None
        return "run-1"

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()
        gr.Button("train").click(train, box, out, api_name="train")
        gr.Button("runs").click(runs, None, out, api_name="runs")
    return demo


def launch(demo, **kwargs) -> str:
    from helpers import free_port

    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, **kwargs)
    return url


# --- the password --------------------------------------------------------------------------------


def test_no_password_means_no_auth(env):
    assert auth_from_env() is None and access_mode() == "open"
    assert require_user(None, "train") is None  # open mode: nothing to check (local use)


def test_the_password_check_compares_user_and_password(env):
    env.setenv("STUDIO_PASSWORD", "s3cret")
    check = auth_from_env()
    assert check("studio", "s3cret") and not check("studio", "wrong") and not check("admin", "s3cret")
    assert not check("studio", "") and not check("", "s3cret") and not check(None, None)
    env.setenv("STUDIO_USER", "ops")
    assert auth_from_env()("ops", "s3cret") and not auth_from_env()("studio", "s3cret")


def test_through_the_api_the_password_is_required(env):
    from gradio_client import Client

    env.setenv("STUDIO_PASSWORD", "s3cret")
    demo = guarded_app()
    url = launch(demo, auth=auth_from_env())
    try:
        # Without credentials Gradio answers 401 before any handler runs: config, the API, the queue.
        assert httpx.get(f"{url}config").status_code == 401
        assert httpx.post(f"{url}gradio_api/call/train", json={"data": ["x"]}).status_code == 401
        assert httpx.post(f"{url}gradio_api/queue/join", json={}).status_code == 401
        with pytest.raises(Exception):
            Client(url, verbose=False)
        with pytest.raises(Exception, match="(?i)login"):
            Client(url, auth=("studio", "wrong"), verbose=False)

        client = Client(url, auth=("studio", "s3cret"), verbose=False)
        assert client.predict("dpo", api_name="/train") == "training dpo for studio"
        assert client.predict(api_name="/runs") == "run-1"
    finally:
        demo.close()


# --- Hugging Face sign-in: the page is open, actions are not ---------------------------------------


def test_with_hf_sign_in_an_anonymous_caller_may_read_but_not_act(env):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    env.setenv("OAUTH_CLIENT_ID", "space-oauth-client")
    env.setenv("SPACE_AUTHOR_NAME", "owner")
    demo = guarded_app()
    url = launch(demo)
    try:
        client = Client(url, verbose=False)
        assert client.predict(api_name="/runs") == "run-1"
        with pytest.raises(AppError, match="Sign in to start training: this app asks for your Hugging Face account"):
            client.predict("dpo", api_name="/train")
        env.setenv("STUDIO_PRIVATE", "1")
        with pytest.raises(AppError, match="Sign in to read runs"):
            client.predict(api_name="/runs")
        # The server still serves after refusals.
        assert httpx.get(f"{url}config").status_code == 200
    finally:
        demo.close()


def request_with_session(username: str | None, expires_in: float = 3600):
    """A gr.Request-shaped object whose Starlette scope holds an HF OAuth session, as Gradio stores it."""
    session = {} if username is None else {"oauth_info": {
        "expires_at": time.time() + expires_in, "userinfo": {"preferred_username": username}}}
    return SimpleNamespace(username=None, request=SimpleNamespace(scope={"session": session}))


def test_hf_sign_in_allows_the_owner_or_the_listed_users_only(env):
    env.setenv("OAUTH_CLIENT_ID", "space-oauth-client")
    env.setenv("SPACE_AUTHOR_NAME", "owner")
    assert access_mode() == "hf"
    assert require_user(request_with_session("owner"), "train") == "owner"
    with pytest.raises(AccessError, match="stranger may not train here: only owner may"):
        require_user(request_with_session("stranger"), "train")
    with pytest.raises(AccessError, match="Sign in to train"):
        require_user(request_with_session("owner", expires_in=-1), "train")  # an expired session is no session
    with pytest.raises(AccessError, match="Sign in to train"):
        require_user(request_with_session(None), "train")
    env.setenv("STUDIO_HF_USERS", "alice, bob")
    assert require_user(request_with_session("bob"), "train") == "bob"
    with pytest.raises(AccessError):
        require_user(request_with_session("owner"), "train")


def test_a_gradio_login_user_is_signed_in(env):
    env.setenv("STUDIO_PASSWORD", "s3cret")
    assert signed_in_user(SimpleNamespace(username="studio", request=None)) == "studio"
    with pytest.raises(AccessError, match="asks for the app's password"):
        require_user(SimpleNamespace(username=None, request=None), "delete runs")


def test_private_without_a_way_to_sign_in_is_refused_at_launch(env):
    env.setenv("STUDIO_PRIVATE", "1")
    with pytest.raises(ConfigError, match="STUDIO_PRIVATE=1 needs a way to sign in"):
        check_access_settings()
    env.setenv("STUDIO_PASSWORD", "s3cret")
    assert check_access_settings() == "password"
