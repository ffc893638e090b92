"""A logging filter that redacts OAuth codes and states, tokens, API keys and Authorization values from every hub log line.

JupyterHub scrubs its own access log, but other lines carry secrets too: Tornado's warning
for an HTTPError names the request with its query (`GET /hub/oauth_callback?code=...&state=...`),
OAuthenticator logs failed answers whole, and an exception message can quote a token. The
authenticator installs `SecretScrubber` on the hub's log handlers and on the Tornado,
JupyterHub and OAuthenticator loggers, so every record is cleaned before any handler writes it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "[redacted]"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Query and form parameters: ?code=...&state=..., token=..., api_key=...
    (
        re.compile(
            r"(?i)\b(code|state|token|access_token|refresh_token|id_token|api_key|apikey|client_secret|"
            r"password|secret|_xsrf|code_verifier|key)=(?!\[)([^&\s'\"#;,)\]]+)"
        ),
        rf"\1={REDACTED}",
    ),
    # The same inside a percent-encoded URL, e.g. a redirect's `next=%2Fuser%2Fa%2F%3Ftoken%3D...`
    # (once or twice encoded), which JupyterHub's own access-log scrubbing does not look into.
    (
        re.compile(
            r"(?i)(?:(?<=%3F)|(?<=%26)|(?<=%253F)|(?<=%2526)|\b)(code|state|token|access_token|refresh_token|id_token|api_key|"
            r"apikey|client_secret|password|secret|_xsrf|code_verifier|key)(%3D|%253D)(?!%5B|\[)((?:(?!%26|%2526|%23|%2523)[^&\s'\"#;,)\]])+)"
        ),
        rf"\1\2{REDACTED}",
    ),
    # JSON or repr fields: "access_token": "...", 'api_key': '...'
    (
        re.compile(
            r"(?i)([\"'](?:access_token|refresh_token|id_token|api_key|client_secret|code|state|password|"
            r"token|code_verifier)[\"']\s*:\s*)([\"'])[^\"']*[\"']"
        ),
        rf"\1\2{REDACTED}\2",
    ),
    # Header values: Authorization: Bearer ..., Cookie: ..., X-CSRF-Token: ...
    (
        re.compile(r"(?i)\b(authorization|cookie|set-cookie|x-csrf-token|x-xsrftoken)([\"']?\s*[:=]\s*[\"']?)[^\"'\n]+"),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {REDACTED}"),
    # Any JWT (Fence's access, refresh and id tokens and its API keys are all JWTs).
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
]


def scrub(text: str) -> str:
    """`text` with every secret-looking value replaced by [redacted]."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class SecretScrubber(logging.Filter):
    """Rewrites a record's message (and traceback text) with secrets redacted; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix; log it as it is
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


LOGGERS = ("tornado", "tornado.access", "tornado.application", "tornado.general", "JupyterHub", "jupyterhub", "oauthenticator", "traitlets")


def install(*loggers: Any) -> SecretScrubber:
    """Put one scrubber on the named loggers, on `loggers` and on every handler they and the root write to (idempotent)."""
    scrubber = next((f for f in logging.getLogger().filters if isinstance(f, SecretScrubber)), None) or SecretScrubber()
    targets: list[Any] = [logging.getLogger(), *(logging.getLogger(n) for n in LOGGERS), *loggers]
    for logger in targets:
        if logger is None:
            continue
        for owner in [logger, *getattr(logger, "handlers", [])]:
            if not any(isinstance(f, SecretScrubber) for f in owner.filters):
                owner.addFilter(scrubber)
    return scrubber
