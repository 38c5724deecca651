#!/bin/bash
# cos-spot-runner: the COS shutdown script. Runs on preemption (about 30 s of notice), on delete
# and on stop.
#
# `docker stop` sends SIGTERM to the agent (PID 1 in the container), which forwards it to the job,
# makes a final checkpoint sync and records PREEMPTED; after the grace period docker kills it.
# Everything here must finish inside the notice, so the grace period is capped and every network
# call has a short timeout.
#
# On a preemption it also asks the hosted supervisor (metadata runner-supervisor-job) for a pass
# at once, in the background: that pass waits the notice out and replaces the run, instead of the
# next scheduled minute's. RUN_API overrides https://run.googleapis.com (tests' stand-ins).
set -uo pipefail   # no -e: each step below handles its own failure; a later step must still run
export LC_ALL=C

METADATA_URL=${METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}
RUN_API=${RUN_API:-https://run.googleapis.com}
CONTAINER=${RUNNER_CONTAINER_NAME:-runner-job}
# The notice is 30 s; leave room for the metadata read and docker's own bookkeeping.
MAX_GRACE=${RUNNER_SHUTDOWN_MAX_GRACE:-25}
# The request for a supervisor pass: well inside the notice, and never waited on before docker stop.
PASS_REQUEST_TIMEOUT=${RUNNER_PASS_REQUEST_TIMEOUT:-8}

md() { curl -sf --max-time 2 -H 'Metadata-Flavor: Google' "$METADATA_URL/$1"; }

# Asks the hosted supervisor (metadata runner-supervisor-job, "" = none) for a pass now, so the
# run is replaced in seconds instead of at the next scheduled minute. Only on a preemption: the
# metadata server's instance/preempted is TRUE then, FALSE on a delete or stop (the supervisor's
# own, or the user's), which must not start a pass
# (https://cloud.google.com/compute/docs/instances/create-use-preemptible#detecting_if_an_instance_was_preempted).
# One line on the console, whatever happens; never fails the script.
ask_for_a_pass() {
  local job preempted body code re='"access_token"[[:space:]]*:[[:space:]]*"([^"]+)"'
  job=$(md instance/attributes/runner-supervisor-job) || job=""
  [[ -n $job ]] || return 0   # no hosted supervisor: nothing changes
  preempted=$(md instance/preempted) || preempted=""
  if [[ $preempted != TRUE ]]; then
    printf 'runner: not a preemption (preempted=%s): no supervisor pass asked\n' "${preempted:-unknown}"
    return 0
  fi
  body=$(md instance/service-accounts/default/token) && [[ $body =~ $re ]] || {
    printf 'runner: no access token from the metadata server: no supervisor pass asked\n'; return 0; }
  # The token goes in a header read from a pipe: never in argv (visible in /proc) nor the output.
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time "$PASS_REQUEST_TIMEOUT" -X POST \
    -H @<(printf 'Authorization: Bearer %s\n' "${BASH_REMATCH[1]}") -H 'Content-Type: application/json' \
    -d '{}' "$RUN_API/v2/$job:run" 2>/dev/null) || code=${code:-000}
  if [[ $code == 200 ]]; then
    printf 'runner: preempted: asked %s for a supervisor pass now\n' "$job"
  else
    printf 'runner: preempted: asking %s for a supervisor pass failed (HTTP %s); the next scheduled pass restarts the run%s\n' \
      "$job" "$code" "$([[ $code == 403 ]] && printf ' (the VM account needs roles/run.invoker on the job: runner supervise --deploy)')"
  fi
}

printf 'runner-phase: shutdown\n'
# First, in the background: the job's grace period must not wait on it. Waited for at exit only
# (the guest agent may end what the script leaves running), by when docker stop has long begun.
ask_for_a_pass &
ASKING=$!
trap 'wait "$ASKING" 2>/dev/null' EXIT
# Tells the startup script's watcher that the job ends because the VM does: no self-delete.
mkdir -p "${RUNNER_STATE_DIR:-/var/lib/runner}" && touch "${RUNNER_STATE_DIR:-/var/lib/runner}/shutting-down" \
  || printf 'runner: could not mark the shutdown; the VM may delete itself after the job stops\n'

grace=$(md instance/attributes/runner-grace-period) || grace=""
grace=${grace%%.*}
if ! [[ $grace =~ ^[0-9]+$ ]]; then
  printf 'runner: grace period not readable from metadata; using %s s\n' "$MAX_GRACE"
  grace=$MAX_GRACE
fi
((grace >= 1)) || grace=1
((grace <= MAX_GRACE)) || grace=$MAX_GRACE

state=$(docker container inspect -f '{{.State.Status}}' "$CONTAINER" 2>/dev/null) || state=absent
if [[ $state != running ]]; then
  printf 'runner: container %s is %s; nothing to stop\n' "$CONTAINER" "$state"
  exit 0
fi

printf 'runner: stopping %s (SIGTERM, %s s grace)\n' "$CONTAINER" "$grace"
start=$SECONDS
if docker stop --time "$grace" "$CONTAINER" >/dev/null; then
  code=$(docker container inspect -f '{{.State.ExitCode}}' "$CONTAINER" 2>/dev/null) || code="?"
  printf 'runner: %s stopped after %s s (exit code %s)\n' "$CONTAINER" "$((SECONDS - start))" "$code"
else
  printf 'runner: docker stop %s failed\n' "$CONTAINER"
  exit 1
fi
