"""Commands that run to completion stop on SIGTERM/SIGINT with 128 + the signal's number."""

import asyncio
import os
import signal

import pytest

from daemon.signals import run_until_signalled


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_cancels_the_command_and_gives_its_exit_code(sig: signal.Signals) -> None:
    """The running coroutine is cancelled (its cleanup runs) and the code is 128 + signal."""
    cleaned_up: list[bool] = []

    async def command() -> int:
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), sig)
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.append(True)
        return 0

    assert run_until_signalled(command()) == 128 + sig.value
    assert cleaned_up == [True]


def test_a_command_that_finishes_returns_its_own_exit_code() -> None:
    """Without a signal the command's own exit code comes back, handlers removed after."""

    async def command() -> int:
        return 3

    assert run_until_signalled(command()) == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_cancellation_that_is_not_a_signal_propagates() -> None:
    """A command cancelled from inside is an error, not a clean stop."""

    async def command() -> int:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)
        return 0

    with pytest.raises(asyncio.CancelledError):
        run_until_signalled(command())
