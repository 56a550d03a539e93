# quaymirror: API + worker in one image. `docker run IMAGE` serves on 8080 with the embedded default;
# `... serve --no-worker` or `... worker` for the production topology.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

RUN apt-get update \
 && apt-get install -y --no-install-recommends skopeo tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --system --create-home --home-dir /home/quaymirror --uid 10001 quaymirror \
 && mkdir -p /data && chown quaymirror /data

COPY pyproject.toml README.md alembic.ini /src/
COPY quaymirror /src/quaymirror
COPY migrations /src/migrations
RUN python3 -m venv /opt/quaymirror && /opt/quaymirror/bin/pip install --no-cache-dir /src

USER quaymirror
ENV QUAYMIRROR_INSTANCE_PATH=/data PATH=/opt/quaymirror/bin:$PATH
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["tini", "--", "quaymirror"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
