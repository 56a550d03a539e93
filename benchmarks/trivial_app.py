"""The in-run baseline of benchmarks/api: a trivial Flask JSON endpoint, nothing else.

``python -m benchmarks.trivial_app PORT WORKERS`` serves it with the production server's own
gunicorn configuration (quaymirror.server.gunicorn_options, the default QUAYMIRROR_API_THREADS),
access log included.
"""

import os
import sys

from flask import Flask, jsonify

from quaymirror import server
from quaymirror.settings import Settings

app = Flask(__name__)


@app.get("/ping")
def ping():
    return jsonify(ok=True)


if __name__ == "__main__":
    threads = int(os.environ.get("QUAYMIRROR_API_THREADS", Settings.api_threads))
    server.run_gunicorn(lambda: app, server.gunicorn_options("127.0.0.1", int(sys.argv[1]), int(sys.argv[2]), threads))
