"""Store URLs shared by the lease store and the results store:
``sqlite:///ABSOLUTE/PATH`` (everything after ``sqlite://`` is the path),
a plain file path, or ``postgresql://...``."""
from __future__ import annotations

from pathlib import Path

from harness.errors import ConfigError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(url: str) -> bool:
    return str(url).startswith(POSTGRES_SCHEMES)


def sqlite_path(url: str | Path, what: str) -> Path:
    """The SQLite file a URL names; ConfigError naming ``what`` otherwise."""
    text = str(url)
    if text.startswith("sqlite://"):
        path = text[len("sqlite://"):]
        if not path:
            raise ConfigError(f"{what} URL {text!r} names no file",
                              help="write sqlite:///ABSOLUTE/PATH (three slashes)")
        return Path(path)
    if "://" in text:
        raise ConfigError(f"{what} URL {text!r}: unknown scheme",
                          help="use sqlite:///ABSOLUTE/PATH, a file path"
                               + (", or postgresql://USER@HOST/DB" if what == "lease store" else ""))
    return Path(text)
