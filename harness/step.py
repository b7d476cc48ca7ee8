"""``@step``: every harness action is a timed, logged step (after labgrid's
step.py), and an Allure step when allure is loaded.

Titles may use ``{arg}`` placeholders filled from the call's arguments.
Arguments named in ``secret`` (and any whose name contains "password",
"secret" or "key_data") are never put in titles or logs.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from typing import Callable, Iterator

try:  # allure-python-commons: no pytest import behind it
    import allure as _allure
except ImportError:  # pragma: no cover - allure is a hard dependency, but keep the library usable
    _allure = None

log = logging.getLogger("xenhil.step")

_SECRET_WORDS = ("password", "secret", "key_data", "passphrase")


def _is_secret(name: str, extra: tuple[str, ...]) -> bool:
    return name in extra or any(w in name.lower() for w in _SECRET_WORDS)


@contextlib.contextmanager
def step_context(title: str) -> Iterator[None]:
    """Run a block as a step: logged start/end with duration, an Allure step."""
    started = time.monotonic()
    log.info("step start: %s", title)
    try:
        with contextlib.ExitStack() as allure_step:
            if _allure is not None:
                try:
                    allure_step.enter_context(_allure.step(title))
                except (StopIteration, RuntimeError):
                    # allure-python-commons 2.x: a step begun in a thread of its
                    # own while no test runs (the end of a run destroying its
                    # guests, one thread per host) finds no item to hang on and
                    # raises StopIteration; the step is still logged.
                    log.debug("step %r: no Allure test to record it in", title)
            yield
    except BaseException as exc:
        log.info("step failed after %.2fs: %s: %s", time.monotonic() - started, title,
                 type(exc).__name__)
        raise
    log.info("step done in %.2fs: %s", time.monotonic() - started, title)


def step(title: str | None = None, secret: tuple[str, ...] = ()) -> Callable:
    """Decorator: ``@step("boot {self.name}")`` or ``@step()`` (uses the function name)."""

    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func)
        template = title or func.__qualname__

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                bound = sig.bind(*args, **kwargs)
                bound.apply_defaults()
                shown = {k: ("***" if _is_secret(k, secret) else v)
                         for k, v in bound.arguments.items()}
                text = template.format(**shown)
            except (TypeError, KeyError, IndexError, AttributeError, ValueError):
                text = template
            with step_context(text):
                return func(*args, **kwargs)

        return wrapper

    return decorate
