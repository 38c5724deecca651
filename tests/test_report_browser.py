"""``runner ops report`` in a real browser: headless Chromium (Debian's ``chromium``) loads the
page the CLI wrote, takes a screenshot, and the DOM it built is checked against the record: the
bands, the markers and the cost figures.

Two runs, each preempted twice: one written through the record API on a priced GCE shape (so the
money is not zero), and one real run of the local backend (real containers, the real agent and
supervisor, two `ops preempt`s). Skipped, with the reason, only where no Chromium can start.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from entrypoint.record import RunRecord
from entrypoint.store_local import LocalStore
from runner.ops.cost import estimate_run_cost, load_prices
from tests.browser import Dom, dump_dom, png_size, print_to_pdf, screenshot, why_no_chromium
from tests.conftest import IMAGE, trainer
from tests.report_runs import install_clock, preempted_twice, write_prices
from tests.test_report import cli

pytestmark = pytest.mark.skipif(why_no_chromium() is not None, reason=why_no_chromium() or "")


def _events(store_dir: Path, run_id: str) -> list[dict]:
    folder = store_dir / "runs" / run_id / "events"
    return [json.loads(p.read_text()) for p in sorted(folder.iterdir())]


def _check_page_against_record(dom: Dom, store_dir: Path, run_id: str, attempts: int) -> None:
    """The bands and markers the browser built are the record's attempts and preemptions."""
    bands = dom.find("band", tag="g")
    assert [int(b.attrs["data-attempt"]) for b in bands] == list(range(1, attempts + 1))
    events = _events(store_dir, run_id)
    ended = {ev["attempt"]: ev for ev in events if ev.get("to") in ("PREEMPTED", "SUCCEEDED")}
    assert [b.attrs["data-state"] for b in bands] == [ended[n]["to"] for n in range(1, attempts + 1)]
    assert [float(b.attrs["data-end"]) for b in bands] == pytest.approx(
        [ended[n]["time"] for n in range(1, attempts + 1)], abs=1e-3)
    markers = dom.find("marker", tag="g")
    preempted = [ev for ev in events if ev.get("to") == "PREEMPTED"]
    assert [(m.attrs["data-kind"], int(m.attrs["data-attempt"])) for m in markers] == [
        ("preempted", ev["attempt"]) for ev in preempted]
    assert [float(m.attrs["data-time"]) for m in markers] == pytest.approx([ev["time"] for ev in preempted], abs=1e-3)
    assert dom.by_id("preemptions").text == str(len(preempted))
    assert not dom.find(tag="script")


def test_chromium_shows_a_priced_run_preempted_twice_as_its_record_says(tmp_path, monkeypatch):
    clock = install_clock(monkeypatch)
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    store = LocalStore(str(store_dir))
    rec = preempted_twice(store, clock, run_id="twice").rec
    prices_path = write_prices(tmp_path)
    out = cli(store_dir, "--run-id", "twice", "--out", "twice.html", prices_path=prices_path)
    assert out.returncode == 0, out.stderr
    html = store_dir / "twice.html"

    dom = Dom(dump_dom(html))

    _check_page_against_record(dom, store_dir, "twice", attempts=3)
    assert [b.attrs["data-zone"] for b in dom.find("band", tag="g")] == ["us-central1-a", "europe-west4-b",
                                                                          "us-central1-a"]
    est = estimate_run_cost(rec, load_prices(prices_path), now=1e12)  # finished: now does not matter
    assert float(dom.by_id("cost-spot").attrs["data-value"]) == pytest.approx(est["so_far"])
    assert dom.by_id("cost-spot").text == "$5.21"
    assert float(dom.by_id("cost-lost").attrs["data-value"]) == pytest.approx(est["lost_to_preemptions"])
    assert float(dom.by_id("cost-on-demand").attrs["data-value"]) == pytest.approx(4.0 * 12500 / 3600)
    assert dom.by_id("steps-redone").text == "90"
    phases = dom.find("phase", tag="rect")
    assert {p.attrs["data-phase"] for p in phases if p.attrs["data-attempt"] == "2"} >= {"detect", "create", "first_step"}

    png = screenshot(html, tmp_path / "twice.png", 1100, 1400)
    assert png_size(png) == (1100, 1400) and png.stat().st_size > 20_000  # painted, not a blank page
    narrow = screenshot(html, tmp_path / "narrow.png", 380, 800)  # a phone: still renders
    assert png_size(narrow) == (380, 800)
    pdf = print_to_pdf(html, tmp_path / "twice.pdf")  # and it prints
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000


@pytest.mark.docker
def test_chromium_shows_a_real_local_run_preempted_twice(runner, run_id, tmp_path):
    """A real run: the trainer in its container, a supervisor, two preemptions through the CLI.

    With RUNNER_REPORT_SCREENSHOT=PATH the screenshot is also copied there (docs/report.png)."""
    # The job waits at steps 20 and 50 for each notice (--hold-at): a loaded machine cannot let it
    # run past them, or to its end, before `ops preempt` lands.
    out = runner("submit", "--run-id", run_id, "--image", IMAGE, "--detach", "--",
                 *trainer(80, 5, 0.1, "--hold-at", "20", "--hold-at", "50"))
    assert out.returncode == 0, out.stderr
    sup = runner.popen("supervise", "--run-id", run_id, "--poll-interval", "0.2")
    for attempt, point in ((1, 20), (2, 50)):
        runner.wait_for(lambda: runner.state(run_id).get("attempt") == attempt and runner.step(run_id) >= point,
                        timeout=120, desc=f"attempt {attempt} past step {point}")
        assert runner("ops", "preempt", "--run-id", run_id).returncode == 0
    sup.wait(timeout=180)
    st = runner.state(run_id)
    assert (st["state"], st["attempt"]) == ("SUCCEEDED", 3), st

    made = runner("ops", "report", "--run-id", run_id, "--out", "real.html")
    assert made.returncode == 0, made.stderr
    html = runner.store_dir / "real.html"
    dom = Dom(dump_dom(html))

    _check_page_against_record(dom, runner.store_dir, run_id, attempts=3)
    status = json.loads(runner("ops", "status", "--run-id", run_id, "--json").stdout)
    assert float(dom.by_id("cost-spot").attrs["data-value"]) == status["cost"]["so_far"] == 0  # local: free
    # What the preemptions threw away, as the agent recorded it in each attempt's manifest.
    rec = RunRecord(LocalStore(str(runner.store_dir)), run_id)
    m = [rec.read_manifest(n) for n in (1, 2, 3)]
    redone = sum(max(0, m[i]["last_progress"]["step"] - m[i + 1]["first_progress"]["step"]) for i in (0, 1))
    assert float(dom.by_id("steps-redone").attrs["data-value"]) == redone
    assert [int(li.attrs["data-attempt"]) for li in dom.find(tag="li") if "data-total" in li.attrs] == [1, 2, 3]

    png = screenshot(html, tmp_path / "real.png", 1000, 1500)
    assert png_size(png) == (1000, 1500)
    keep = os.environ.get("RUNNER_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(png, keep)
