"""torchship.interrupts: SIGTERM/SIGHUP stop a run like Ctrl-C; a hidden interrupt stays one."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from torchship.errors import ExportError
from torchship.interrupts import (
    Interrupted,
    deferred_interrupts,
    exit_code_of,
    handle_signals,
    interrupt_of,
    interrupted_line,
    reraise_interrupt,
)


def _wrapped_interrupt() -> ExportError:
    """What torch.export made of a Ctrl-C during `import torch._dynamo`, wrapped by us."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            # an `except torch._dynamo.exc.UserError` clause on a half-imported package
            raise AttributeError("module 'torch._dynamo' has no attribute 'exc'") from None
    except AttributeError as exc:
        error = ExportError("exported-program export of model.pt2 failed")
        error.__cause__ = exc
        return error


def test_exit_codes_and_lines_per_signal():
    assert Interrupted(signal.SIGTERM).exit_code == 143
    assert Interrupted(signal.SIGHUP).exit_code == 129
    assert exit_code_of(KeyboardInterrupt()) == 130
    assert interrupted_line(KeyboardInterrupt()) == "interrupted; no partial output was kept"
    assert interrupted_line(Interrupted(signal.SIGTERM)).startswith("interrupted by SIGTERM;")


def test_an_interrupt_hidden_in_a_context_is_found():
    found = interrupt_of(_wrapped_interrupt())
    assert isinstance(found, Interrupted) and found.exit_code == 130
    assert interrupt_of(ExportError("a real export failure")) is None


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are Python 3.11+")
def test_an_interrupt_in_an_exception_group_is_found():
    errors = [ValueError("a"), _wrapped_interrupt()]
    group = ExceptionGroup("strategies", errors)  # noqa: F821 (a builtin since 3.11)
    assert interrupt_of(group) is not None


def test_reraise_interrupt_leaves_real_errors_alone():
    reraise_interrupt(ValueError("not an interrupt"))  # returns
    with pytest.raises(Interrupted):
        reraise_interrupt(_wrapped_interrupt())


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_raise_an_interrupt_and_handlers_are_restored(signum, code):
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as caught, handle_signals():
        os.kill(os.getpid(), signum)
        for _ in range(1000):
            pass
    assert caught.value.exit_code == code
    assert signal.getsignal(signum) is before


def test_handle_signals_unwraps_a_wrapped_interrupt():
    with pytest.raises(Interrupted), handle_signals():
        raise _wrapped_interrupt()


def test_a_swallowed_signal_is_still_raised_at_the_end():
    ran_on = False
    with pytest.raises(Interrupted) as caught, handle_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        except Interrupted:
            pass  # a library that catches BaseException and carries on
        ran_on = True
        try:
            raise RuntimeError("a later, unrelated-looking failure")
        except RuntimeError as exc:
            reraise_interrupt(exc)  # a fallback site: an interrupt came, do not fall back
    assert ran_on and caught.value.exit_code == 143


def test_ignored_signals_stay_ignored():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does
    try:
        with handle_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(1000):
                pass
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_deferred_interrupts_finish_the_step_then_raise():
    steps = []
    with pytest.raises(Interrupted), handle_signals():
        with deferred_interrupts():
            steps.append("first rename")
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
            steps.append("second rename")
    assert steps == ["first rename", "second rename"]
