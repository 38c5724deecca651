"""Wall time of ``runner --help`` (target < 0.3 s: cloud libraries must be imported lazily)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

TARGET_S = 0.3


def main(runs: int = 15) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "runner.cli", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(f"runner --help: median {med * 1000:.0f} ms over {runs} runs (max {max(times) * 1000:.0f} ms); "
          f"target {TARGET_S * 1000:.0f} ms; target/actual = {TARGET_S / med:.2f} (>= 1 meets it)")
    return med
