"""Text heurist records, sends or shows: secrets taken out, and untrusted text made inert.

Two second lines of defence, applied where text leaves heurist's hands:

- ``redact``: the values of secret-looking variables in heurist's own environment (an API
  key, a token, a password) are replaced by ``[redacted $NAME]`` in every text heurist
  records or sends: the ledger and transcripts (``common.ledger``), memory, prompts, the
  report, commit messages, the summary and the console; text from untrusted code (an
  episode's error, a test's output) is redacted where it enters heurist, so the run's state
  and its checkpoints never hold it either. Sandboxed code never sees these variables (the
  sandbox's environment is an allow-list); this catches the ways one could still be copied
  into a text by mistake. Policy and test sources are never rewritten: they are hashed.
- ``printable``: text written by untrusted code (a policy's error, a test's output) can
  carry terminal escape sequences, other control characters and bidirectional overrides;
  they are shown as visible escapes (``\\x1b``) so the text is displayed, never obeyed.
  ``cli.console.shown`` adds Rich markup escaping on top for the console.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from typing import Any

# Names that say a variable holds a secret. A value shorter than MIN_SECRET_CHARS ("true", a short
# password that is also a word) would mangle unrelated text wherever it occurs; keys and tokens are longer.
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH(?!OR)|COOKIE|SESSION|PRIVATE|_PASS$|^PASS",
                         re.IGNORECASE)
NOT_SECRET = frozenset({"SSH_AUTH_SOCK", "XDG_SESSION_ID", "XDG_SESSION_TYPE", "XDG_SESSION_CLASS",
                        "XDG_SESSION_DESKTOP", "DBUS_SESSION_BUS_ADDRESS", "SESSION_MANAGER", "KEYTIMEOUT"})
MIN_SECRET_CHARS = 12

_extra_names: set[str] = set()


def also_secret(name: str) -> None:
    """Treat this variable as a secret whatever its name (the run's configured API key variable)."""
    _extra_names.add(name)


def is_secret_name(name: str) -> bool:
    """Whether a variable of this name holds a secret (by its name, or because heurist was told so)."""
    return name not in NOT_SECRET and (name in _extra_names or bool(SECRET_NAME.search(name)))


def environ_without_secrets() -> dict[str, str]:
    """This process's environment less every secret-looking variable, whatever its value's length."""
    return {name: value for name, value in os.environ.items() if not is_secret_name(name)}


def secrets_to_hand_on() -> dict:
    """What a trusted child of heurist needs to have heurist's secrets, as JSON can carry it: the variables
    ``environ_without_secrets`` leaves out, and the names heurist was told are secret (``also_secret``)."""
    return {"environ": {name: value for name, value in os.environ.items() if is_secret_name(name)},
            "also_secret": sorted(_extra_names)}


def take_secrets(handed_on: dict) -> None:
    """In that child: heurist's secret variables back in its environment, and treated as secret as in heurist."""
    os.environ.update({str(name): str(value) for name, value in handed_on["environ"].items()})
    for name in handed_on["also_secret"]:
        also_secret(str(name))


def secret_values() -> list[tuple[str, str]]:
    """(value, name) of every secret-looking variable in this process's environment, longest first."""
    found = {}
    for name, value in os.environ.items():
        if len(value) >= MIN_SECRET_CHARS and is_secret_name(name):
            found.setdefault(value, name)
    return sorted(found.items(), key=lambda item: -len(item[0]))


# A password written into a URL (http://user:password@host/...: a --base-url or --memory-url given so): whatever
# variable it came from, or none, it is a secret wherever the URL is recorded, sent or shown.
# The password runs to the last "@" before a host (one with an unencoded "@" in it, as urlparse reads it), and never
# across a double quote, which no URL holds, so compact JSON ("http://h:8000","x":"a@b.c") is not taken for a URL
# with a password (an apostrophe may be in a password). A scheme is at most 32 characters: a longer run of letters
# and dots before "://" was rescanned from every word boundary (8.7 s for 80,000 characters).
URL_PASSWORD = re.compile(r'(\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s/?#@:"]*):[^\s/?#"]*@(?=[^\s/?#@"]*(?:[/?#\s"]|$))')


def redact(text: str, secrets: list[tuple[str, str]] | None = None) -> str:
    """``text`` with every secret value (as is, and as JSON would escape it) replaced by its variable's name, and
    every password written into a URL by ``[redacted]``."""
    if not text:
        return text
    for value, name in secret_values() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, f"[redacted ${name}]")
        escaped = _json_escaped(value)
        if escaped != value and escaped in text:
            text = text.replace(escaped, f"[redacted ${name}]")
    return without_url_passwords(text)


def without_url_passwords(text: str) -> str:
    """``text`` with every password written into a URL replaced by ``[redacted]``."""
    return URL_PASSWORD.sub(r"\1:[redacted]@", text) if "@" in text else text


def cut(text: str, most: int, keep: str = "start") -> str:
    """At most ``most`` characters of ``text`` (its start, or with ``keep="end"`` its end), redacted whole first:
    a secret cut in two is no longer found, and each half was shown (the live panel showed a key's first 38
    characters, then its last 39). Text still arriving may end in the first characters of a secret: held back."""
    text = redact(text)
    if keep == "end":
        for value, _ in secret_values():
            for size in range(min(len(value) - 1, len(text)), 2, -1):
                if text.endswith(value[:size]):
                    text = text[:-size]
                    break
        return text[-most:]
    return text[:most]


@lru_cache(maxsize=64)
def _json_escaped(value: str) -> str:
    """A secret as JSON writes it inside a string (a page redacts every value it shows: worked out once each)."""
    return json.dumps(value)[1:-1]


def redact_deep(value: Any, secrets: list[tuple[str, str]] | None = None) -> Any:
    """Every string inside plain dicts, lists and tuples redacted; any other object is returned as it is."""
    secrets = secret_values() if secrets is None else secrets
    kind = type(value)
    if kind is str:
        return redact(value, secrets)
    if kind is dict:
        return {redact_deep(k, secrets): redact_deep(v, secrets) for k, v in value.items()}
    if kind is list:
        return [redact_deep(v, secrets) for v in value]
    if kind is tuple:
        return tuple(redact_deep(v, secrets) for v in value)
    return value


# C0 controls but newline and tab, DEL, C1 controls, the Unicode controls that reorder or hide what a
# terminal or a page shows (bidirectional marks, overrides and isolates, zero-width joiners aside), the line and
# paragraph separators (a new line to some terminals and editors), and lone surrogates, which no encoder can write
# (a console would fail on them).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")


def printable(text: str) -> str:
    """Untrusted text with control characters shown as visible escapes, so a terminal prints, never obeys, it."""
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], text)


def one_line(text: str) -> str:
    """Untrusted text for a place that is one line (an error, a log line, a search hit): ``printable``, and its line
    breaks written out, so it cannot make a line of its own that reads as heurist's."""
    return printable(text).replace("\r", "\\r").replace("\n", "\\n")
