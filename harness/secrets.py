"""The process-wide secret registry and the scrubber every report, log and
attachment passes through.

Passwords resolved from the inventory's credential references
(``CredentialRef.resolve()``) and private keys loaded by the SSH layer are
registered here; :func:`scrub` replaces each with ``***`` and masks every PEM
private-key block.  No allure or pytest import: every layer may use it.

A secret is registered in every form a test or a tool may write it in
(:data:`SECRET_FORMS`: as it is, repr/JSON escaped, URL escaped, hex,
base64 at each of its three alignments, a long prefix), so the scrubber
masks each of them and the end-of-job scan (harness.results.secret_scan)
looks for each of them.

:func:`redact_inline` is for text that may *hold* a secret nobody
registered (a store URL with a password, a command line with ``-P``): what
error messages print instead of such a value.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

log = logging.getLogger("xenhil.secrets")

MASK = "***"
MIN_SECRET_LEN = 4
#: Encoded forms (and prefixes) shorter than this are not masked: "4142" (hex
#: of a 2-byte tail) would wreck reports.  The value itself keeps MIN_SECRET_LEN.
MIN_FORM_LEN = 8
#: A prefix of a secret counts as the secret when it is at least this long
#: and at least half of it (a test printing ``password[:12]``).
MIN_PREFIX_LEN = 8


def _base64_cores(raw: bytes, encode: Callable[[bytes], bytes]) -> list[str]:
    """The base64 characters that depend on ``raw`` alone, at each of the
    three alignments it may have inside a longer encoded stream."""
    cores = []
    for shift in range(3):
        text = encode(b"\0" * shift + raw + b"\0\0").decode("ascii")
        first = -(-8 * shift // 6)                  # first char made of raw's bits only
        last = (8 * (shift + len(raw))) // 6        # one past the last such char
        cores.append(text[first:last])
    return cores


def _prefix(value: str) -> str | None:
    length = max(MIN_PREFIX_LEN, -(-len(value) // 2))
    return value[:length] if length < len(value) else None


#: Every form a secret is masked and scanned in: name -> how it is written.
#: Change the forms here only; masking (register_secret) and the scan
#: (harness.results.secret_scan) both use this table.
SECRET_FORMS: dict[str, Callable[[str], Iterable[str]]] = {
    "plain": lambda v: [v, v.strip()],
    "repr-escaped": lambda v: [repr(v)[1:-1]],
    "JSON-escaped": lambda v: [json.dumps(v)[1:-1], json.dumps(v, ensure_ascii=False)[1:-1],
                               json.dumps(json.dumps(v)[1:-1])[1:-1]],
    "URL-escaped": lambda v: [urllib.parse.quote(v, safe=""), urllib.parse.quote(v),
                              urllib.parse.quote_plus(v)],
    "hex": lambda v: [v.encode().hex(), v.encode().hex().upper()],
    "base64": lambda v: _base64_cores(v.encode(), base64.b64encode)
                        + _base64_cores(v.encode(), base64.urlsafe_b64encode),
    "prefix": lambda v: [p for p in [_prefix(v)] if p],
}
_AS_GIVEN = ("plain", "repr-escaped", "JSON-escaped")   # kept down to MIN_SECRET_LEN


def secret_forms(value: str) -> dict[str, str]:
    """Each text ``value`` may be written as -> the name of that form
    (``plain`` first wins when two forms give the same text)."""
    found: dict[str, str] = {}
    for name, make in SECRET_FORMS.items():
        shortest = MIN_SECRET_LEN if name in _AS_GIVEN else MIN_FORM_LEN
        for text in make(value):
            if len(text) >= shortest and text not in found:
                found[text] = name
    return found

# PEM private keys of any kind (RSA, EC, OPENSSH, ENCRYPTED, plain PKCS#8),
# also inside reprs where newlines are written "\\n".  A block runs from its
# BEGIN line to the first END line after it; one cut off before its END line
# (a log tail, a truncated repr) is masked over the PEM headers and base64
# lines that follow its BEGIN line.  Found with one pass for the BEGIN lines
# and one for the END lines, not one regex with a lazy ".*?END": that
# rescanned the rest of the text for every BEGIN without an END (quadratic:
# 4 000 of them in a test's output took seconds to scrub).
_NEWLINE = r"(?:\r?\n|\\r\\n|\\n)"
_KEY_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_KEY_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
_KEY_CUT_BODY = re.compile(rf"(?:{_NEWLINE}(?:Proc-Type|DEK-Info):[^\n\\]*)*"
                           rf"(?:{_NEWLINE}*[ \t]*[A-Za-z0-9+/=]+)*")
_KEY_MARK = "PRIVATE KEY-----"


def private_key_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every private-key block in ``text``, in order, in
    time linear in its length."""
    if _KEY_MARK not in text:
        return []
    ends = [(m.start(), m.end()) for m in _KEY_END.finditer(text)]
    spans: list[tuple[int, int]] = []
    done, i = 0, 0
    for begin in _KEY_BEGIN.finditer(text):
        if begin.start() < done:
            continue                       # inside the block masked before
        while i < len(ends) and ends[i][0] < begin.end():
            i += 1
        end = ends[i][1] if i < len(ends) else _KEY_CUT_BODY.match(text, begin.end()).end()
        spans.append((begin.start(), end))
        done = end
    return spans


