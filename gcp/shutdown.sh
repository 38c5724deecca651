#!/bin/bash
# cos-spot-runner: the COS shutdown script. Runs on preemption (about 30 s of notice), on delete
# and on stop.
#
# `docker stop` sends SIGTERM to the agent (PID 1 in the container), which forwards it to the job,
# makes a final checkpoint sync and records PREEMPTED; after the grace period docker kills it.
# Everything here must finish inside the notice, so the grace period is capped and every network
# call has a short timeout.
set -uo pipefail   # no -e: each step below handles its own failure; a later step must still run
export LC_ALL=C

METADATA_URL=${METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}
CONTAINER=${RUNNER_CONTAINER_NAME:-runner-job}
# The notice is 30 s; leave room for the metadata read and docker's own bookkeeping.
MAX_GRACE=${RUNNER_SHUTDOWN_MAX_GRACE:-25}

printf 'runner-phase: shutdown\n'
# Tells the startup script's watcher that the job ends because the VM does: no self-delete.
mkdir -p "${RUNNER_STATE_DIR:-/var/lib/runner}" && touch "${RUNNER_STATE_DIR:-/var/lib/runner}/shutting-down" \
  || printf 'runner: could not mark the shutdown; the VM may delete itself after the job stops\n'

grace=$(curl -sf --max-time 2 -H 'Metadata-Flavor: Google' \
  "$METADATA_URL/instance/attributes/runner-grace-period") || grace=""
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
