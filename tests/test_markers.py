"""The console markers and the progress line: one definition (entrypoint.markers) that the bash
scripts, which cannot import it, must spell the same way, and object names the startup script
builds in bash that must be the run record's."""

from __future__ import annotations

import re

from entrypoint.markers import (
    BOOT_PHASES,
    FAILED_PREFIX,
    FINISHED,
    PHASE_LINE,
    PHASE_MARKER,
    SHUTDOWN,
    phase_line,
    phases_in,
    progress_line,
)
from entrypoint.progress import parse_progress_line
from entrypoint.record import RunPaths, run_prefix
from entrypoint.record.phases import ORDER
from tests.conftest import ROOT

STARTUP = (ROOT / "gcp/startup.sh").read_text()
SHUTDOWN_SH = (ROOT / "gcp/shutdown.sh").read_text()


def _printf_lines(script: str) -> list[str]:
    """Every ``printf 'runner-phase: …\\n'`` format in a script, without its newline."""
    return re.findall(r"printf '(" + re.escape(PHASE_MARKER) + r"[^'\\]*)\\n'", script)


def test_startup_script_prints_its_phase_lines_in_the_markers_format():
    assert "printf '" + PHASE_LINE.replace("{}", "%s") + "\\n' \"$1\"" in STARTUP
    formats = _printf_lines(STARTUP)
    assert PHASE_LINE.replace("{}", "%s") in formats
    assert phase_line(FAILED_PREFIX + "%s") in formats
    assert phase_line(FINISHED) in formats


def test_startup_script_walks_the_boot_phases_the_markers_module_names_in_order():
    called = re.findall(r"^\s*phase ([a-z-]+)\s*$", STARTUP, re.M)
    assert tuple(called) == BOOT_PHASES


def test_shutdown_script_prints_the_shutdown_marker():
    assert phase_line(SHUTDOWN) in _printf_lines(SHUTDOWN_SH)


def test_phases_are_read_back_from_a_console_with_other_output():
    console = "kernel noise\n" + phase_line("docker") + "\nmore\n" + phase_line("gpu-driver") + "\n"
    assert phases_in(console) == ["docker", "gpu-driver"]


def test_the_progress_line_a_job_prints_is_the_one_the_agent_parses():
    line = progress_line(12, 100, loss=0.5)
    assert line == "RUNNER_PROGRESS step=12 total=100 loss=0.5"
    assert parse_progress_line(line) == {"step": 12, "total": 100, "loss": 0.5}


def test_the_startup_script_writes_startup_json_where_the_record_reads_it():
    # bash builds the name itself (it has no python); it must be the record's name for it.
    m = re.search(r"printf '%sruns/%s/attempts/%s/startup\.json' \"\$OBJ_PREFIX\" \"\$RUN_ID\" \"\$ATTEMPT\"", STARTUP)
    assert m, "startup.sh no longer names startup.json as expected: update this test and the record"
    assert "runs/%s/attempts/%s/startup.json" % ("exp-1", 7) == run_prefix("exp-1") + RunPaths.startup_name(7)


def test_the_startup_script_marks_phases_where_the_record_reads_them():
    m = re.search(r'name="\$\{OBJ_PREFIX\}(runs/\$RUN_ID/attempts/\$ATTEMPT/phases/\$1\.json)"', STARTUP)
    assert m, "startup.sh no longer names its phase marks as expected: update this test and the record"
    built = m.group(1).replace("$RUN_ID", "exp-1").replace("$ATTEMPT", "7").replace("$1", "driver_ready")
    assert built == run_prefix("exp-1") + RunPaths.phase_name(7, "driver_ready")
    for phase in re.findall(r"^\s*mark ([a-z_]+) ", STARTUP, re.M):
        assert phase in ORDER, phase


def test_the_startup_script_points_at_the_log_the_agent_writes():
    m = re.search(r"gs://\$BUCKET/\$\{OBJ_PREFIX\}(runs/\$RUN_ID/logs/\$ATTEMPT\.log)", STARTUP)
    assert m
    assert m.group(1).replace("$RUN_ID", "exp-1").replace("$ATTEMPT", "7") == \
        run_prefix("exp-1") + RunPaths.log_name(7)
