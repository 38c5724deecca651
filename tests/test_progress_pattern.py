"""--progress-regex: steps read from an unmodified job's own output lines (entrypoint/progress_pattern.py).

The pattern is checked at submit (a usage error naming the fix, before anything is written),
pinned in spec.json's settings, and applied by the agent to every output line as if the job had
printed ``RUNNER_PROGRESS step=N total=T``. Python's ``re`` semantics modelled here: one capturing
group is ``Pattern.groups == 1`` ("The number of capturing groups in the pattern",
https://www.python.org/pipermail/python-checkins/2008-December/075598.html).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from entrypoint.progress import ProgressTracker
from entrypoint.progress_pattern import ProgressPattern, regex_problem
from runner.cli.main import main as cli
from runner.config import ConfigError, load_config


@pytest.mark.parametrize("pattern", [r"iter (\d+)", r"step[ :]+([0-9]+)/", r"(?:epoch \d+ )?it=(?P<n>\d{1,9})",
                                     r"^(?:iter|step) (\d+)", r"(?:it (\d+))?$", r"(?:done|it=(\d+))"])
def test_a_pattern_with_one_group_of_digits_is_accepted(pattern: str) -> None:
    assert regex_problem(pattern) is None


@pytest.mark.parametrize("pattern, says", [
    (r"iter \d+", "0 capturing groups"),
    (r"(iter) (\d+)", "2 capturing groups"),
    (r"iter (.+)", "more than digits"),
    (r"iter (\d+|done)", "more than digits"),
    (r"iter (\d)+", "is repeated"),  # a repeated group keeps only its last digit
    (r"(?:a|(\w+))", "more than digits"),
    (r"iter (\d+", "not a valid regular expression"),
])
def test_a_pattern_that_cannot_give_a_step_is_refused_with_the_fix(pattern: str, says: str) -> None:
    problem = regex_problem(pattern)
    assert problem is not None and says in problem and r"'iter (\d+)'" in problem


def test_matching_lines_report_progress_as_the_protocol_would_and_the_protocol_still_wins() -> None:
    t = ProgressTracker(pattern=ProgressPattern(r"iter (\d+)", total=5000))
    t.feed_line("2026-01-01 12:00:00 iter 120: loss 2.3101, time 51.2ms\n")
    assert t.snapshot()[0] == {"step": 120, "total": 5000}
    t.feed_line("step 999 of something else\n")  # not the pattern: nothing changes
    assert t.snapshot()[0] == {"step": 120, "total": 5000}
    t.feed_line("RUNNER_PROGRESS step=130 loss=0.5\n")
    assert t.snapshot()[0] == {"step": 130, "total": 5000, "loss": 0.5}


def test_without_a_pattern_plain_lines_are_not_progress() -> None:
    t = ProgressTracker()
    t.feed_line("iter 120: loss 2.3\n")
    assert t.snapshot() == ({}, None)


def test_a_bad_pattern_is_a_config_problem_naming_its_source() -> None:
    with pytest.raises(ConfigError, match=r"progress_regex from --progress-regex: .* has 2 capturing groups"):
        load_config(cli={"progress_regex": r"(a)(\d+)"}, env={}, config_path=None)
    with pytest.raises(ConfigError, match="progress_total .* needs progress_regex"):
        load_config(cli={"progress_total": 10}, env={}, config_path=None)


def test_submit_pins_the_pattern_in_the_spec(tmp_path) -> None:
    store = tmp_path / "store"
    out = CliRunner().invoke(cli, ["submit", "--store", f"file://{store}", "--run-id", "p-1", "--dry-run",
                                   "--progress-regex", r"iter (\d+)", "--progress-total", "50",
                                   "--image", "img@sha256:" + "0" * 64, "--", "python3", "train.py"])
    assert out.exit_code == 0, out.output
    from runner.launch.submit import build_spec

    spec = build_spec(load_config(cli={"progress_regex": r"iter (\d+)", "progress_total": 50}, env={},
                                  config_path=None),
                      "p-1", ["python3", "train.py"], "img", max_restarts=None, retry_on_failure=None, env={})
    assert (spec.settings["progress_regex"], spec.settings["progress_total"]) == (r"iter (\d+)", 50)
    assert ProgressPattern.from_settings(json.loads(json.dumps(spec.settings))).values("iter 7") == {
        "step": 7, "total": 50}


def test_submit_refuses_a_bad_pattern_before_writing_anything(tmp_path) -> None:
    store = tmp_path / "store"
    out = CliRunner().invoke(cli, ["submit", "--store", f"file://{store}", "--run-id", "p-2",
                                   "--progress-regex", "iter (.+)", "--image", "img", "--", "python3", "t.py"])
    assert out.exit_code == 2, out.output
    assert "more than digits" in out.output
    assert not (store / "runs" / "p-2").exists()
