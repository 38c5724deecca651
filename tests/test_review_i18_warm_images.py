"""Review of issue 18 (warm images): defects found by attack, each shown by a test that fails on
the code under review. Reuses test_warm_image's Compute fake world (the CLI in its own process).
"""

from __future__ import annotations

import json
from typing import Any

from google.cloud import compute_v1

from entrypoint.record import RunRecord
from entrypoint.stores import open_store
from runner.launch.backends.gce_boot_image import WarmKey
from tests.test_warm_image import (  # noqa: F401 - world is a fixture
    COS, DIGEST, PROJECT, BakeGuest, cli, meta, seed_warm_image, spec, world,
)

OTHER_DIGEST = "sha256:" + "d" * 64
OTHER_IMAGE = "us-docker.pkg.dev/p/r/trainer@" + OTHER_DIGEST


def test_delete_all_unused_keeps_the_warm_image_a_live_runs_spec_pins(world):
    """A run submitted yesterday pins image digest D in its spec.json; today's config moved on to
    another digest. `runner images delete --all-unused` must not delete D's warm image: every
    restart of that live run (that is what the warm image is for) would then boot cold, and a create
    already planned against it fails with a 404 on its source image.
    (Compute deletes an image by name, whatever still refers to it: "gcloud compute images delete
    deletes one or more Compute Engine images", https://cloud.google.com/sdk/gcloud/reference/compute/images/delete;
    the Compute fake models it so.)"""
    fake, _guest, env = world
    configured, pinned = WarmKey(COS, "default", DIGEST), WarmKey(COS, "default", OTHER_DIGEST)
    seed_warm_image(fake, configured)
    seed_warm_image(fake, pinned)
    store = open_store(env["RUNNER_STORE"])
    rec = RunRecord(store, "live-run")
    live = spec()
    live = type(live)(**{**live.__dict__, "run_id": "live-run", "image": OTHER_IMAGE})
    rec.write_spec(live)
    rec.create_state("test")  # PENDING: not terminal, the supervisor will (re)start it
    p = cli(env, "delete", "--all-unused")
    assert p.returncode == 0, p.stderr
    assert sorted(i.name for i in fake.images(PROJECT)) == sorted([configured.name, pinned.name]), (
        "the warm image a live run's spec.json pins was deleted as 'unused'")


class RacingBakeGuest(BakeGuest):
    """Another `runner images bake` of the same key (a second CI job, a colleague) finishes while
    this bake's VM is still booting: the image of this key exists, READY, before our insert."""

    def on_running(self, project: str, zone: str, name: str, instance: Any) -> None:
        if meta(instance).get("runner-bake"):
            seed_warm_image(self.fake, WarmKey(COS, "default", DIGEST))
        super().on_running(project, zone, name, instance)


def test_a_bake_that_loses_the_race_keeps_the_image_the_other_bake_made(world):
    """images.insert of a name that exists is refused (409 alreadyExists, as the Compute fake
    models it; image names are unique per project: https://cloud.google.com/compute/docs/reference/latest/images/insert).
    bake() then deletes "the image it began" - which is the OTHER bake's READY
    image: every run's next create boots cold, and the user is told the bake failed."""
    fake, _guest, env = world
    fake.guest = RacingBakeGuest(fake)
    key = WarmKey(COS, "default", DIGEST)
    p = cli(env, "bake")
    names = [i.name for i in fake.images(PROJECT)]
    assert names == [key.name], f"the other bake's image was deleted (bake rc={p.returncode}: {p.stderr[-400:]})"
    assert fake.instances() == []
