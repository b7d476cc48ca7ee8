"""Interrupted runs: SIGTERM ends a run the way Ctrl-C does.

Python turns SIGINT into KeyboardInterrupt, so pytest stops the test, tears
its fixtures down (leases released, guests destroyed) and runs its session
end (results, report files).  SIGTERM, which a CI time limit, ``timeout(1)``
or ``kill`` sends, kills the process outright by default: no teardown, no
session end, and the Allure results of a run stopped by its time limit had
no categories and no environment.  :class:`Interruption` installs a SIGTERM
handler that raises :class:`RunInterrupted` (a KeyboardInterrupt) in the
main thread instead, and gives the previous handler back at the end.

A second SIGTERM while the run is already stopping, or while it finishes
normally, is ignored with a line on stderr: the cleanup it would cut short
is what releases the hosts and destroys the guests (SIGKILL still stops the
process at once; its leases then end when their TTL passes).  A second
Ctrl-C keeps pytest's meaning: stop now.

No pytest import here (harness.plugin wires it into pytest).
"""
from __future__ import annotations

import os
import signal
import threading


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM received: the run stops like after Ctrl-C."""


SIGTERM_MESSAGE = ("SIGTERM: the run stops like after Ctrl-C (hosts released, guests destroyed, "
                   "tests not run listed as not run)")


class Interruption:
    """One run's SIGTERM handling and the reason it stopped early, if it did."""

    def __init__(self) -> None:
        #: Why the run stopped early ("SIGTERM", "Ctrl-C (SIGINT)", ...); None while it runs.
        self.reason: str | None = None
        #: The run is in its session end (fixtures torn down, results written).
        self.finishing = False
        self._previous = None
        self._installed = False

    # -- the handler -------------------------------------------------------
    def install(self) -> bool:
        """Make SIGTERM raise RunInterrupted in the main thread; False when
        this is not the main thread (Python handlers are the main thread's)."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return False
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True
        return True

    def restore(self) -> None:
        """Give SIGTERM back to the handler it had before :meth:`install`."""
        if not self._installed or threading.current_thread() is not threading.main_thread():
            return
        previous = self._previous if self._previous is not None else signal.SIG_DFL
        signal.signal(signal.SIGTERM, previous)
        self._installed = False

    @property
    def installed(self) -> bool:
        return self._installed

    def _on_sigterm(self, signum, frame) -> None:
        if self.reason is not None or self.finishing:
            _say("xenhil: SIGTERM while the run is stopping: ignored, its cleanup goes on "
                 "(hosts released, guests destroyed); SIGKILL stops it at once")
            return
        self.reason = "SIGTERM"
        raise RunInterrupted(SIGTERM_MESSAGE)

    # -- what stopped the run ----------------------------------------------
    def note(self, exc: BaseException) -> str:
        """Record why the run stopped from the KeyboardInterrupt pytest
        caught (a SIGTERM's reason is already set); returns the reason."""
        if self.reason is None:
            if isinstance(exc, RunInterrupted):
                self.reason = "SIGTERM"
            elif type(exc) is KeyboardInterrupt:
                self.reason = "Ctrl-C (SIGINT)"
            else:   # pytest-xdist's Interrupted: "<node> received keyboard-interrupt", ...
                self.reason = str(exc).strip() or type(exc).__name__
        return self.reason


def _say(text: str) -> None:
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


def signal_process(popen, signum: int = signal.SIGTERM) -> bool:
    """Send ``signum`` to a child process (a subprocess.Popen) still running;
    False when it has ended (Popen checks, so a reused pid is never hit)."""
    if popen is None or popen.poll() is not None:
        return False
    try:
        popen.send_signal(signum)
    except OSError:
        return False
    return True
