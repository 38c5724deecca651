#!/usr/bin/env bash
# Prepares this machine for the demo and the tests, idempotently:
#   1. Docker engine (Debian's docker.io), debootstrap, tmux (the watch test), docker-registry
#      (the reference image registry, 2.8: the cloud-path tests push to it on 127.0.0.1 and the
#      simulated VM pulls from it), faketime (the clock-skew chaos test runs a supervisor
#      minutes off the true clock), chromium (the run report test loads the page headless),
#      installed when missing (needs root);
#   2. dockerd started when it is not running;
#   3. a Debian base image with Python and the agent's dependencies, bootstrapped locally once
#      (no image registry is needed) and cached as a Docker image.
set -euo pipefail

BASE_IMAGE=${RUNNER_BASE_IMAGE:-cos-spot-runner/base:bookworm-2}
SUITE=${RUNNER_DEBIAN_SUITE:-bookworm}
MIRROR=${RUNNER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")/.." && pwd)
cache="$here/.cache"
say() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    say "$1 needs root: run 'sudo $0' once, or install it yourself ($2)"
    exit 1
  fi
}

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-registry >/dev/null \
    || ! command -v faketime >/dev/null || ! command -v chromium >/dev/null; then
  need_root "installing docker.io, debootstrap, docker-registry, faketime and chromium" \
    "apt-get install docker.io debootstrap docker-registry faketime chromium"
  say "installing docker.io, debootstrap, docker-registry, faketime and chromium"
  apt-get update -qq
  # policy-rc.d exit 101: the package must not start a registry service on :5000 (tests start
  # their own on a free port); one already there is left as it is.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap docker-registry faketime chromium >/dev/null
  [ -z "$policy" ] || rm -f "$policy"
fi

if ! docker info >/dev/null 2>&1; then
  need_root "starting dockerd" "systemctl start docker"
  say "starting dockerd (log: /var/log/dockerd-runner.log)"
  setsid nohup dockerd >/var/log/dockerd-runner.log 2>&1 </dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { say "dockerd did not start; see /var/log/dockerd-runner.log"; exit 1; }
fi

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "base image $BASE_IMAGE is cached"
  exit 0
fi

need_root "bootstrapping the base image" "debootstrap needs root"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "bootstrapping Debian $SUITE with Python and curl into $work/rootfs (about a minute)"
debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates,curl \
  "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; say "debootstrap failed"; exit 1; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" -c . | docker import - "$BASE_IMAGE-rootfs" >/dev/null

say "adding the agent's Python dependencies (wheels fetched on this host, installed offline)"
mkdir -p "$work/ctx/wheels"
python3 -m pip download -q -d "$work/ctx/wheels" -r "$here/entrypoint/requirements.txt" 2>"$work/pip.log" \
  || { cat "$work/pip.log" >&2; say "could not fetch the wheels"; exit 1; }
cp "$here/entrypoint/requirements.txt" "$work/ctx/"
cat >"$work/ctx/Dockerfile" <<DOCKERFILE
FROM $BASE_IMAGE-rootfs
COPY wheels /tmp/wheels
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m pip install --break-system-packages --no-index --find-links /tmp/wheels \
      -r /tmp/requirements.txt && rm -rf /tmp/wheels /root/.cache
CMD ["python3"]
DOCKERFILE
docker build -q --network none -t "$BASE_IMAGE" "$work/ctx" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; exit 1; }
docker rmi "$BASE_IMAGE-rootfs" >/dev/null 2>&1 || true
say "base image $BASE_IMAGE ready"