def private_key_blocks(text: str) -> list[str]:
    """Every private-key block of ``text`` (see :func:`private_key_spans`)."""
    return [text[start:end] for start, end in private_key_spans(text)]


def _masked(text, spans: list[tuple[int, int]], mask):
    """``text`` (str or bytes) with each of the ordered, disjoint ``spans`` replaced by ``mask``."""
    if not spans:
        return text
    parts, at = [], 0
    for start, end in spans:
        parts += [text[at:start], mask]
        at = end
    parts.append(text[at:])
    return text[:0].join(parts)

# --- the secret registry -----------------------------------------------------

_lock = threading.Lock()
_secrets: set[str] = set()
_ordered_cache: list[str] | None = None
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
    # Every form of SECRET_FORMS: reprs (assertion messages, --showlocals),
    # JSON strings, URL escaping, hex, base64, a long prefix; a secret with a
    # trailing newline (read from a file) is also a secret without it.
    global _ordered_cache
    forms = secret_forms(value)
    with _lock:
        if not forms.keys() <= _secrets:
            _secrets.update(forms)
            _ordered_cache = None
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
    # Longest first: a secret containing another must be replaced whole.
    global _ordered_cache
    if secrets is None:
        with _lock:
            if _ordered_cache is None:
                _ordered_cache = sorted(_secrets, key=len, reverse=True)
            return _ordered_cache
    return sorted({s for s in secrets if s}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret value (default: the registered ones) and
    every private-key block replaced by ``***``."""
    if not text:
        return text
    text = _masked(text, private_key_spans(text), MASK)
    for secret in _ordered(secrets):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_bytes(data: bytes, secrets: Iterable[str] | None = None) -> bytes:
    """Byte-level scrub (for text of unknown encoding)."""
    if _KEY_MARK.encode() in data:
        # latin-1 maps each byte to one character: the spans are byte offsets.
        data = _masked(data, private_key_spans(data.decode("latin-1")), MASK.encode())
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


# --- inline secrets nobody registered ------------------------------------------

@dataclass(frozen=True)
class InlineRule:
    """One place a secret hides: ``pattern``'s group 1 is the part kept, the
    value masked follows it: up to the end of the match, or (``to_last_at``)
    up to the last '@' of the word, a URL's password running to it."""

    name: str
    pattern: re.Pattern
    to_last_at: bool = False

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        """(start, end) of each value in ``text``, in order."""
        if not self.to_last_at:
            for m in self.pattern.finditer(text):
                yield m.end(1), m.end()
            return
        # Word by word, the prefix searched only before the word's last '@':
        # a regex looking ahead for that '@' rescanned the word from every
        # scheme-like start (quadratic: 100 000 characters took 10 s).
        for word in re.finditer(r"\S+", text):
            at = word.group().rfind("@")
            m = self.pattern.search(word.group(), 0, at) if at > 0 else None
            if m is not None:
                yield word.start() + m.end(1), word.start() + at


#: Where a secret hides in text that is not itself a secret, each with the
#: part to keep (group 1) before the masked value.  Change the rules here
#: only.  Each is matched in time linear in the text's length (hostile input
#: reaches error messages): no nested or unanchored backtracking.
INLINE_SECRET_RULES: tuple[InlineRule, ...] = (
    # scheme://user:PASSWORD@host: the password runs to the last '@' before the path
    InlineRule("URL password", re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)"),
               to_last_at=True),
    # user:PASSWORD@host without a scheme (an address field, an scp/ssh target)
    InlineRule("user:password@host", re.compile(r"((?:^|(?<=[\s'\"]))[A-Za-z0-9_.-]+:)[^\s@'\"/]+(?=@[A-Za-z0-9])")),
    # libpq keyword DSNs and URL queries: password=..., sslpassword=...
    InlineRule("password keyword", re.compile(r"((?:^|[\s?&;])[A-Za-z_]*(?:password|passwd|pwd|secret|token)\s*=\s*)"
                                              r"(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;]*)",
                                              re.IGNORECASE)),
    # command lines: -P VALUE, -PVALUE, --password VALUE, --password=VALUE, sshpass -p VALUE
    InlineRule("password option", re.compile(r"((?:^|\s)(?:-P|--pass(?:word|wd)?|--pw|-pw|--secret|--token|"
                                             r"--k-g|(?<=sshpass )-p)(?:\s+|=)?)(?!-)[^\s]+")),
    # Tools whose lowercase -p is the password (sshpass, Dell's racadm, FreeIPMI's
    # ipmipower/ipmiconsole/ipmi-*/bmc-*; ipmitool's -p is the port) and whose -k
    # is the BMC's K_g key (ipmitool, FreeIPMI), within that tool's next 400
    # characters of arguments (bounded: unbounded, every repeated tool name
    # rescanned the rest of the line).
    InlineRule("password option", re.compile(
        r"((?<![\w-])(?:(?:sshpass|racadm|ipmipower|ipmiconsole|ipmi-[a-z-]+|bmc-[a-z-]+)\b"
        r"[^;&|\n]{0,400}?\s-[pk]|ipmitool\b[^;&|\n]{0,400}?\s-k)(?:\s+|=)?)(?!-)\S+")),
    # curl/wget style: -u USER:PASSWORD, --user USER:PASSWORD, --proxy-user ...
    InlineRule("user:password option", re.compile(r"((?:^|\s)(?:-u|--user|--proxy-user|-U)(?:\s+|=)"
                                                  r"['\"]?[^\s:'\"]+:)[^\s'\"]+")),
)


def redact_inline(text: str) -> str:
    """``text`` with every value that :data:`INLINE_SECRET_RULES` says may
    be a secret replaced by ``***``, and every registered secret scrubbed:
    what an error message may print of a URL, DSN or command line."""
    if not text:
        return text
    text = scrub(text)
    for rule in INLINE_SECRET_RULES:
        text = _masked(text, list(rule.spans(text)), MASK)
    return text


def inline_secret_kind(text: str) -> str | None:
    """The name of the first INLINE_SECRET_RULES rule ``text`` matches
    (``"URL password"``, ...), None when it holds no inline secret."""
    for rule in INLINE_SECRET_RULES:
        if next(rule.spans(text), None) is not None:
            return rule.name
    return None
