# Two stages (after astral-sh/uv-docker-example multistage.Dockerfile): the builder installs the
# locked dependencies, then the project, into /app/.venv; the runtime stage gets only that venv.
# Both stages start from the same base, so the venv's interpreter path is valid in the runtime.
#
# No `# syntax=` line: BuildKit would pull that frontend from a registry, and the built-in one
# already supports `RUN --mount`. Build arguments, with the public defaults:
#   BASE_IMAGE  any Debian-like image with Python 3.11 and venv (tests/deploy builds on a
#               debootstrap'd Debian bookworm where no registry can be reached)
#   UV_VERSION  the uv the Makefile pins, installed from PyPI (no registry image needed)
#   VERSION     the package version, for the image label (the release workflow passes it)
# A host CA bundle (a TLS-inspecting proxy) can be passed as the build secret `ca-certificates`;
# it is mounted for the install steps only and never stored in a layer.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ARG UV_VERSION=0.13.9
# Compile bytecode at build time: the runtime file system is read-only.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=0 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src

# uv from PyPI into a throw-away venv of its own (the builder stage is not shipped).
RUN --mount=type=secret,id=ca-certificates,required=false \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
    && python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"

# Dependencies first, from the lock file alone: this layer is rebuilt only when they change.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=secret,id=ca-certificates,required=false \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    if [ -s /run/secrets/ca-certificates ]; then export SSL_CERT_FILE=/run/secrets/ca-certificates; fi \
    && /opt/uv/bin/uv sync --frozen --no-dev --no-install-project

# Then the project itself, installed as a wheel (not editable): /src is not needed at run time.
COPY pyproject.toml uv.lock README.md ./
COPY daemon ./daemon
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=secret,id=ca-certificates,required=false \
    if [ -s /run/secrets/ca-certificates ]; then export SSL_CERT_FILE=/run/secrets/ca-certificates; fi \
    && /opt/uv/bin/uv sync --frozen --no-dev --no-editable


FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pivotal-sync" \
      org.opencontainers.image.description="Mirror CRM change events from Kafka into the Pivotal API, within its rate limit." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/pivotal-sync/pivotal-sync" \
      org.opencontainers.image.documentation="https://github.com/pivotal-sync/pivotal-sync/blob/main/docs/operations.md"

# A numeric, non-root user: Kubernetes can verify runAsNonRoot without a passwd lookup.
RUN groupadd --system --gid 10001 pivotal \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pivotal

# Owned by root and read-only to the daemon; nothing under it is written at run time.
COPY --from=builder /app/.venv /app/.venv

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIVOTAL_SYNC_HTTP_PORT=9000

USER 10001:10001
EXPOSE 9000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PIVOTAL_SYNC_HTTP_PORT\", \"9000\")}/livez', timeout=2)"]
ENTRYPOINT ["pivotal-sync"]
CMD ["run"]
