"""Two submits of one new run id, interleaved exactly (issue 17 §8; the CLI race itself is in
tests/chaos/test_submit_messages.py).

The other submit runs inside this one's ``prepare`` (after this one found no run, before it
writes its spec), through a backend stand-in whose only difference is that hook: the submit code
and the record are the real ones, on a real local store.
"""

from __future__ import annotations

from typing import Callable

import pytest

from entrypoint.record import RunRecord, RunSpec, State
from entrypoint.store_local import LocalStore
from runner.config import load_config
from runner.launch.context import Context
from runner.launch.submit import SubmitRefused, submit
from tests.standins.memory_backend import MemoryBackend

IMAGE = "img@sha256:" + "a" * 64


class _Meanwhile(MemoryBackend):
    """Runs ``meanwhile`` once, while the submit prepares its spec (another submit at that moment)."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        super().__init__()
        self.meanwhile: Callable[[], None] | None = meanwhile

    def prepare(self, spec: RunSpec) -> RunSpec:
        if self.meanwhile is not None:
            todo, self.meanwhile = self.meanwhile, None
            todo()
        return spec


def _ctx(store: LocalStore, backend: MemoryBackend) -> Context:
    cfg = load_config(cli={"store": store.url, "backend": "local"}, cwd=store.root, env={})
    return Context(cfg, store, backend)


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(str(tmp_path))


def _other_submit(store: LocalStore, command: list[str]) -> Callable[[], None]:
    return lambda: submit(_ctx(store, MemoryBackend()), "r1", command, image=IMAGE, restart=False)


def test_the_loser_of_a_same_command_race_joins_the_live_run(store):
    result = submit(_ctx(store, _Meanwhile(_other_submit(store, ["train"]))), "r1", ["train"], image=IMAGE,
                    restart=False)
    assert result.joined and result.resumed
    assert result.message == "run r1 was just submitted by another submit"
    rec = RunRecord(store, "r1")
    assert rec.read_state()[0].state == State.PENDING
    assert [ev["reason"] for _, ev in rec.events()] == ["submitted"]  # created once


def test_the_loser_of_a_race_with_another_command_is_told_the_id_is_taken(store):
    with pytest.raises(SubmitRefused) as refused:
        submit(_ctx(store, _Meanwhile(_other_submit(store, ["train", "--lr", "1"]))), "r1", ["train"],
               image=IMAGE, restart=False)
    msg = str(refused.value)
    assert msg.startswith("run id r1 is taken: another submit just submitted it with the command train --lr 1, "
                          "not yours (train); yours was not submitted: choose another --run-id")
    assert "generation" not in msg and "--restart" not in msg
    assert RunRecord(store, "r1").read_spec().command == ["train", "--lr", "1"]


def test_a_race_with_a_submit_that_only_wrote_its_spec_says_when_the_id_frees(store):
    def spec_only() -> None:  # another command's submit, between its spec and its state (or dead)
        RunRecord(store, "r1").write_spec(RunSpec(run_id="r1", image=IMAGE, command=["other"], backend="local"))

    with pytest.raises(SubmitRefused, match=r"run id r1 is taken: .*command other, not yours \(train\).*"
                                            r"its spec.json stops holding the id after 600s"):
        submit(_ctx(store, _Meanwhile(spec_only)), "r1", ["train"], image=IMAGE, restart=False)


def test_the_loser_of_a_race_with_other_settings_names_them(store):
    def other_env() -> None:
        submit(_ctx(store, MemoryBackend()), "r1", ["train"], image=IMAGE, restart=False, env={"SEED": "2"})

    with pytest.raises(SubmitRefused, match="the same command with other env; yours was not submitted"):
        submit(_ctx(store, _Meanwhile(other_env)), "r1", ["train"], image=IMAGE, restart=False)
