"""Who may do what in the web app: an optional password, or Hugging Face sign-in on a Space.

Three modes, from the environment:
- open (nothing set): anyone who reaches the app may do anything; fine on localhost only.
- password (STUDIO_PASSWORD, user STUDIO_USER, default "studio"): Gradio's own login, passed as
  `demo.launch(auth=auth_from_env())`. Gradio checks it on every route (the page, /config,
  /gradio_api/queue/join, uploads), so without it nothing of the app is served, API included.
- hf (a Space with `hf_oauth: true`, which sets OAUTH_CLIENT_ID): the page stays open for reading
  runs and chatting; training, stopping, deleting, exporting, uploading and reading server paths
  need a signed-in Hugging Face user, by default only the Space's owner (STUDIO_HF_USERS widens it).
  STUDIO_PRIVATE=1 makes reading need sign-in too.

Handlers call `require_user(request, "train")` for actions and `require_reader(request, ...)` for
reads; both raise AccessError, which the app shows like any other refusal. No gradio import here:
the request is read through the attributes gr.Request exposes.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable

from .errors import AccessError, ConfigError

DEFAULT_USER = "studio"
USER_KEY = "studio_user"  # where the guard leaves the signed-in user in a request's state
_TRUE = {"1", "true", "yes", "on"}


def password() -> str | None:
    return os.environ.get("STUDIO_PASSWORD") or None


def hf_sign_in() -> bool:
    """True on a Space with Hugging Face OAuth on (`hf_oauth: true` in the README's front matter)."""
    return bool(os.environ.get("OAUTH_CLIENT_ID"))


def access_mode() -> str:
    """'password', 'hf' or 'open'; a password wins when both are configured."""
    if password():
        return "password"
    return "hf" if hf_sign_in() else "open"


def is_private() -> bool:
    """STUDIO_PRIVATE=1: reading runs and chatting need sign-in as well."""
    return os.environ.get("STUDIO_PRIVATE", "").strip().lower() in _TRUE


def hf_allowed_users() -> list[str]:
    """Hugging Face users who may act: STUDIO_HF_USERS (comma-separated), else the Space's owner."""
    listed = [u.strip() for u in os.environ.get("STUDIO_HF_USERS", "").split(",") if u.strip()]
    if listed:
        return listed
    owner = os.environ.get("SPACE_AUTHOR_NAME", "").strip()
    return [owner] if owner else []


def check_access_settings() -> str:
    """The mode, after refusing settings that would leave an app unprotected by mistake (call at launch)."""
    mode = access_mode()
    if is_private() and mode == "open":
        raise ConfigError("STUDIO_PRIVATE=1 needs a way to sign in: set STUDIO_PASSWORD, or run on a Space "
                          "with hf_oauth: true.")
    if mode == "password" and not (os.environ.get("STUDIO_USER", DEFAULT_USER) or "").strip():
        raise ConfigError("STUDIO_USER is set but empty; leave it unset for the user name 'studio'.")
    return mode


def auth_from_env() -> Callable[[str, str], bool] | None:
    """Gradio's `auth` for launch(): a check of STUDIO_USER / STUDIO_PASSWORD, or None when no password is set."""
    secret = password()
    if secret is None:
        return None
    user = os.environ.get("STUDIO_USER", DEFAULT_USER).strip() or DEFAULT_USER
    expected_user, expected_password = user.encode(), secret.encode()

    def check(username: str, given: str) -> bool:
        # Both comparisons always run, in constant time, so timing tells nothing about which part was wrong.
        same_user = hmac.compare_digest((username or "").encode(), expected_user)
        same_password = hmac.compare_digest((given or "").encode(), expected_password)
        return same_user and same_password

    return check


def signed_in_user(request) -> str | None:
    """The user behind a gr.Request: Gradio's login (request.username) or a valid HF OAuth session."""
    if request is None:
        return None
    username = getattr(request, "username", None)
    if username:
        return str(username)
    try:  # set by the web app's guard for every request it lets through
        state = getattr(request, "state", None)
        guarded = getattr(state, USER_KEY, None) if state is not None else None
    except (AttributeError, KeyError):
        guarded = None
    if guarded:
        return str(guarded)
    return user_from_session(_session(request))


def require_user(request, action: str) -> str | None:
    """The user allowed to `action` (e.g. "start training"); AccessError when sign-in is configured and missing.

    In open mode nothing is checked and None is returned.
    """
    mode = access_mode()
    if mode == "open":
        return None
    user = signed_in_user(request)
    if may(ACT, user):
        return user
    if not user:
        how = "the app's password" if mode == "password" else "your Hugging Face account (Sign in button)"
        raise AccessError(f"Sign in to {action}: this app asks for {how} first.")
    raise AccessError(f"{user} may not {action} here: only {', '.join(hf_allowed_users())} may "
                      "(the Space's owner, or STUDIO_HF_USERS).")


def require_reader(request, action: str) -> str | None:
    """Like require_user, but only when STUDIO_PRIVATE=1: reading runs and chatting are open otherwise."""
    user = signed_in_user(request)
    if may(READ, user):
        return user
    return require_user(request, action)


# --- one rule per kind of action: the web app's guard (studio/ui/guard.py) asks it for every request ---------

READ, ACT, LABEL, DOWNLOAD = "read", "act", "label", "download"
KINDS = (READ, ACT, LABEL, DOWNLOAD)
_WHAT = {READ: "read this studio", ACT: "train, stop, delete, export or upload here",
         LABEL: "label pools here", DOWNLOAD: "download exported models here"}


def invited_labellers() -> list[str]:
    """Hugging Face users invited to label pools (STUDIO_LABELLERS, comma-separated), besides those who may act."""
    return [u.strip() for u in os.environ.get("STUDIO_LABELLERS", "").split(",") if u.strip()]


def may(kind: str, user: str | None) -> bool:
    """Whether `user` (None: nobody signed in) may do `kind` in the current mode.

    open: anyone may do anything (localhost). password: whoever passed the login may do anything, nobody
    else anything. hf: reading is open unless STUDIO_PRIVATE=1; acting and downloading need a listed user
    (the owner or STUDIO_HF_USERS); labelling needs a listed or an invited user (STUDIO_LABELLERS); a
    private studio serves its pages to listed and invited users only.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind of action {kind!r}")
    mode = access_mode()
    if mode == "open":
        return True
    if mode == "password":
        return user is not None
    if kind == READ and not is_private():
        return True
    if not user:
        return False
    actors = hf_allowed_users()
    acts = not actors or user in actors  # no owner known (not on a Space): any signed-in user, as before
    if kind in (ACT, DOWNLOAD):
        return acts
    return acts or user in invited_labellers()


def refusal(kind: str, user: str | None) -> str:
    """The message for a refused `kind`: sign in first, or who may."""
    mode = access_mode()
    if not user:
        how = "the app's password" if mode == "password" else "your Hugging Face account (Sign in button)"
        return f"Sign in to {_WHAT[kind]}: this app asks for {how} first."
    who = ", ".join(hf_allowed_users()) or "signed-in users"
    if kind in (READ, LABEL) and invited_labellers():
        who += " and the invited labellers"
    return f"{user} may not {_WHAT[kind]}: only {who} may (the Space's owner, STUDIO_HF_USERS, STUDIO_LABELLERS)."


def check(kind: str, user: str | None) -> str | None:
    """`user` when they may do `kind`; AccessError with refusal() otherwise."""
    if not may(kind, user):
        raise AccessError(refusal(kind, user))
    return user


def user_from_session(session: dict | None) -> str | None:
    """The Hugging Face user of a (decoded) Gradio OAuth session, or None when absent or expired."""
    info = (session or {}).get("oauth_info") if isinstance(session, dict) else None
    if not isinstance(info, dict):
        return None
    expires = info.get("expires_at")
    if isinstance(expires, (int, float)) and expires < time.time():
        return None
    userinfo = info.get("userinfo") or {}
    name = userinfo.get("preferred_username") if isinstance(userinfo, dict) else None
    return str(name) if name else None


def labeller_name(request, typed: str | None) -> str | None:
    """The name a decision is recorded under: the signed-in user whenever there is a sign-in, never a typed name.

    Only in open mode (localhost, nobody signs in) is the typed name used.
    """
    if access_mode() == "open":
        return typed
    return signed_in_user(request)


def _session(request) -> dict:
    # gr.Request wraps the Starlette request as .request; the session lives in its scope when
    # SessionMiddleware is installed (Gradio adds it for OAuth). A queued request rebuilt from
    # its kwargs may carry .session itself. Touching Starlette's .session without the middleware
    # asserts, hence the scope lookup.
    underlying = getattr(request, "request", None) or request
    scope = getattr(underlying, "scope", None)
    if isinstance(scope, dict):
        session = scope.get("session")
    else:
        try:
            session = getattr(underlying, "session", None)
        except (AttributeError, AssertionError):
            session = None
    return session if isinstance(session, dict) else {}
