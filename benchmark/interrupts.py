"""Ctrl-C and SIGTERM around writes that must not be cut in half, and retries while an sqlite store is locked by
another process: what every store write of the harness goes through (benchmark/tracking.py's client, the
table queue, the study runner); and who a process is (host:pid, as runs, trials and store files name their
owner) and whether it is alive."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import threading
import time


@contextlib.contextmanager
def uninterrupted():
    """Ctrl-C and SIGTERM wait until the block ends, then act as they would have: a write to a store is never
    cut in half. (A Ctrl-C inside an sqlite write can leave the write lock held by this process: the writes that
    end the run then fail 'database is locked', and the interrupt reads as an error.) Main thread only: Python
    runs signal handlers there; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        if caught:
            handler = before[caught[0]]
            if callable(handler):
                handler(caught[0], None)  # raises KeyboardInterrupt (SIGINT) or the CLI's Terminated (SIGTERM)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), caught[0])


_TERMINATED = threading.Event()  # a SIGTERM came: see on_sigterm


def on_sigterm(signum, frame) -> None:
    """The CLI's SIGTERM handler: raises Terminated (handled like Ctrl-C) and marks that it came. Python runs a
    handler between any two bytecodes, also inside a weakref callback or a __del__, where the exception is
    printed ('Exception ignored in ...') and dropped: the command would go on as if nothing came (a study worker
    trained its trial to the end after its command was killed). raise_if_terminated raises it again."""
    from benchmark.trainer import Terminated

    _TERMINATED.set()
    raise Terminated()


def watch_sigterm() -> None:
    """Install on_sigterm (main thread only) with no SIGTERM marked yet."""
    _TERMINATED.clear()
    signal.signal(signal.SIGTERM, on_sigterm)


def raise_if_terminated() -> None:
    """Raise Terminated once when a SIGTERM came, in case on_sigterm's own exception was dropped (the training
    loop calls this every step; a Terminated that did propagate ends the command before the next step)."""
    if _TERMINATED.is_set():
        from benchmark.trainer import Terminated

        _TERMINATED.clear()
        raise Terminated()


def interrupted_by(e: BaseException | None) -> bool:
    """Whether a Ctrl-C or SIGTERM is behind this exception (a library may wrap the KeyboardInterrupt it met)."""
    while e is not None and not isinstance(e, KeyboardInterrupt):
        e = e.__cause__ or e.__context__
    return e is not None


def locked(e: BaseException | None) -> bool:
    """Whether another process's hold on an sqlite store ('database is locked') is behind this exception (a
    library may wrap it: Optuna's StorageInternalError, MLflow's MlflowException)."""
    while e is not None:
        if "database is locked" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def patiently(call, *args, wait_s: float = 120.0, **kwargs):
    """call(*args, **kwargs), tried again while an sqlite store is locked by another process, for up to wait_s
    seconds (then its error stands). sqlite itself waits 5 s for a lock, and not at all where a transaction that
    has read must write while another process commits (its rule against deadlock): with several processes on one
    store (study workers, their heartbeats, the command watching them) on a loaded machine, either can happen.
    The failed transaction was rolled back, so it is safe to run it again."""
    deadline, delay = time.monotonic() + wait_s, 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as e:
            if not locked(e) or interrupted_by(e) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))  # jittered: processes that collided do not collide again
        delay = min(2 * delay, 2.0)


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def process_alive(owner: str) -> bool | None:
    """Whether the process named host:pid is alive; None when it runs on another host (cannot tell)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
