"""Run by every quaymirror process a test starts (this directory is put first on its ``PYTHONPATH``): the
process's DNS is the fixed table in ``TEST_FIXED_DNS`` (JSON: name -> addresses; any other name does not
resolve), so a server under test, and what a fuzzer sends it, never asks the real DNS for a name."""

import json
import os

_table = os.environ.get("TEST_FIXED_DNS")
if _table is not None:
    from quaymirror.security import ssrf

    ssrf.set_resolver(json.loads(_table))
