"""The job's last output reaches the stored log: the agent's final upload waits for its output
pump to reach the end of the pipe (a traceback is usually the last thing a job prints).

The pump also copies each line to the agent's own stdout (the container's console); when that
is slow (docker's log driver, a serial console), the job's pipe still holds up to 64 KiB when the
job exits. Here the agent's stdout is read slowly on purpose to reproduce that.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from tests.test_agent_start_failure import agent_env


def test_the_stored_log_ends_with_the_jobs_last_line_even_behind_a_slow_console(tmp_path):
    script = ("import sys\nw=sys.stdout.write\nfor i in range(20000): w(f'line {i:06d} ' + 'x'*40 + '\\n')\n"
              "w('LAST LINE\\n')")
    env = agent_env(tmp_path, sys.executable, "-c", script, retries=0)
    p = subprocess.Popen([sys.executable, "-m", "entrypoint", "--", sys.executable, "-c", script], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def slow_console() -> None:  # about 1 MB/s
        assert p.stdout is not None
        while p.stdout.read(2048):
            time.sleep(0.002)

    reader = threading.Thread(target=slow_console)
    reader.start()
    assert p.wait(timeout=120) == 0
    reader.join()
    stored = (tmp_path / "store/runs/r/logs/1.log").read_text()
    assert stored.endswith("LAST LINE\n"), stored[-120:]
    assert stored.count("\n") == 20001
