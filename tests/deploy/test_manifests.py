"""The Kubernetes manifests in deploy/ are valid for Kubernetes and run commands our CLI accepts."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from quaymirror.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


DOCS = _documents()


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    template = spec.get("template", {}).get("spec", {})
    return template.get("containers", [])


def _by_name(name: str) -> dict:
    return next(doc for label, doc in DOCS if doc["metadata"]["name"] == name and doc["kind"] != "Service")


def test_every_kind_is_present():
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _label, doc in DOCS}
    assert kinds == {
        ("Secret", "quaymirror"),
        ("Job", "quaymirror-migrate"),
        ("Deployment", "quaymirror-api"),
        ("Service", "quaymirror"),
        ("Deployment", "quaymirror-worker"),
    }


@pytest.mark.parametrize(("label", "doc"), DOCS, ids=[label for label, _doc in DOCS])
def test_manifest_is_valid_kubernetes(label, doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(("label", "doc"), DOCS, ids=[label for label, _doc in DOCS])
def test_container_args_are_quaymirror_commands(label, doc):
    for container in _containers(doc):
        args = build_parser().parse_args(container["args"])
        assert callable(args.func)


def test_roles():
    api = _containers(_by_name("quaymirror-api"))[0]
    assert "--no-worker" in api["args"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert _containers(_by_name("quaymirror-worker"))[0]["args"] == ["worker"]
    assert _containers(_by_name("quaymirror-migrate"))[0]["args"] == ["db", "upgrade"]


def test_secrets_come_from_the_secret():
    secret_keys = set(_by_name("quaymirror")["stringData"])
    for _label, doc in DOCS:
        for container in _containers(doc):
            env = {item["name"]: item for item in container.get("env", [])}
            for name in ("QUAYMIRROR_DATABASE_URL", "QUAYMIRROR_SECRET_KEY"):
                ref = env[name]["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "quaymirror" and ref["key"] in secret_keys
