"""The tests' support package: what more than one test module, the benchmarks or the CI scripts use.

Helpers (imported by name):

- ``tests.common.ports``: :func:`free_port`, :func:`wait_for`
- ``tests.common.registry``: :class:`Registry`, :func:`hung_server`, :func:`authfile`
- ``tests.common.images``: :func:`build_layout`, :func:`push_layout`, :func:`push_images`
- ``tests.common.mirrors``: mirror rows made in the database, a gated proxy, skopeo process scans
- ``tests.common.quay_captures``: Quay's recorded exchanges, loaded and sent (the two capture replays)
- ``tests.common.servers``: ``quaymirror serve`` / ``quaymirror worker`` processes; ``tests.common.loopback``:
  recording HTTP servers; ``tests.common.migrations``: alembic revisions

Fixture modules, loaded through ``pytest_plugins`` in the root conftest (a test names a fixture, never
imports it): ``database`` (backends, settings, app, client), ``world`` (Quay's initdb fixtures),
``authz`` (the authorization matrix), ``mirror_api`` (Quay's DNS and bodies), ``registries``,
``worker``, ``live_server`` (a served PostgreSQL database for the e2e tier), ``pgcluster``.
"""
