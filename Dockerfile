# syntax=docker/dockerfile:1
# loopsync worker: `loopsync serve -c /config`, every merchant YAML in /config, the state on
# a volume that MUST be mounted at /state (the worker refuses to start without it).
#
#   docker build -t loopsync --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg SOURCE=<the repository's URL> .
#
# The base image is pinned by digest: a tag moves, and two builds of one commit must get
# one Python and one Debian. Both stages use the same one. To move to a newer 3.11-slim
# (monthly, or for a CVE), on a machine with a registry connection:
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
#   (or: docker pull python:3.11-slim && docker inspect --format '{{index .RepoDigests 0}}' python:3.11-slim)
# put the digest in PYTHON_IMAGE below, build, and run tests/test_container_contract.py.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# -- build: a virtual environment in /opt/loopsync ------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# Dependencies before the source: this layer is rebuilt only when a lock changes. Every
# file's hash is checked (scripts/lock writes them); --no-deps: a lock is the whole list.
# /tmp/build holds the build backend (setuptools, requirements/build.lock) and the pip
# that installs; /opt/loopsync, made without pip, receives the runtime lock only (the
# sandbox extra, graphql-core, is not in it) and is all the image gets.
COPY requirements/build.lock requirements/loopsync.lock /tmp/
RUN python -m venv /tmp/build \
 && /tmp/build/bin/pip install --require-hashes --no-deps -r /tmp/build.lock \
 && python -m venv --without-pip /opt/loopsync \
 && /tmp/build/bin/pip --python /opt/loopsync/bin/python install \
      --require-hashes --no-deps -r /tmp/loopsync.lock
# Then loopsync itself, as a wheel (not the source tree), without dependencies.
COPY pyproject.toml README.md /tmp/src/
COPY src /tmp/src/src
RUN /tmp/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels /tmp/src \
 && /tmp/build/bin/pip --python /opt/loopsync/bin/python install \
      --no-deps --no-index /tmp/wheels/loopsync-*.whl \
 && /opt/loopsync/bin/python -m compileall -q -f --invalidation-mode unchecked-hash \
      /opt/loopsync/lib

# -- the image: the venv on a slim base, nothing else -------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="loopsync" \
      org.opencontainers.image.description="Keeps Loop Returns and warehouse systems in step" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT"
# A numeric user (Kubernetes' runAsNonRoot checks the number), with a passwd entry for ps.
# /state belongs to it, so a fresh named volume mounted there is writable by it (Docker
# copies the folder's owner into an empty volume). No VOLUME: an anonymous volume is lost
# on `docker rm`, and lost state costs a look-up before every effect; the worker instead
# refuses to start until a volume is mounted at /state (LOOPSYNC_REQUIRE_STATE_MOUNT).
RUN groupadd --gid 10001 loopsync \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin loopsync \
 && install -d -m 0700 -o 10001 -g 10001 /state \
 && install -d -m 0755 /config
COPY --from=build /opt/loopsync /opt/loopsync
# Read-only root filesystem: bytecode was compiled at build time (checked by hash, not by
# a source mtime a copy may change) and is never written; temporary files (SQLite's, a
# dry run's copy) go to the state volume; HOME is a folder that does not exist.
ENV PATH=/opt/loopsync/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/nonexistent \
    TMPDIR=/state \
    LOOPSYNC_STATE_DIR=/state \
    LOOPSYNC_REQUIRE_STATE_MOUNT=1
USER 10001:10001
WORKDIR /
# loopsync is PID 1 and handles SIGTERM itself: running cycles stop at their current
# request, checkpoint, and serve exits 0 (run --once: 143). Give it a stop timeout longer
# than two request timeouts (docker run --stop-timeout 75; the default 10 s may cut it).
STOPSIGNAL SIGTERM
# With the listener on (LOOPSYNC_HTTP), /healthz, the scheduler's heartbeat; without it,
# `loopsync status --check -c /config` (STALLED or BLOCKED is unhealthy). Python, not curl.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["python", "-m", "loopsync.healthcheck", "-c", "/config"]
# `python -m loopsync` installs the signal handlers before the CLI's imports, so a SIGTERM
# during start-up is a clean stop too.
ENTRYPOINT ["python", "-m", "loopsync"]
CMD ["serve", "-c", "/config"]
