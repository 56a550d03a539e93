# quaymirror: one image for every role. Default: `quaymirror serve` (API + in-process worker,
# embedded SQLite, OCI layout under /data). `serve --no-worker` and `worker` give the production
# topology (set QUAYMIRROR_DATABASE_URL to PostgreSQL).
#
# BASE can be any Debian-based image with python3 and its venv module (CI builds on a local
# debootstrap base). A ./wheels folder in the build context, when present, is installed offline.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
COPY . /src
RUN python3 -m venv /opt/quaymirror \
 && if [ -d /src/wheels ]; then \
      /opt/quaymirror/bin/pip install --no-cache-dir --no-index --find-links /src/wheels quaymirror; \
    else \
      /opt/quaymirror/bin/pip install --no-cache-dir /src; \
    fi

FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends skopeo tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man \
 && useradd --system --create-home --home-dir /home/quaymirror --uid 10001 quaymirror \
 && mkdir -p /data && chown quaymirror /data
COPY --from=build /opt/quaymirror /opt/quaymirror

USER quaymirror
ENV QUAYMIRROR_INSTANCE_PATH=/data \
    PATH=/opt/quaymirror/bin:$PATH \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 8080
# tini is PID 1: it forwards SIGTERM so gunicorn and the worker stop cleanly and release their claims.
ENTRYPOINT ["tini", "--", "quaymirror"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
