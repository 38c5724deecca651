#!/usr/bin/env bash
# Builds the PyTorch base image for the torch examples and tests, once, and caches it as a Docker
# image (a second call returns in a second):
#   FROM the locally bootstrapped Debian base (scripts/setup-test-env.sh), plus PyTorch's CPU
#   wheel and its dependencies, fetched on this host with pip and installed offline
#   (no network in the container), the same way the base gets the agent's dependencies.
#
# Why the PyPI CPU wheel and not Debian's python3-torch: bookworm ships torch 1.13.1 (2022),
# whose libtorch pulls in OpenCV, FFmpeg and a test library (234 MB to download, 992 MB
# installed, measured 2026-12-01); the CPU wheel and its dependencies are 193 MB of a current
# release (936 MB installed, numpy included), the same major version users run on CUDA. The CPU
# wheel comes from pip's configured sources (a local wheel cache) or else PyTorch's CPU index
# (PyPI's own Linux wheel is the CUDA build: never taken); scripts/torch_wheels.py. The wheels are
# cached under .cache/torch-wheels.
set -euo pipefail

BASE_IMAGE=${RUNNER_BASE_IMAGE:-cos-spot-runner/base:bookworm-2}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_BASE=${TORCH_BASE_IMAGE:-cos-spot-runner/torch-base:$TORCH_VERSION}
PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
wheels="$here/.cache/torch-wheels/$TORCH_VERSION"
say() { printf 'torch-base: %s\n' "$*" >&2; }

if docker image inspect "$TORCH_BASE" >/dev/null 2>&1; then
  say "$TORCH_BASE is cached"
  exit 0
fi
docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
  || { say "base image $BASE_IMAGE is missing: run 'make env' first"; exit 1; }

# The wheels must match the image's Python (bookworm: 3.11) and CPU, not this host's.
py=$(docker run --rm --network none --entrypoint python3 "$BASE_IMAGE" \
       -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
# The CPU wheel from pip's configured sources (a local wheel cache), else PyTorch's CPU index
# (TORCH_INDEX_URL overrides it); the choice and its message are in scripts/torch_wheels.py.
if [ ! -f "$wheels/.complete" ]; then
  say "fetching torch==$TORCH_VERSION+cpu and its dependencies for cp$py into $wheels"
  "$PYTHON" "$here/scripts/torch_wheels.py" --torch-version "$TORCH_VERSION" --python-version "$py" --dest "$wheels" \
    || exit 1
fi

# Installed in a container with the wheels mounted read-only, then committed: a `COPY` of the
# wheels would stay in the image as a 200 MB layer even after `rm`.
say "building $TORCH_BASE (offline install, about a minute)"
cid=$(docker create --network none -e PIP_ROOT_USER_ACTION=ignore -v "$wheels:/tmp/wheels:ro" "$BASE_IMAGE" sh -c "
  python3 -m pip install -q --break-system-packages --no-index --find-links /tmp/wheels torch==$TORCH_VERSION numpy \
  && rm -rf /root/.cache \
  && python3 -c 'import torch, torch.distributed as d; assert d.is_gloo_available(); print(torch.__version__)'")
trap 'docker rm -f "$cid" >/dev/null 2>&1 || true' EXIT
docker start -a "$cid" >&2 || { say "installing torch in $BASE_IMAGE failed (output above)"; exit 1; }
docker commit --change 'CMD ["python3"]' "$cid" "$TORCH_BASE" >/dev/null
say "$TORCH_BASE ready ($(docker image inspect -f '{{.Size}}' "$TORCH_BASE" | awk '{printf "%.0f MB", $1/1e6}'))"
