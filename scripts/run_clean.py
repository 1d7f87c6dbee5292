"""Run a command and leave no process behind, however it ends.

The test suite, the demo and the benchmarks start brokers, database servers and sandboxes.
Their fixtures stop them, but a fixture cannot run when pytest is killed, and `pg_ctl` detaches
the Postgres server from its parent. So this wrapper makes itself a *child subreaper* (Linux):
every orphaned descendant is re-parented to it instead of to init, and when the command ends —
success, failure, Ctrl-C or SIGTERM — it terminates whatever descendants remain.

Usage: python scripts/run_clean.py -- COMMAND [ARGS...]
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 10.0


def _become_subreaper() -> None:
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _descendants() -> list[int]:
    # /proc walk instead of psutil: this script must run before anything is installed.
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    stack = [os.getpid()]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _reap_all() -> None:
    pids = _descendants()
    for pid in pids:
        # SIGINT is Postgres' "fast shutdown"; everything else we start treats it as stop.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if not _descendants():
            return
        time.sleep(0.1)
    for pid in _descendants():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        while os.waitpid(-1, 0)[0] > 0:
            pass
    except ChildProcessError:
        pass


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    _become_subreaper()
    child = subprocess.Popen(argv)  # noqa: S603 - the command line is the caller's own

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    # Ctrl-C already reaches the whole foreground process group, the command included; a
    # second SIGINT forwarded from here would interrupt its clean-up. SIGTERM (from a CI
    # runner or `kill`) reaches only us, so it is forwarded.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, forward)
    try:
        status = _wait_reaping(child.pid)
        child.returncode = os.waitstatus_to_exitcode(status)
    finally:
        _reap_all()
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)  # the shell's convention, e.g. 130 for SIGINT
    return os.waitstatus_to_exitcode(status)


def _wait_reaping(pid: int) -> int:
    """Wait for `pid`, reaping re-parented orphans as they exit so no zombies pile up."""
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if reaped == pid:
            return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
