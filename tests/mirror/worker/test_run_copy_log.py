"""A copy says when it starts, not only when it ends (a large image copies for minutes).

Against real skopeo and a real registry; the skopeo wrapper only holds the copy until the test has looked.
"""

from __future__ import annotations

import logging
import shutil
import stat

from tests.common.images import push_images
from tests.common.ports import wait_for


def test_a_copy_is_logged_as_it_starts(registry, database, mirrors, make_worker, tmp_path, markers, caplog):
    caplog.set_level(logging.INFO, logger="quaymirror")
    started, release = tmp_path / "copy-started", tmp_path / "release-copy"
    wrapper = tmp_path / "holding-skopeo"
    # Bounded: gives up holding after 60 s.
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" copy "*)\n  touch {started}\n  n=0\n'
                       f'  while [ ! -e {release} ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done;;\nesac\n'
                       f'exec {shutil.which("skopeo")} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    markers.append(registry.host)
    digests = push_images(registry, "up/app", ["v1"], workdir=tmp_path / "img")
    config_id = mirrors.create("org/app", f"{registry.host}/up/app", ["v1"])
    worker = make_worker(skopeo_path=str(wrapper))
    assert worker.run_pass() == 1
    wait_for(started.exists, 60, what="the copy to start")

    def said() -> list[str]:
        return [record.getMessage() for record in caplog.records if "org/app: cop" in record.getMessage()]

    assert said() == [f"mirror org/app: copying v1 ({digests['v1']})"]  # while skopeo still copies
    release.touch()
    assert worker.wait_idle(60)
    assert mirrors.runs(config_id)[-1].status == "SUCCESS"
    copying, copied = said()
    assert copying == f"mirror org/app: copying v1 ({digests['v1']})"
    assert copied.startswith(f"mirror org/app: copied v1 ({digests['v1']}) in ")
