"""``runner ops report``: the figures a report shows, from runs written through the real record
API (tests/report_runs.py), checked against the record and against the cost estimate ``ops
status`` gives; the page and its server as a user gets them. No browser here: the browser test
is tests/test_report_browser.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from entrypoint.record import Role, RunRecord, State
from entrypoint.record.sweeps import SweepDoc, create_sweep
from runner.ops.cost import estimate_run_cost, load_prices
from runner.ops.report_data import ReportError, build_report
from runner.ops.report_html import page
from runner.ops.report_serve import report_page, start_server
from tests.conftest import ROOT
from tests.report_runs import (
    ON_DEMAND_HOURLY, SPOT_HOURLY, attempt, install_clock, new_run, preempted_twice, write_prices,
)

NOW = 20000.0


@pytest.fixture
def clock(monkeypatch):
    return install_clock(monkeypatch)


@pytest.fixture
def prices(tmp_path):
    return load_prices(write_prices(tmp_path))


def test_a_run_preempted_twice_has_three_bands_two_markers_and_its_recoveries(local_store, clock, prices):
    preempted_twice(local_store, clock)

    r = build_report(local_store, "twice", prices, now=NOW)

    assert [(b.attempt, b.zone, b.end_state) for b in r.bands] == [
        (1, "us-central1-a", "PREEMPTED"), (2, "europe-west4-b", "PREEMPTED"), (3, "us-central1-a", "SUCCEEDED")]
    assert [(b.start, b.running_at, b.end) for b in r.bands] == [(100, 400, 3600), (3700, 3940, 7800),
                                                                 (7900, 8200, 12800)]
    assert r.zones == ["us-central1-a", "europe-west4-b"]
    assert [(m.kind, m.attempt, m.time) for m in r.markers] == [("preempted", 1, 3600), ("preempted", 2, 7800)]
    assert r.preemptions == 2 and not r.live and r.state == "SUCCEEDED" and r.last_error is None
    assert (r.t0, r.t1) == (0, 12800)
    # Each attempt's way in, from its phase marks: attempt 2's recovery runs from the loss at
    # 3600 (detect 4 s, then the create from the notice at 3604 to the VM at 3740) to its first step at 4000.
    rec2 = next(x for x in r.recoveries if x["attempt"] == 2)
    assert rec2["kind"] == "recovery" and rec2["total_s"] == 400 and rec2["segments_s"]["detect"] == 4
    assert rec2["text"].startswith("recovery 6m40s: detect 4s")
    two = [p for p in r.phases if p.attempt == 2]
    assert [p.name for p in two] == ["detect", "create", "boot", "driver", "pull", "restore", "first_step"]
    assert (two[0].start, two[-1].end) == (3600, 4000)


def test_the_same_report_from_a_gcs_bucket_as_from_a_directory(local_store, gcs_store, clock, prices):
    preempted_twice(local_store, clock)
    preempted_twice(gcs_store, clock)

    here, there = (build_report(s, "twice", prices, now=NOW).to_dict() for s in (local_store, gcs_store))

    assert here == there


def test_progress_rate_and_the_steps_each_preemption_threw_away(local_store, clock, prices):
    preempted_twice(local_store, clock)

    r = build_report(local_store, "twice", prices, now=NOW)

    assert [(p.attempt, p.time, p.step) for p in r.progress] == [
        (1, 460, 0), (1, 3400, 300), (2, 4000, 250), (2, 7500, 600), (3, 8300, 560), (3, 12700, 1000)]
    # Attempt 1 reached step 300, attempt 2 resumed at 250: 50 steps done twice; then 600 → 560.
    assert [(d.attempt, d.last_step, d.resumed_step, d.steps) for d in r.redone] == [(1, 300, 250, 50),
                                                                                     (2, 600, 560, 40)]
    assert r.steps_redone == 90
    assert r.rate == pytest.approx((300 + 350 + 440) / (2940 + 3500 + 4400))
    assert r.effective_rate == pytest.approx(1000 / (12700 - 460))
    assert r.total_steps == 1000


def test_cost_spot_on_demand_and_lost_match_the_estimate_ops_status_gives(local_store, clock, prices):
    rec = preempted_twice(local_store, clock).rec

    r = build_report(local_store, "twice", prices, now=NOW)
    est = estimate_run_cost(rec, prices, NOW)

    billed = 3500 + 4100 + 4900  # created (claim) → ended, each attempt
    assert r.cost["billed_seconds"] == billed == est["billed_seconds"]
    assert r.cost["so_far"] == pytest.approx(SPOT_HOURLY * billed / 3600) == pytest.approx(est["so_far"])
    assert r.cost["on_demand"] == pytest.approx(ON_DEMAND_HOURLY * billed / 3600)
    # Lost: after each preemption the work since the last checkpoint (600 s twice) and the next boot.
    lost = 600 + (240 + 600) + 300
    assert r.cost["lost_seconds"] == lost
    assert r.cost["lost_to_preemptions"] == pytest.approx(SPOT_HOURLY * lost / 3600)
    assert [b.cost for b in r.bands] == pytest.approx([SPOT_HOURLY * s / 3600 for s in (3500, 4100, 4900)])
    assert r.cost_series[0] == (100, 0) and r.cost_series[-1][1] == pytest.approx(r.cost["so_far"])
    assert [c for _, c in r.cost_series] == sorted(c for _, c in r.cost_series)


def test_sync_lag_is_the_newest_checkpoints_age_when_each_attempt_ended(local_store, clock, prices):
    preempted_twice(local_store, clock)

    r = build_report(local_store, "twice", prices, now=NOW)

    assert [(s.attempt, s.time, s.lag_s, s.kind) for s in r.sync] == [
        (1, 3600, 600, "end"), (2, 7800, 600, "end"), (3, 12800, 200, "end")]


def test_an_attempt_that_published_no_checkpoint_has_all_its_work_at_risk(local_store, clock, prices):
    rec = new_run(local_store, clock, "nockpt")
    attempt(rec, clock, 1, created=0, running=60, zone="us-central1-a", first=(70, 0), last=(500, 40), end=600,
            ended=State.PREEMPTED, checkpoint_at=None)

    r = build_report(local_store, "nockpt", prices, now=NOW)

    assert [(s.attempt, s.lag_s) for s in r.sync] == [(1, 600 - 60)]  # since its job started at 60
    assert 'class="sync-lag" data-attempt="1" data-seconds="540.000"' in page([r], ["nockpt"], "t", now=NOW)


def test_the_agents_series_gives_progress_and_a_sync_lag_sawtooth_between_first_and_last_step(local_store, clock,
                                                                                               prices):
    rec = new_run(local_store, clock, "sampled")
    series = {"t": [100, 200, 300, 400, 500], "step": [None, 10, 20, 30, 40],
              "checkpoint_at": [None, None, 250, 250, 450]}
    attempt(rec, clock, 1, created=0, running=60, zone="us-central1-a", first=(150, 5), last=(500, 40), end=520,
            ended=State.PREEMPTED, checkpoint_at=450, series=series)

    r = build_report(local_store, "sampled", prices, now=NOW)

    assert [(p.time, p.step) for p in r.progress] == [(150, 5), (200, 10), (300, 20), (400, 30), (500, 40)]
    # Before the first checkpoint the work at risk grows from the job's start (60); each upload drops it.
    assert [(s.time, s.lag_s, s.kind) for s in r.sync] == [
        (100, 40, "sample"), (200, 140, "sample"), (300, 50, "sample"), (400, 150, "sample"), (500, 50, "sample"),
        (520, 70, "end")]
    assert 'class="sync-series" data-attempt="1"' in page([r], ["sampled"], "t", now=NOW)


def test_a_live_run_counts_to_now_and_only_its_served_page_refreshes(local_store, clock, prices):
    preempted_twice(local_store, clock, final=None)  # attempt 3 still running, its heartbeat at 12700

    r = build_report(local_store, "twice", prices, now=13000)

    assert r.live and r.t1 == 13000 and r.bands[-1].end == 13000 and r.bands[-1].end_state is None
    assert r.sync[-1].kind == "live" and r.sync[-1].lag_s == 12700 - 12600
    assert (r.progress[-2].time, r.progress[-1].time) == (8300, 12700)  # first step mark, then the heartbeat's
    served, live = report_page(local_store, ["twice"], "t", prices, refresh_s=7, now=13000)
    assert live and '<meta http-equiv="refresh" content="7">' in served
    written, _ = report_page(local_store, ["twice"], "t", prices, refresh_s=None, now=13000)
    assert "http-equiv" not in written


def test_a_stall_is_marked_and_counted_with_the_preemptions(local_store, clock, prices):
    rec = new_run(local_store, clock, "stuck")
    attempt(rec, clock, 1, created=0, running=60, zone="us-central1-a", first=(70, 0), last=(200, 13), end=0,
            ended=None, checkpoint_at=150)
    clock.at(900)
    rec.stalled(Role.SUPERVISOR, "supervisor", reason="no progress for 600s")

    r = build_report(local_store, "stuck", prices, now=1000)

    assert [(m.kind, m.attempt, m.time, m.reason) for m in r.markers] == [("stalled", 1, 900, "no progress for 600s")]
    assert r.preemptions == 1 and r.bands[0].end_state == "STALLED"
    assert 'class="marker" data-kind="stalled" data-attempt="1"' in page([r], ["stuck"], "t", now=1000)


def test_a_failed_run_shows_its_last_error(local_store, clock, prices):
    rec = new_run(local_store, clock, "oom")
    attempt(rec, clock, 1, created=0, running=60, zone="us-central1-a", first=(70, 0), last=(500, 40), end=600,
            ended=State.FAILED, checkpoint_at=400)

    r = build_report(local_store, "oom", prices, now=NOW)

    assert r.last_error == "job exited 3: CUDA out of memory (exit code 3)"
    assert [(m.kind, m.attempt) for m in r.markers] == [("failed", 1)]
    html = page([r], ["oom"], "t", now=NOW)
    assert 'id="last-error"' in html and "CUDA out of memory" in html


def test_the_shipped_table_prices_on_demand_and_a_table_without_it_says_the_key_to_add(local_store, clock, tmp_path):
    import json

    preempted_twice(local_store, clock)

    # The shipped table: n1-standard-4 + T4 is $0.15/h spot and $0.54/h on-demand in us-central1,
    # both 1.1x in europe-west4: on-demand is 3.6x the spot cost, attempt by attempt.
    r = build_report(local_store, "twice", load_prices(None), now=NOW)
    assert r.cost["so_far"] > 0 and r.cost["on_demand"] == pytest.approx(r.cost["so_far"] * 3.6, rel=1e-3)

    # A table of its own (another currency: nothing shipped to fall back on) with spot prices only.
    own = tmp_path / "eur.json"
    own.write_text(json.dumps({"as_of": "2026-01-02", "currency": "EUR", "source": "mine", "regions": {
        region: {"machine": {"n1-standard-4": 1.0}, "gpu": {"nvidia-tesla-t4": 0.5}}
        for region in ("us-central1", "europe-west4")}}))
    r = build_report(local_store, "twice", load_prices(str(own)), now=NOW)
    assert r.cost["so_far"] is not None and r.cost["on_demand"] is None
    assert "standard_machine" in r.cost["on_demand_why_unknown"]


def test_text_from_the_record_is_escaped_never_markup(local_store, clock, prices):
    rec = preempted_twice(local_store, clock, final=None).rec
    clock.at(12800)
    rec.failed(Role.SUPERVISOR, "supervisor",
               reason='<script>alert(1)</script><img src="http://example.com/x">')

    html = page([build_report(local_store, "twice", prices, now=NOW)], ["twice"], "t", now=NOW)

    assert "<script" not in html and "<img" not in html and "&lt;script&gt;" in html
    # Nothing to fetch, so the page opens offline: no src, no link but to its own anchors.
    from tests.browser import Dom

    dom = Dom(html)
    assert not [n for n in dom.nodes if "src" in n.attrs or n.tag in ("script", "img", "link", "iframe")]
    assert all(n.attrs["href"].startswith("#") for n in dom.nodes if "href" in n.attrs)


def test_a_run_with_no_attempt_yet_is_a_page_with_nothing_drawn_not_an_error(local_store, clock, prices):
    new_run(local_store, clock, "fresh")

    r = build_report(local_store, "fresh", prices, now=60)

    assert (r.state, r.live, r.bands, r.markers, r.progress) == ("PENDING", True, [], [], [])
    assert r.cost["so_far"] == 0
    assert 'data-state="PENDING"' in page([r], ["fresh"], "t", now=60)


def test_a_torn_manifest_is_named_and_the_rest_of_the_run_still_shows(local_store, clock, prices):
    rec = preempted_twice(local_store, clock).rec
    local_store.write(rec.name(RunRecord.manifest_name(2)), b"{torn")

    r = build_report(local_store, "twice", prices, now=NOW)

    assert [b.attempt for b in r.bands] == [1, 2, 3] and len(r.markers) == 2
    assert [d for d in r.damaged if "attempts/2/manifest.json" in d] == [r.damaged[0]]
    assert r.cost["so_far"] is None and r.cost["on_demand"] is None  # unknown, never a made-up figure
    assert "unreadable, left out" in page([r], ["twice"], "t", now=NOW)


def test_a_manifest_with_nan_or_text_for_numbers_draws_no_nan(local_store, clock, prices):
    rec = preempted_twice(local_store, clock).rec
    doc = rec.read_manifest(2)
    doc.update(last_progress={"step": float("nan"), "time": "soon"}, checkpoint_at=float("inf"))
    rec.write_manifest(2, doc)

    r = build_report(local_store, "twice", prices, now=NOW)
    html = page([r], ["twice"], "t", now=NOW)

    assert [(p.time, p.step) for p in r.progress if p.attempt == 2] == [(4000, 250)]
    import re

    assert not re.search(r"\b(nan|inf|infinity)\b", html, re.IGNORECASE)


def test_an_unknown_run_is_a_report_error_naming_the_store(local_store, prices):
    with pytest.raises(ReportError, match="no run 'nope'"):
        build_report(local_store, "nope", prices)


def test_served_page_is_read_afresh_and_stops_refreshing_when_the_run_ends(local_store, clock, prices):
    rec = preempted_twice(local_store, clock, final=None).rec
    server = start_server(lambda: report_page(local_store, ["twice"], "t", prices, refresh_s=5)[0])
    try:
        assert server.server_address[0] == "127.0.0.1"
        first = urllib.request.urlopen(server.url, timeout=30).read().decode()
        assert 'http-equiv="refresh"' in first and 'data-state="RUNNING"' in first
        clock.at(12800)
        rec.succeeded(Role.AGENT, "agent:vm-3", attempt=3)
        second = urllib.request.urlopen(server.url, timeout=30).read().decode()
        assert "http-equiv" not in second and 'data-state="SUCCEEDED"' in second
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "elsewhere", timeout=30)
        assert e.value.code == 404
    finally:
        server.shutdown()


# ---------------------------------------------------------------- the CLI, as a user runs it

def cli(store_dir, *args, prices_path=None):
    env = {"RUNNER_STORE": f"file://{store_dir}", "RUNNER_BACKEND": "local", "PYTHONPATH": str(ROOT),
           "PATH": "/usr/bin:/bin", **({"RUNNER_PRICE_TABLE": prices_path} if prices_path else {})}
    return subprocess.run([sys.executable, "-m", "runner.cli", "ops", "report", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=store_dir)


def test_cli_writes_one_file_for_a_run_and_a_table_with_sparklines_for_several(tmp_path, clock):
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    from entrypoint.store_local import LocalStore

    store = LocalStore(str(store_dir))
    preempted_twice(store, clock, run_id="a")
    preempted_twice(store, clock, run_id="b", final=State.FAILED)
    prices_path = write_prices(tmp_path)

    one = cli(store_dir, "--run-id", "a", prices_path=prices_path)
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == "report-a.html"
    text = (store_dir / "report-a.html").read_text()
    assert text.count('class="band"') == 3 and text.count('class="marker"') == 2 and "<script" not in text

    two = cli(store_dir, "--run-id", "a", "--run-id", "b", "--out", "-", prices_path=prices_path)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count('class="sparkline"') == 2
    assert 'data-run-id="b" data-state="FAILED"' in two.stdout
    assert f'id="runs-cost" data-value="{2 * 1.5 * 12500 / 3600:.6f}"' in two.stdout  # both runs' spot cost

    figures = json.loads(cli(store_dir, "--run-id", "a", "--json", prices_path=prices_path).stdout)
    assert (figures["preemptions"], figures["steps_redone"], len(figures["bands"])) == (2, 90, 3)
    assert figures["cost"]["so_far"] == pytest.approx(1.5 * 12500 / 3600)

    missing = cli(store_dir, "--run-id", "nope")
    assert missing.returncode == 3 and "no run 'nope'" in missing.stderr
    neither = cli(store_dir)
    assert neither.returncode == 2 and "--run-id" in neither.stderr


def test_cli_reports_a_sweep_by_its_document(tmp_path, clock):
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    from entrypoint.store_local import LocalStore

    store = LocalStore(str(store_dir))
    for rid in ("sw-000", "sw-001"):
        preempted_twice(store, clock, run_id=rid)
    create_sweep(store, SweepDoc(sweep_id="sw", command=["train"], image="sha256:abc",
                                 runs=[{"run_id": r, "params": {}} for r in ("sw-000", "sw-001", "sw-002")]))

    out = cli(store_dir, "--sweep", "sw", "--out", "sweep.html")

    assert out.returncode == 0, out.stderr
    text = (store_dir / "sweep.html").read_text()
    assert text.count('class="sparkline"') == 2  # sw-002 was never submitted: its row says so
    assert 'data-run-id="sw-002"' in text and "no run &#x27;sw-002&#x27;" in text
    assert json.dumps("sweep sw")[1:-1] in text


def test_cli_serves_the_page_on_loopback_until_stopped(tmp_path, clock):
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    from entrypoint.store_local import LocalStore

    preempted_twice(LocalStore(str(store_dir)), clock, run_id="live", final=None)
    env = {"RUNNER_STORE": f"file://{store_dir}", "RUNNER_BACKEND": "local", "PYTHONPATH": str(ROOT),
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "ops", "report", "--run-id", "live", "--serve",
                             "--refresh", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()  # printed once listening
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
        served = urllib.request.urlopen(url, timeout=30).read().decode()
        assert '<meta http-equiv="refresh" content="3">' in served and served.count('class="band"') == 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)
