"""`make bench` (`python -m bench`): every benchmark in docs/benchmarks.md, one after another.

    python -m bench                      all of them
    python -m bench pipeline ratelimit_e2e   only these, in this order

Each runs as its own process with its own arguments' defaults, so one that fails does not hide
the others' tables; the exit code is non-zero when any failed. Pass arguments to a single
benchmark by running it directly (`python -m bench.pipeline --only throughput`).
"""

from __future__ import annotations

import subprocess
import sys
import time

# The order of docs/benchmarks.md: the offline simulation first (seconds), the end-to-end runs
# after (minutes each).
BENCHMARKS = (
    "ratelimit_sim",
    "formats_decode",
    "intake_parse",
    "held_memory",
    "http_client",
    "sandbox_load",
    "pipeline",
    "catchup",
    "ratelimit_e2e",
)


def main(argv: list[str]) -> int:
    unknown = [name for name in argv if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    failed = []
    for name in argv or BENCHMARKS:
        print(f"\n== bench.{name} ==", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"])
        print(f"== bench.{name}: exit {code} in {time.monotonic() - started:.0f} s ==", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
