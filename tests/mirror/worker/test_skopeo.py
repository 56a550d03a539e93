"""The proxy environment a skopeo call gets from a mirror's proxy settings."""

from __future__ import annotations

from quaymirror.mirror.worker.skopeo import proxy_env


def test_proxy_env():
    assert proxy_env({}) == {}
    assert proxy_env({"http_proxy": "http://p:3128", "https_proxy": "", "no_proxy": None}) == {
        "HTTP_PROXY": "http://p:3128"}
    assert proxy_env({"https_proxy": "http://p:3128", "no_proxy": "a.example"}, bypass=["dest", "dest:5000"]) == {
        "HTTPS_PROXY": "http://p:3128", "NO_PROXY": "a.example,dest,dest:5000"}
    assert proxy_env(None, bypass=["dest"]) == {}
