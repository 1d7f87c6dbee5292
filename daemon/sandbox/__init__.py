"""The stand-in Pivotal API: a fast, stateful, faithful sandbox for tests, the demo and benchmarks.

    config     start-up settings, keys and every (assumed) choice
    clock      injectable wall time (ManualClock in testing)
    window     the per-key sliding-window limiter
    state      workspaces, records (soft-deleted, never removed), the idempotency cache
    validation Zod-like body checks and the run-time rules
    resources  one handler per endpoint
    faults     injected 5xx, latency, drops and 429 storms
    stats      counters and the bounded request log
    runtime    the shared `Sandbox` object
    app        the Starlette app and the request pipeline
    admin      /_sandbox/ inspection and control
    server     `pivotal-sync sandbox`
    testing    ManualClock, SandboxAdmin, running_sandbox

See docs/sandbox.md.
"""
