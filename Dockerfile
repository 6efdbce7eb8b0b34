# One image for every Airlock role: migrate, worker, watcher, embedded runner.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 AIRLOCK_HOME=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY airlock_sdk ./airlock_sdk
COPY cli ./cli
COPY config ./config
COPY models ./models
COPY pipelines ./pipelines
COPY workers ./workers
RUN pip install --no-cache-dir . flower && useradd --create-home airlock && mkdir -p /data \
    && chown airlock /data
USER airlock
ENTRYPOINT ["airlock"]
CMD ["--help"]
