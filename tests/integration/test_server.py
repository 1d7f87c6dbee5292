"""The HTTP endpoints served for real, as the daemon serves them: uvicorn on a loopback port in
the daemon's own event loop, probed over a socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import Metrics
from daemon.server import create_app, serve
from devtools.local_services import LOOPBACK, free_port

START_SECONDS = 10.0


@dataclass
class Served:
    client: httpx.AsyncClient
    metrics: Metrics
    reasons: list[str] = field(default_factory=list)


async def wait_until_listening(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(START_SECONDS):
        while True:
            try:
                await client.get("/livez")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.02)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """The app on a free port; its readiness is whatever the test puts in `reasons`."""
    metrics, reasons = Metrics(), list[str]()
    port, stop = free_port(), asyncio.Event()
    server = asyncio.create_task(
        serve(create_app(metrics, lambda: list(reasons)), port, stop, host=LOOPBACK)
    )
    async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}", timeout=5) as client:
        try:
            await wait_until_listening(client)
            yield Served(client, metrics, reasons)
        finally:
            stop.set()
            await asyncio.wait_for(server, START_SECONDS)


async def test_livez_answers_ok_even_when_not_ready(served: Served) -> None:
    """Liveness is only "the loop answers": a not-ready daemon is still alive."""
    served.reasons.append("postgres unreachable")
    answer = await served.client.get("/livez")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


async def test_readyz_answers_200_when_there_is_no_reason(served: Served) -> None:
    """No reason: 200 and the ready gauge at 1."""
    answer = await served.client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ready"}
    assert served.metrics.registry.get_sample_value("pivotal_sync_ready") == 1


async def test_readyz_answers_503_with_every_reason(served: Served) -> None:
    """With reasons, 503 and all of them in the body, asked afresh on every probe."""
    served.reasons += ["starting", "kafka not connected"]
    answer = await served.client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "not ready", "reasons": ["starting", "kafka not connected"]}
    assert served.metrics.registry.get_sample_value("pivotal_sync_ready") == 0

    served.reasons.clear()
    assert (await served.client.get("/readyz")).status_code == 200


async def test_metrics_are_prometheus_text_with_the_daemons_series(served: Served) -> None:
    """/metrics parses as the Prometheus text format and carries the daemon's counters and the
    readiness of the moment of the scrape."""
    served.metrics.events_consumed.labels(topic="crm.customers", partition="2").inc(3)
    served.reasons.append("starting")
    answer = await served.client.get("/metrics")
    assert answer.status_code == 200
    media_type, *parameters = answer.headers["content-type"].split("; ")
    assert media_type == "text/plain"
    assert any(p.startswith("version=") for p in parameters)  # the exposition format's
    samples = _samples(answer.text)
    consumed = (
        "pivotal_sync_events_consumed_total",
        (("partition", "2"), ("topic", "crm.customers")),
    )
    assert samples[consumed] == 3
    assert samples[("pivotal_sync_ready", ())] == 0


async def test_metrics_with_names_serves_only_those_samples(served: Served) -> None:
    """`?name[]=` (as prometheus_client's own exporter) narrows the answer to those samples:
    what a tool polling a counter several times a second asks for."""
    served.metrics.events_consumed.labels(topic="crm.customers", partition="0").inc(5)
    served.reasons.append("starting")
    wanted = [
        "pivotal_sync_events_consumed_total",
        "pivotal_sync_ready",
        "process_cpu_seconds_total",  # from a collector without declared names
    ]
    answer = await served.client.get("/metrics", params=[("name[]", name) for name in wanted])
    assert answer.status_code == 200
    samples = _samples(answer.text)
    assert {name for name, _ in samples} == set(wanted)
    consumed = (wanted[0], (("partition", "0"), ("topic", "crm.customers")))
    assert samples[consumed] == 5
    assert samples[("pivotal_sync_ready", ())] == 0  # readiness as of this scrape, still
    everything = _samples((await served.client.get("/metrics")).text)
    assert len(everything) > len(samples)


async def test_metrics_with_a_name_that_matches_nothing_is_empty(served: Served) -> None:
    """Names are sample names as exposed: a family name without its `_total`, or a typo,
    selects nothing (an empty answer, not an error)."""
    for name in ("pivotal_sync_events_consumed", "pivotal_sync_no_such_metric"):
        answer = await served.client.get("/metrics", params={"name[]": name})
        assert answer.status_code == 200
        assert _samples(answer.text) == {}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_an_unknown_path_is_404(served: Served) -> None:
    """Only the three endpoints exist."""
    assert (await served.client.get("/admin")).status_code == 404


async def test_setting_stop_closes_the_port() -> None:
    """When the daemon stops, serve() returns and the port no longer accepts connections."""
    port, stop = free_port(), asyncio.Event()
    server = asyncio.create_task(serve(create_app(Metrics(), list), port, stop, host=LOOPBACK))
    async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}", timeout=5) as client:
        await wait_until_listening(client)
        stop.set()
        await asyncio.wait_for(server, START_SECONDS)
        with pytest.raises(httpx.ConnectError):
            await client.get("/livez")
