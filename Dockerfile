# syntax=docker/dockerfile:1
# Two stages (after astral-sh/uv-docker-example multistage.Dockerfile): the builder installs the
# locked dependencies, then the project, into /app/.venv; the runtime stage gets only that venv.
# Both stages use the same Python image, so the venv's interpreter path is valid in the runtime.

FROM python:3.11-slim AS builder
# The uv the Makefile pins (UV_VERSION); tests/deploy checks that they agree.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /bin/uv
# Compile bytecode at build time: the runtime file system is read-only.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=0 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src

# Dependencies first, from the lock file alone: this layer is rebuilt only when they change.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-project

# Then the project itself, installed as a wheel (not editable): /src is not needed at run time.
COPY pyproject.toml uv.lock README.md ./
COPY daemon ./daemon
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable


FROM python:3.11-slim

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
