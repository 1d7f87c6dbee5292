"""SIGTERM and SIGINT: the daemon stops cleanly from the first line of `run` to the last, and
the commands that run to completion (`migrate`, the operator tools) stop when told.

Why this exists: in a container the command is PID 1, and the kernel delivers no signal to
PID 1 that it has not installed a handler for. Without one, `docker stop` or a deleted pod
waits out its whole grace period and ends in SIGKILL, and Ctrl-C in `kubectl exec -it` does
nothing. Outside PID 1, Python's default for SIGTERM ends the process by the signal (exit -15,
nothing flushed).

- The daemon: Kubernetes sends SIGTERM at any moment of a pod's life, the first second
  included, and the event loop's handlers exist only once the loop runs, after imports and
  settings. So the CLI calls `remember_early` first thing, `handle_in_loop` takes over (and
  honours a signal that came before it), and `remember_early` is put back when the loop is
  gone. A start-up step that could wait long on a dependency (a connect into a blackhole, a
  group join) runs under `or_stop`, so a stop request ends it at once instead of after the
  dependency's own time-out. The daemon drains before stopping (daemon/app.py).
- The other commands: `run_until_signalled` installs handlers that cancel the command's task:
  its `async with` blocks close their connections on the way out, and the exit code is
  128 + the signal's number, as a shell reports it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from types import FrameType
from typing import Any, TypeVar

from daemon.backoff import Stopped

T = TypeVar("T")
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The signal that arrived before the event loop's handlers were in place, if any.
_early: signal.Signals | None = None


def remember_early() -> None:
    """Install process-level handlers that only note the signal: nothing can stop cleanly yet,
    but nothing is lost either, and the daemon stops as soon as it can hear it."""
    for sig in SIGNALS:
        signal.signal(sig, _note)


def _note(signum: int, _frame: FrameType | None) -> None:
    global _early  # noqa: PLW0603 - a signal handler has nowhere else to put it
    _early = signal.Signals(signum)


def early_signal() -> signal.Signals | None:
    return _early


def handle_in_loop(on_signal: Callable[[signal.Signals], None]) -> None:
    """Route the stop signals to `on_signal` in the running loop; replay one that came early."""
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    if _early is not None:
        on_signal(_early)


async def or_stop(step: Awaitable[T], stop: asyncio.Event) -> T:
    """`step`'s result, or `Stopped` as soon as `stop` is set first: the step is cancelled
    without waiting for it to acknowledge (it may be stuck in I/O into a blackhole)."""
    task = asyncio.ensure_future(step)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_drop_abandoned)
    raise Stopped


# Abandoned steps are kept until they end: the loop holds only weak references to tasks.
_abandoned: set[asyncio.Future[Any]] = set()


def _drop_abandoned(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception was never retrieved"


def run_until_signalled(
    main: Coroutine[Any, Any, int],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int:
    """Run `main` to its exit code, or stop it on SIGTERM/SIGINT with 128 + signal number."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_cancelled_on_signal(main))


async def _cancelled_on_signal(main: Coroutine[Any, Any, int]) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        if not received:
            received.append(sig)
            task.cancel()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await main
    except asyncio.CancelledError:
        if not received:
            raise
        # Swallow the cancellation we caused: the command ends with an exit code.
        task.uncancel()
        return 128 + received[0].value
    finally:
        main.close()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
