#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: run examples/torch_train.py on CUDA through the agent, with the
# driver wired the COS way (driver libraries and nvidia-smi volume-mounted under
# /usr/local/nvidia, /dev/nvidia* passed one by one; no --gpus), preempt it once, and check that
# the resumed run ends with the same model and optimizer state, tensor for tensor
# (torch.equal), as an uninterrupted run, with deterministic algorithms on.
#
#   scripts/gpu-check.sh --image IMAGE [--nvidia-root DIR] [--steps N] [--preempt-at N]
#
# IMAGE: a workload image with a CUDA build of torch (README, "Package your own job": the
#        CUDA variant, built from this repository's examples/ and entrypoint/).
# --nvidia-root DIR: the driver as COS installs it (DIR/lib64, DIR/bin/nvidia-smi); default
#        /var/lib/nvidia when it exists, else one staged from this host's driver (ldconfig's
#        libcuda and nvidia-smi on PATH), copied so that the mounts carry no dangling links.
# Exit codes: 0 bit-exact, 1 not (or a run failed), 2 usage or setup error, 3 no GPU here.
# Checks the GPU before anything slow: on a machine without one it fails in a second.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
DEV_ROOT=${RUNNER_DEV_ROOT:-/dev}   # where the device nodes are (tests point it elsewhere)
IMAGE="" NVIDIA_ROOT="" STEPS=200 PREEMPT_AT=60 STORE=""
say() { printf 'gpu-check: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }
die() { say "$2"; exit "$1"; }
int() { [[ $2 =~ ^[0-9]+$ ]] || die 2 "$1 needs a whole number, got '$2'"; }

while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --image) IMAGE=${2:?--image needs a value}; shift 2 ;;
    --nvidia-root) NVIDIA_ROOT=${2:?--nvidia-root needs a value}; shift 2 ;;
    --steps) int --steps "${2:-}"; STEPS=$2; shift 2 ;;
    --preempt-at) int --preempt-at "${2:-}"; PREEMPT_AT=$2; shift 2 ;;
    --store) STORE=${2:?--store needs a value}; shift 2 ;;
    *) usage; die 2 "unknown argument '$1'" ;;
  esac
done
[[ -n $IMAGE ]] || { usage; die 2 "--image is required (a workload image with CUDA torch)"; }
((PREEMPT_AT > 0 && PREEMPT_AT < STEPS)) || die 2 "--preempt-at ($PREEMPT_AT) must be between 1 and --steps - 1 ($STEPS)"

# ---- the GPU, first: no GPU means exit 3 at once, whatever else is missing ----
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [[ -z $NVIDIA_ROOT && -x /var/lib/nvidia/bin/nvidia-smi ]]; then
  NVIDIA_ROOT=/var/lib/nvidia   # COS, after `cos-extensions install gpu`
elif [[ -z $NVIDIA_ROOT ]]; then
  smi=$(command -v nvidia-smi || true)
  libcuda=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 .*x86-64/ {print $NF; exit}')
  if [[ -z $smi ]]; then missing="no nvidia-smi on PATH"; else missing="no libcuda.so.1 known to ldconfig"; fi
  [[ -n $smi && -n $libcuda ]] || die 3 "no GPU driver here: no /var/lib/nvidia/bin/nvidia-smi (COS) and \
$missing. Run this on a machine with an NVIDIA GPU and its driver."
  # Stage a COS-shaped driver directory from the host's: the user-space libraries of the
  # driver (libcuda, libnvidia-*) and nvidia-smi, copied (bind mounts do not follow links out).
  NVIDIA_ROOT="$WORK/nvidia"
  mkdir -p "$NVIDIA_ROOT/lib64" "$NVIDIA_ROOT/bin"
  libdir=$(dirname "$libcuda")
  cp -L "$libdir"/libcuda.so* "$libdir"/libnvidia-*.so* "$NVIDIA_ROOT/lib64/" 2>/dev/null || true
  cp -L "$smi" "$NVIDIA_ROOT/bin/nvidia-smi"
  say "staged the host's driver ($libdir) as $NVIDIA_ROOT, COS style"
fi
[[ -x $NVIDIA_ROOT/bin/nvidia-smi ]] || die 3 "no GPU driver: $NVIDIA_ROOT/bin/nvidia-smi is missing"
[[ -d $NVIDIA_ROOT/lib64 ]] || die 3 "no GPU driver: $NVIDIA_ROOT/lib64 is missing"
LD_LIBRARY_PATH="$NVIDIA_ROOT/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  timeout 30 "$NVIDIA_ROOT/bin/nvidia-smi" -L >"$WORK/smi" 2>&1 \
  || die 3 "no usable GPU: nvidia-smi failed: $(tail -n 1 "$WORK/smi")"
grep -q '^GPU ' "$WORK/smi" || die 3 "no GPU: nvidia-smi lists none ($(tail -n 1 "$WORK/smi"))"
devices=()
for d in "$DEV_ROOT"/nvidia[0-9]*; do [[ ${d##*/} =~ ^nvidia[0-9]+$ && -c $d ]] && devices+=("$d"); done
((${#devices[@]})) || die 3 "no GPU device node ($DEV_ROOT/nvidia0 …) though nvidia-smi works"
for d in nvidiactl nvidia-uvm; do
  [[ -c $DEV_ROOT/$d ]] || die 3 "no $DEV_ROOT/$d: the driver's devices are incomplete (load nvidia-uvm: nvidia-modprobe -u -c=0)"
  devices+=("$DEV_ROOT/$d")
done
say "GPU: $(head -n 1 "$WORK/smi"); devices: ${devices[*]}"

# ---- then Docker, the image, and the runner's code ----
docker info >/dev/null 2>&1 || die 2 "Docker is not reachable (start dockerd, or set DOCKER_HOST)"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die 2 "image $IMAGE is not in the local Docker engine: build it first"
cuda=$(docker run --rm --network none --entrypoint python3 "$IMAGE" -c \
         'import torch; print(torch.version.cuda or "")' 2>"$WORK/torch.err") \
  || die 2 "cannot import torch in $IMAGE: $(tail -n 1 "$WORK/torch.err")"
[[ -n $cuda ]] || die 2 "$IMAGE has a CPU-only torch: build the CUDA variant (README, \"Package your own job\")"
PY=$here/.venv/bin/python
[[ -x $PY ]] || PY=python3
"$PY" -c 'import cos_spot_runner, docker' 2>/dev/null || die 2 "the runner is not installed for $PY: run 'make setup'"

args=(--image "$IMAGE" --nvidia-root "$NVIDIA_ROOT" --steps "$STEPS" --preempt-at "$PREEMPT_AT")
for d in "${devices[@]}"; do args+=(--device "$d"); done
[[ -z $STORE ]] || args+=(--store "$STORE")
say "torch CUDA $cuda in $IMAGE; uninterrupted run, then one preempted at step $PREEMPT_AT of $STEPS"
"$PY" "$here/scripts/gpu_check.py" "${args[@]}"
