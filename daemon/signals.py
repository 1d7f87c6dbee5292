"""SIGTERM and SIGINT for the commands that run to completion (`migrate` and the operator tools).

Why this exists: in a container the command is PID 1, and the kernel delivers no signal to
PID 1 that it has not installed a handler for. Without one, `docker stop` or a deleted pod
waits out its whole grace period and ends in SIGKILL, and Ctrl-C in `kubectl exec -it` does
nothing. `run_until_signalled` installs handlers that cancel the command's task: its `async
with` blocks close their connections on the way out, and the exit code is 128 + the signal's
number, as a shell reports it. The daemon (`run`) replaces these handlers with its own, which
drain before stopping (daemon/app.py).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
