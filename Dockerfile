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
# Point each merchant's state_path at /state/<merchant>.sqlite and mount a volume here.
VOLUME ["/state"]
# Exec form: loopsync is PID 1 and receives SIGTERM itself; it finishes the current page,
# checkpoints and exits 0. Give it a stop grace period longer than one request timeout.
ENTRYPOINT ["loopsync"]
CMD ["serve", "-c", "/config"]
