"""Ctrl-C and SIGTERM (benchmark/interrupts.py): deferred past a store write, recognised when a library wraps
them, and never lost where Python drops a signal handler's exception."""

import gc
import os
import signal
import sys
import weakref

import pytest

from benchmark.interrupts import interrupted_by, on_sigterm, raise_if_terminated, uninterrupted
from benchmark.trainer import Terminated


def test_a_deferred_sigterm_runs_its_own_handler_after_the_block():
    """SIGTERM inside an uninterrupted block runs the command's SIGTERM handler (it raises Terminated) after
    the block; nested blocks pass it outwards; nothing arrives, nothing is raised."""
    before = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        done = []
        with pytest.raises(Terminated):
            with uninterrupted():
                with uninterrupted():
                    os.kill(os.getpid(), signal.SIGTERM)
                    done.append("inner")
                done.append("outer")
        assert done == ["inner", "outer"]
        with uninterrupted():
            pass
        assert signal.getsignal(signal.SIGTERM) is on_sigterm
        with pytest.raises(Terminated):  # marked as well: raised once more by the loop's check, then cleared
            raise_if_terminated()
        raise_if_terminated()
    finally:
        signal.signal(signal.SIGTERM, before)
    wrapped = RuntimeError("db")
    wrapped.__context__ = KeyboardInterrupt()
    assert interrupted_by(wrapped) and not interrupted_by(RuntimeError("db"))


def test_a_sigterm_whose_exception_python_drops_is_raised_at_the_next_step(monkeypatch):
    """A handler that runs inside a weakref callback has its exception printed ('Exception ignored in') and
    dropped: a study worker then trained its trial to the end after its command was killed (kill -9 test, seen
    twice under load). The mark it leaves makes the training loop's per-step check raise it."""
    raise_if_terminated()  # nothing came: no exception

    class Owner:
        pass

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))  # where Python reports it
    owner = Owner()
    keep = weakref.ref(owner, lambda ref: on_sigterm(signal.SIGTERM, None))  # the handler, run inside a callback
    del owner
    gc.collect()
    assert keep() is None and dropped == [Terminated]  # dropped, as Python does
    with pytest.raises(Terminated):
        raise_if_terminated()
    raise_if_terminated()  # raised once
