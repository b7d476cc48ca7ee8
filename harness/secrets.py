"""The process-wide secret registry and the scrubber every report, log and
attachment passes through.

Passwords resolved from the inventory's credential references
(``CredentialRef.resolve()``) and private keys loaded by the SSH layer are
registered here; :func:`scrub` replaces each with ``***`` and masks every PEM
private-key block.  No allure or pytest import: every layer may use it.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any, Iterable

log = logging.getLogger("xenhil.secrets")

MASK = "***"
MIN_SECRET_LEN = 4

# PEM private keys of any kind (RSA, EC, OPENSSH, ENCRYPTED, plain PKCS#8),
# also inside reprs where newlines are written "\\n".  A block cut off before
# its END line (a log tail, a truncated repr) is masked over the PEM headers
# and base64 lines that follow its BEGIN line.
_NEWLINE = r"(?:\r?\n|\\r\\n|\\n)"
PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"
    r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----"
    rf"|(?:{_NEWLINE}(?:Proc-Type|DEK-Info):[^\n\\]*)*(?:{_NEWLINE}*[ \t]*[A-Za-z0-9+/=]+)*)",
    re.DOTALL)

# --- the secret registry -----------------------------------------------------

_lock = threading.Lock()
_secrets: set[str] = set()
_too_short_warned: set[int] = set()


def register_secret(value: str | None) -> str | None:
    """Remember ``value`` as a secret of this process (scrubbed from every
    attachment, Allure result and log record from now on); returns it, so a
    resolver can ``return register_secret(value)``."""
    if not value:
        return value
    if len(value) < MIN_SECRET_LEN:
        with _lock:
            first = len(value) not in _too_short_warned
            _too_short_warned.add(len(value))
        if first:
            log.warning("a credential of %d characters is too short to be scrubbed from reports; "
                        "use at least %d characters", len(value), MIN_SECRET_LEN)
        return value
    variants = {value}
    # The same value as it appears inside Python reprs (assertion messages,
    # --showlocals) and JSON strings, where quotes and backslashes are escaped.
    variants.add(repr(value)[1:-1])
    variants.add(json.dumps(value)[1:-1])
    variants.add(json.dumps(value, ensure_ascii=False)[1:-1])
    # A secret with a trailing newline (read from a file) is also a secret without it.
    if value.strip() != value and len(value.strip()) >= MIN_SECRET_LEN:
        variants.add(value.strip())
    with _lock:
        _secrets.update(v for v in variants if len(v) >= MIN_SECRET_LEN)
    return value


def register_private_key(text: str) -> None:
    """Register a private key file's content: the whole text and each line
    of its base64 body, so a partial copy (one line in a log) is scrubbed too."""
    register_secret(text)
    for line in text.splitlines():
        line = line.strip()
        if len(line) >= 16 and not line.startswith("-----"):
            register_secret(line)


def registered_secrets() -> frozenset[str]:
    with _lock:
        return frozenset(_secrets)


# --- scrubbing -----------------------------------------------------------------

def _ordered(secrets: Iterable[str] | None) -> list[str]:
    values = registered_secrets() if secrets is None else {s for s in secrets if s}
    # Longest first: a secret containing another must be replaced whole.
    return sorted(values, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret value (default: the registered ones) and
    every private-key block replaced by ``***``."""
    if not text:
        return text
    if "PRIVATE KEY-----" in text:
        text = PRIVATE_KEY_BLOCK.sub(MASK, text)
    for secret in _ordered(secrets):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_bytes(data: bytes, secrets: Iterable[str] | None = None) -> bytes:
    """Byte-level scrub (for text of unknown encoding)."""
    if b"PRIVATE KEY-----" in data:
        data = re.sub(PRIVATE_KEY_BLOCK.pattern.encode(), MASK.encode(), data, flags=re.DOTALL)
    for secret in _ordered(secrets):
        raw = secret.encode("utf-8")
        if raw in data:
            data = data.replace(raw, MASK.encode())
    return data


def contains_secret(data: str | bytes, secrets: Iterable[str] | None = None) -> bool:
    if isinstance(data, bytes):
        return scrub_bytes(data, secrets) != data
    return scrub(data, secrets) != data


def scrub_object(obj: Any, secrets: Iterable[str] | None = None, _depth: int = 0) -> Any:
    """Scrub every string inside ``obj`` in place (lists, dicts, attrs /
    dataclass / plain objects such as Allure's result model); returns the
    scrubbed object (a new one for str/tuple)."""
    ordered = _ordered(secrets)
    return _scrub_any(obj, ordered, _depth)


def _scrub_any(obj: Any, ordered: list[str], depth: int) -> Any:
    if depth > 30:
        return obj
    if isinstance(obj, str):
        return scrub(obj, ordered)
    if isinstance(obj, bytes):
        return scrub_bytes(obj, ordered)
    if isinstance(obj, (int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            obj[i] = _scrub_any(item, ordered, depth + 1)
        return obj
    if isinstance(obj, tuple):
        items = [_scrub_any(item, ordered, depth + 1) for item in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if isinstance(obj, dict):
        for key in list(obj):
            obj[key] = _scrub_any(obj[key], ordered, depth + 1)
        return obj
    fields = getattr(obj, "__dict__", None)
    if isinstance(fields, dict):
        for key, value in list(fields.items()):
            new = _scrub_any(value, ordered, depth + 1)
            if new is not value:
                try:
                    object.__setattr__(obj, key, new)
                except (AttributeError, TypeError):
                    pass
    return obj


def scrub_exception(exc: BaseException, secrets: Iterable[str] | None = None) -> None:
    """Scrub an exception's arguments, notes, and a harness error's help and
    evidence in place, so whatever prints it later prints no secret."""
    ordered = _ordered(secrets)
    if not ordered and not any("PRIVATE KEY-----" in str(a) for a in exc.args):
        return
    try:
        new_args = tuple(scrub(a, ordered) if isinstance(a, str) else a for a in exc.args)
        if new_args != exc.args:
            exc.args = new_args
    except (AttributeError, TypeError):
        pass
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        notes[:] = [scrub(n, ordered) if isinstance(n, str) else n for n in notes]
    for attr in ("help", "command", "stdout_tail", "stderr_tail"):
        value = exc.__dict__.get(attr)
        if isinstance(value, str):
            setattr(exc, attr, scrub(value, ordered))
    evidence = exc.__dict__.get("evidence")
    if isinstance(evidence, dict):
        for key, value in evidence.items():
            if isinstance(value, str):
                evidence[key] = scrub(value, ordered)


class ScrubbingLogFilter(logging.Filter):
    """A handler filter that rewrites each record's message (and its
    exception text) without secrets before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error path
            return True
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True
