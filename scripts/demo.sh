#!/usr/bin/env bash
# The demo: one run of the example trainer on the local backend, preempted once midway.
# The attached supervisor restarts it; the job resumes from last.pt and finishes.
set -euo pipefail
IMAGE=${IMAGE:-cos-spot-runner/workload:dev}
RUN=${RUN_ID:-demo-$(date +%Y%m%d-%H%M%S)}
STEPS=${STEPS:-60}
export RUNNER_STORE=${RUNNER_STORE:-file://$PWD/.runner/store}
export RUNNER_POLL_INTERVAL=${RUNNER_POLL_INTERVAL:-1}
export RUNNER_SYNC_INTERVAL=${RUNNER_SYNC_INTERVAL:-1}
export RUNNER_HEARTBEAT_INTERVAL=${RUNNER_HEARTBEAT_INTERVAL:-1}
export RUNNER_GRACE_PERIOD=${RUNNER_GRACE_PERIOD:-10}
# Local runs wait for no GPU; keep the stall window (poll x polls) above the GPU wait all the same.
export RUNNER_STALL_POLLS=${RUNNER_STALL_POLLS:-600}
mkdir -p "${RUNNER_STORE#file://}"

step() { runner ops status --run-id "$RUN" --json 2>/dev/null \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["progress"].get("step", 0))' 2>/dev/null || echo 0; }

echo "== runner submit --run-id $RUN (store $RUNNER_STORE)" >&2
runner submit --run-id "$RUN" --image "$IMAGE" -- \
  python3 -m examples.trainer --steps "$STEPS" --checkpoint-every 5 --step-time 0.2 &
submit_pid=$!

half=$((STEPS / 2))
until [ "$(step)" -ge "$half" ]; do
  kill -0 "$submit_pid" 2>/dev/null || break
  sleep 0.5
done
echo "== runner ops preempt --run-id $RUN   (at step $(step))" >&2
runner ops preempt --run-id "$RUN"

wait "$submit_pid"
echo "== runner ops status --run-id $RUN" >&2
runner ops status --run-id "$RUN"
echo "== what the job itself said (runner ops logs)" >&2
runner ops logs --run-id "$RUN" | grep -E "^(=====|trainer:)"
echo "== results/summary.json" >&2
cat "${RUNNER_STORE#file://}/runs/$RUN/results/summary.json"; echo
