"""The in-run baseline of benchmarks/api: a trivial Flask JSON endpoint, nothing else."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/ping")
def ping():
    return jsonify(ok=True)
