"""Interrupts: SIGINT, SIGTERM and SIGHUP all stop a run the same way, and stay interrupts.

`handle_signals()` (the CLI wraps every command in it) makes SIGTERM (what CI runners and
`timeout` send) and SIGHUP (a closed terminal) raise `Interrupted`, a KeyboardInterrupt that
carries the exit code 128 + the signal number (130, 143, 129). Being a KeyboardInterrupt, it
unwinds through every `except BaseException` clean-up, so staged output is removed exactly as
for Ctrl-C.

Libraries do not always let an interrupt through. torch's dynamo ONNX exporter tries several
capture strategies in `except Exception`; a KeyboardInterrupt that lands while `torch._dynamo`
is being imported leaves that package half-initialised, and the next `except
torch._dynamo.exc.UserError` clause raises AttributeError ("module 'torch._dynamo' has no
attribute 'exc'") with the interrupt only in its `__context__`. `interrupt_of(exc)` finds the
interrupt in such a chain, or remembers that a signal arrived while the handlers were installed
when the chain lost it; `reraise_interrupt(exc)` is the one line every fallback (`except
Exception: try something else`) calls first, so an interrupt never becomes a step error or a
fallback (docs/design.md, "Exit codes and errors").
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = [
    "Interrupted",
    "handle_signals",
    "interrupt_of",
    "reraise_interrupt",
    "raise_if_interrupted",
    "deferred_interrupts",
    "interrupted_line",
    "exit_code_of",
]

#: The signals a run treats as "stop now, clean up". SIGINT keeps Python's KeyboardInterrupt.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


#: Signals received while `handle_signals` is active, in order (empty outside it).
_received: list[int] = []
#: Depth of `deferred_interrupts` blocks: a signal in one is raised when the block ends.
_deferred = 0


def _on_signal(signum: int, frame: object) -> None:
    _received.append(signum)
    if _deferred == 0:
        raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Raise `Interrupted` on SIGINT/SIGTERM/SIGHUP inside the block, and turn an exception that
    hides an interrupt (in its cause or context, or after a signal a library swallowed) into
    that interrupt. Signals ignored when the block starts (`nohup`, a background job's SIGINT)
    stay ignored. Outside the main thread it does nothing (Python delivers signals there only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _on_signal)
    _received.clear()
    try:
        yield
        raise_if_interrupted()  # a library swallowed it and carried on: still an interrupt
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        reraise_interrupt(exc)
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        _received.clear()


def interrupt_of(exc: BaseException) -> Interrupted | None:
    """The interrupt `exc` stands for: a KeyboardInterrupt in its cause/context chain (exception
    groups included), else a signal received under `handle_signals`; None when there is none.
    A new `Interrupted` each time, so raising it `from exc` makes no reference cycle."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, KeyboardInterrupt):
            return Interrupted(getattr(current, "signum", signal.SIGINT))
        stack += [current.__cause__, current.__context__]
        stack += list(getattr(current, "exceptions", ()) or ())
    return Interrupted(_received[0]) if _received else None


def reraise_interrupt(exc: BaseException) -> None:
    """Raise the interrupt `exc` hides, if any; call it first in any `except Exception` that
    wraps or falls back, so that Ctrl-C/SIGTERM is never reported as a failed step."""
    stop = interrupt_of(exc)
    if stop is not None:
        raise stop from exc


def raise_if_interrupted() -> None:
    """Raise `Interrupted` when a signal arrived under `handle_signals` and was swallowed."""
    if _received:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold signals during a short critical step (renaming a finished folder into place): one
    that arrives is raised when the step is done, so the step is never left half-way."""
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1
    if _deferred == 0:
        raise_if_interrupted()


def exit_code_of(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 128 + the signal number for an `Interrupted`."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


def interrupted_line(exc: KeyboardInterrupt) -> str:
    """The one line the CLI prints for an interrupt."""
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
    return f"interrupted{by}; no partial output was kept"
