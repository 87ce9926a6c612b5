"""Stop a long library call (sklearn's PCA, umap-learn's neighbour search and its numba compile) from
outside it: a watcher thread calls ``check`` every ``poll_s`` seconds and, once it raises, interrupts the
guarded thread the way Ctrl-C interrupts a program; the guard then re-raises what ``check`` raised.

A library call has no cancel hook, but it is mostly Python (sklearn's randomized SVD loop between its
matrix products, numba compiling a kernel, umap-learn and pynndescent looping over numba calls), and a
pending asynchronous exception fires at the next Python bytecode. One native call that holds the GIL (a
single numba kernel) still runs to its end first; the exception fires right after it returns.

Usage::

    call_interruptible(lambda: pca.fit(sample), ctx.check)   # raises what ctx.check raised, once it does
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.1  # the watcher calls ``check`` this often (``Lease.check`` reads the row at most every 0.4 s)


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error a library catches
    """Sent into the guarded thread; a BaseException, so a library's ``except Exception`` lets it pass."""


def _send(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else ctypes.c_void_p(0)
    )


def call_interruptible(fn: Callable[[], T], check: Callable[[], None] | None, poll_s: float = POLL_S) -> T:
    """``fn()`` in this thread while a watcher calls ``check``; when ``check`` raises, ``fn`` is
    interrupted and that exception is raised here instead of ``fn``'s result. ``check=None``: just
    ``fn()``. Every point where the interrupt can land, up to the watcher's end, is inside the one
    ``try`` below, so none escapes this call."""
    if check is None:
        return fn()
    target = threading.get_ident()
    lock = threading.Lock()
    stop = threading.Event()
    state: dict = {"raised": None, "sent": False}

    def watch() -> None:
        while not stop.wait(poll_s):
            if state["raised"] is None:
                try:
                    check()
                    continue
                except BaseException as exc:  # noqa: BLE001 - whatever check raises is raised by the call
                    state["raised"] = exc
            with lock:  # sent again every poll: a library that swallowed one interrupt gets the next
                if stop.is_set():
                    return
                _send(target, Interrupted)
                state["sent"] = True

    watcher = threading.Thread(target=watch, name="interrupt-watcher", daemon=True)
    result: T | None = None
    failed: BaseException | None = None  # what ``fn`` raised itself (a check of its own, an error)
    started = done = False
    while True:
        try:
            if not started:
                started = True
                watcher.start()
            if not done:
                done = True
                try:
                    result = fn()
                except Interrupted:
                    raise
                except BaseException as exc:  # noqa: BLE001 - raised below, once the watcher is stopped
                    failed = exc
            with lock:
                stop.set()
                if state["sent"]:
                    _send(target, None)  # clear one not yet delivered: it must not fire after this call
            break
        except Interrupted:
            continue
    watcher.join()
    if state["raised"] is not None:
        raise state["raised"]
    if failed is not None:
        raise failed
    return result  # type: ignore[return-value]
