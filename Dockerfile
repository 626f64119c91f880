# loopsync worker: `loopsync serve` over every merchant YAML in /config.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 loopsync \
 && mkdir -p /state /config && chown loopsync /state
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install .

USER loopsync
# Relative state paths resolve under LOOPSYNC_STATE_DIR: the default state_path is
# /state/<merchant>.sqlite, on the volume, writable by the loopsync user. An absolute
# state_path must point there too.
ENV LOOPSYNC_STATE_DIR=/state
WORKDIR /
VOLUME ["/state"]
# Exec form: loopsync is PID 1 and receives SIGTERM itself; it finishes the current page,
# checkpoints and exits 0. Give it a stop grace period longer than one request timeout.
# `python -m loopsync` installs the signal handlers before the CLI's imports, so even a
# SIGTERM during start-up is a clean stop.
ENTRYPOINT ["python", "-m", "loopsync"]
CMD ["serve", "-c", "/config"]
