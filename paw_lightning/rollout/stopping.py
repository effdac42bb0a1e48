"""Stop a fit within seconds on SIGTERM or Ctrl-C, even in the middle of a rollout.

Lightning acts on SIGTERM only at batch boundaries, and a rollout is one long fetch of the first batch
(minutes with a real model). ``GracefulStop`` is installed by the DataModule for ``fit``: its handler
records the signal and, while a rollout runs (``interruptible``), raises at once; elsewhere the stop
waits for the next safe point (the DataModule checks between mini-batches and before each rollout,
Lightning itself after each batch). The rollout's envs and workers are closed on the way out and the
last finished iteration's checkpoint is left as it was: nothing is written after a stop.

SIGTERM raises Lightning's ``SIGTERMException`` (teardown, then exit status 0, as Lightning does), Ctrl-C
raises ``KeyboardInterrupt`` (Lightning's graceful shutdown, exit status 1). A second Ctrl-C raises at
once, wherever the run is.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Turns SIGTERM and SIGINT into a stop request while installed (see the module doc)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None  # the signal that asked to stop, once one did
        self._depth = 0  # > 0 while a rollout runs
        self._previous: dict[int, object] = {}  # the handlers we replaced, while installed
        self._forward: dict[int, object] = {}  # the same, after uninstall

    def __getstate__(self) -> dict:
        # handlers belong to this process; a copy (a spawned DDP rank) starts uninstalled
        return {"signal_name": None, "_depth": 0, "_previous": {}, "_forward": {}}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (main thread only; elsewhere signals keep their handlers)."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return
        self.signal_name = None
        for sig in SIGNALS:
            current = signal.getsignal(sig)
            # our own handler, left in place by Lightning after an earlier fit, stands for what it replaced
            self._previous[sig] = self._forward.get(sig, signal.SIG_DFL) if current == self._handle else current
            signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Give the signals back. A handler that kept a reference to ours (Lightning's SIGTERM handler
        restores what it found) then forwards to the handler we replaced."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in list(self._previous.items()):
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous)
        self._forward = dict(self._previous)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if not self.installed:
            return _call_previous(self._forward.get(signum), signum, frame)
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, wherever the run is
        first = self.signal_name is None
        self.signal_name = signal.Signals(signum).name
        if first:
            when = "now (mid-rollout)" if self._depth else "at the next batch or rollout"
            rank_zero_warn(f"received {self.signal_name}: stopping {when}; the last checkpoint is kept")
        if self._depth:
            raise self._exception()

    def _exception(self) -> BaseException:
        if self.signal_name == "SIGTERM":
            return SIGTERMException()
        return KeyboardInterrupt(f"stopped by {self.signal_name}")

    def check(self) -> None:
        """Raise the stop exception if a signal asked to stop."""
        if self.signal_name is not None:
            raise self._exception()

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A region (a rollout) that a stop signal interrupts at once."""
        self.check()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1


def _call_previous(previous, signum: int, frame) -> None:
    """Behave as the handler we replaced."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:  # SIG_DFL: die of the signal, as without us
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
