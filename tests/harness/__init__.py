"""Test harness: real registries (docker-registry) and offline test images (skopeo).

- ``tests.harness.registry``: :class:`Registry`, :func:`hung_server`, :func:`authfile`
- ``tests.harness.images``: :func:`build_layout`, :func:`push_layout`, :func:`push_images`
- ``tests.harness.fixtures``: pytest fixtures ``registry``, ``auth_registry``, ``tls_registry``
"""
