"""Fence's answers checked against their documented shape before anything uses them, so a misbehaving Fence is a 502 in words, never a 500.

Fence (or a proxy in front of it) can answer 200 with an HTML maintenance page, JSON of the
wrong shape, or fields of the wrong type. Each parser here takes the decoded JSON (or the
raw body), returns only the fields the workspace uses, typed, and raises FenceAnswerError
otherwise. The error's text names what was wrong in words and never carries the answer
itself: a token answer is full of secrets.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

# Tokens and keys are JWTs of a few kilobytes; anything far larger is not one.
MAX_TOKEN = 64 * 1024
_USERNAME_BAD = re.compile(r"[\x00-\x1f\x7f]")
# Fence key ids are UUIDs (the key's jti); they go into a URL path, so nothing else passes.
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def jwt_claims(token: str | None) -> dict[str, Any]:
    """The claims of a Fence JWT without verifying it: only read for its `exp` and `scope`; Fence decides."""
    if not token or token.count(".") != 2:
        return {}
    payload = token.split(".")[1]
    try:
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        return {}


class FenceAnswerError(ValueError):
    """Fence answered, but not with the documented shape; the message says what was wrong, in words."""


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "nothing"}.get(type(value), "a number")


def decode_json(body: bytes | None, what: str) -> Any:
    """The JSON of a 2xx answer; an HTML page, an empty or a non-JSON body is a FenceAnswerError."""
    if not body:
        raise FenceAnswerError(f"Fence's {what} answer was empty")
    text = body.decode("utf-8", "replace")
    if text.lstrip()[:1] == "<":
        raise FenceAnswerError(f"Fence's {what} answer was a web page, not JSON (a maintenance page or a proxy error?)")
    try:
        return json.loads(text)
    except ValueError:
        raise FenceAnswerError(f"Fence's {what} answer was not JSON") from None


def _token(value: Any, field: str, what: str, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise FenceAnswerError(f"Fence's {what} answer has no usable '{field}' (got {_kind(value)})")
    if len(value) > MAX_TOKEN or any(c.isspace() for c in value):
        raise FenceAnswerError(f"Fence's {what} answer has a '{field}' that is not a token")
    return value


def token_answer(answer: Any) -> dict[str, Any]:
    """The token endpoint's answer (RFC 6749 5.1): access_token required; refresh_token, id_token, scope optional."""
    what = "token"
    if not isinstance(answer, dict):
        raise FenceAnswerError(f"Fence's {what} answer is {_kind(answer)}, not an object")
    out: dict[str, Any] = {
        "access_token": _token(answer.get("access_token"), "access_token", what, True),
        "token_type": answer.get("token_type") if isinstance(answer.get("token_type"), str) and answer.get("token_type") else "Bearer",
    }
    for field in ("refresh_token", "id_token"):
        token = _token(answer.get(field), field, what, False)
        if token is not None:
            out[field] = token
    scope = answer.get("scope")
    if isinstance(scope, str):
        out["scope"] = scope
    elif isinstance(scope, list) and all(isinstance(s, str) for s in scope):
        out["scope"] = " ".join(scope)
    elif scope is not None:
        raise FenceAnswerError(f"Fence's {what} answer has a 'scope' that is {_kind(scope)}")
    expires = answer.get("expires_in")
    if expires is not None:
        if isinstance(expires, bool) or not isinstance(expires, (int, float)):
            raise FenceAnswerError(f"Fence's {what} answer has an 'expires_in' that is {_kind(expires)}")
        out["expires_in"] = expires
    return out


def userinfo_answer(answer: Any, username_claim: str = "username") -> dict[str, Any]:
    """Fence's /user/user: a username, and authz, groups and is_admin of the documented types."""
    what = "user info"
    if not isinstance(answer, dict):
        raise FenceAnswerError(f"Fence's {what} answer is {_kind(answer)}, not an object")
    name = answer.get(username_claim)
    if not isinstance(name, str) or not name.strip():
        raise FenceAnswerError(f"Fence's {what} answer has no '{username_claim}' (got {_kind(name)})")
    if len(name) > 255 or _USERNAME_BAD.search(name):
        raise FenceAnswerError(f"Fence's {what} answer has a '{username_claim}' that is not a user name")
    authz = answer.get("authz")
    if authz is None:
        authz = {}
    if not isinstance(authz, dict):
        raise FenceAnswerError(f"Fence's {what} answer has an 'authz' that is {_kind(authz)}, not an object")
    for resource, perms in authz.items():
        if not isinstance(perms, list) or not all(isinstance(p, dict) for p in perms):
            raise FenceAnswerError(f"Fence's {what} answer has an 'authz' entry that is not a list of permissions")
    groups = answer.get("groups")
    if groups is None:
        groups = []
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise FenceAnswerError(f"Fence's {what} answer has 'groups' that are not a list of names")
    is_admin = answer.get("is_admin", False)
    if not isinstance(is_admin, bool):
        raise FenceAnswerError(f"Fence's {what} answer has an 'is_admin' that is {_kind(is_admin)}, not true or false")
    return {**answer, username_claim: name, "authz": authz, "groups": groups, "is_admin": is_admin}


def api_key_answer(answer: Any) -> dict[str, str]:
    """POST /user/credentials/api/: a key_id fit for a URL path and an api_key."""
    what = "API key"
    if not isinstance(answer, dict):
        raise FenceAnswerError(f"Fence's {what} answer is {_kind(answer)}, not an object")
    key_id = answer.get("key_id")
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise FenceAnswerError(f"Fence's {what} answer has no usable 'key_id'")
    api_key = _token(answer.get("api_key"), "api_key", what, True)
    assert api_key is not None
    return {"key_id": key_id, "api_key": api_key}
