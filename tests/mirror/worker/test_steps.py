"""The run's seams, used as the next features will use them: a tag step between the check and the copy, and a
configuration source of the run's own. Against real skopeo and a real docker-registry on loopback.
"""

from __future__ import annotations

import dataclasses
import threading

from quaymirror.mirror.models import RunStatus, TagOutcome
from quaymirror.mirror.worker.recorder import TagResult
from quaymirror.mirror.worker.run import MirrorRun
from quaymirror.mirror.worker.run_config import load_mirror
from quaymirror.mirror.worker.skopeo import ProcessGroup
from quaymirror.mirror.worker.steps import CheckTag, CopyTag, TagContext, TagPlan, TagStep
from tests.common.images import push_images
from tests.common.mirrors import claim_due, layout_tags

ENDED = "ended by the test's step"


class EndOne(TagStep):
    """A step as a platform filter would be: it sees each checked tag, ends one of them, passes the others on."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.seen: list[TagPlan] = []
        self._lock = threading.Lock()

    def run(self, context: TagContext, plan: TagPlan, slot: int) -> TagPlan | TagResult | None:
        with self._lock:
            self.seen.append(plan)
        if plan.tag == self.tag:
            return TagResult(plan.tag, TagOutcome.FAILED, digest=plan.digest, reason="unknown_error", message=ENDED)
        return plan


def test_a_step_between_check_and_copy_ends_a_tag_or_passes_it_on(registry, wsettings, database, mirrors,
                                                                   tmp_path, markers):
    markers.append(registry.host)
    digests = push_images(registry, "up/app", ["a", "b", "c"], workdir=tmp_path / "img")  # a and c: indexes
    config_id = mirrors.create("org/app", f"{registry.host}/up/app", ["*"])
    step = EndOne("b")
    run = MirrorRun(wsettings, database, claim_due(database), ProcessGroup(), tag_steps=[CheckTag(), step, CopyTag()])
    assert run.execute() == RunStatus.FAIL
    # The step saw every tag once, as the check left it: the upstream digest, and whether it is an index.
    assert sorted((p.tag, p.digest, p.is_index) for p in step.seen) == [
        ("a", digests["a"], True), ("b", digests["b"], False), ("c", digests["c"], True)]
    [history_row] = mirrors.runs(config_id)
    assert (history_row.status, history_row.reason, history_row.tags_copied, history_row.tags_failed) == (
        "FAIL", "unknown_error", 2, 1)
    assert history_row.message == f"1 of 3 tags failed; b: {ENDED}"
    tags = mirrors.tags(history_row.id)
    assert {tag: row.outcome for tag, row in tags.items()} == {"a": "copied", "b": "failed", "c": "copied"}
    assert tags["b"].output == ENDED
    assert layout_tags(wsettings, "org/app") == {"a": digests["a"], "c": digests["c"]}  # b was never copied


def test_the_run_mirrors_what_its_source_says(registry, wsettings, database, mirrors, tmp_path, markers):
    """The row's rule matches every tag; the run's source narrows it, and the run follows its source."""
    markers.append(registry.host)
    digests = push_images(registry, "up/app", ["a", "b"], workdir=tmp_path / "img")
    config_id = mirrors.create("org/app", f"{registry.host}/up/app", ["*"])

    def source():
        return dataclasses.replace(load_mirror(database, wsettings, config_id), rules=["b"])

    run = MirrorRun(wsettings, database, claim_due(database), ProcessGroup(), source=source)
    assert run.execute() == RunStatus.SUCCESS
    assert layout_tags(wsettings, "org/app") == {"b": digests["b"]}
    [history_row] = mirrors.runs(config_id)
    assert (history_row.tags_matched, history_row.tags_copied) == (1, 1)
