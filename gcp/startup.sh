#!/bin/bash
# cos-spot-runner: the COS startup script. Runs as root at every boot of a run's VM.
#
# Reads the run's scalars from instance metadata (runner/backends/vm_metadata.py is the contract),
# waits for Docker, installs the GPU driver when the run has GPUs, pulls the pinned image and
# starts the agent container with the COS GPU wiring (DESIGN §4). The job's command and env are
# not here: the agent reads them from spec.json in the store (COS has no python or jq, and bash
# is no place to decode JSON). Each phase prints one `runner-phase: NAME` line, which the guest
# agent copies to the serial console: a VM that never wrote a heartbeat is diagnosed from those
# lines, so the job's output stays off the console (it goes to the bucket) but for a short tail.
# A boot that cannot succeed writes runs/ID/attempts/N/startup.json (status "failed") to the
# store and deletes its own VM, so nothing is left billing.
#
# Every endpoint and root path can be overridden from the environment (tests run this script for
# real against fakes, tests/cos_sim); the defaults are production's.
set -euo pipefail
export LC_ALL=C

METADATA_URL=${METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}
GCS_API=${GCS_API:-https://storage.googleapis.com}
COMPUTE_API=${COMPUTE_API:-https://compute.googleapis.com}
NVIDIA_ROOT=${RUNNER_NVIDIA_ROOT:-/var/lib/nvidia}
DEV_ROOT=${RUNNER_DEV_ROOT:-/dev}
DISK_BY_ID=${RUNNER_DISK_BY_ID:-/dev/disk/by-id}
STATE_DIR=${RUNNER_STATE_DIR:-/var/lib/runner}    # /var/lib is writable on COS; / and /mnt are not
SERIAL=${RUNNER_SERIAL:-/dev/console}             # where the detached watcher writes
CONTAINER=${RUNNER_CONTAINER_NAME:-runner-job}
RELEASE_WAIT=${RUNNER_RELEASE_WAIT:-background}   # foreground: wait for the job here (tests)
PULL_RETRIES=${PULL_RETRIES:-5}
PULL_BACKOFF=${PULL_BACKOFF:-5}                   # seconds before the 2nd try, doubled each time
GPU_POLL=${RUNNER_GPU_POLL:-5}                    # seconds between nvidia-smi checks
GPU_DIAG_INTERVAL=${RUNNER_GPU_DIAG_INTERVAL:-30} # seconds between diagnostics while waiting
GPU_INSTALL_TRIES=${RUNNER_GPU_INSTALL_TRIES:-3}
DOCKER_WAIT=${RUNNER_DOCKER_WAIT:-120}            # docker.service may start after this script
JOB_TAIL_LINES=${RUNNER_JOB_TAIL_LINES:-40}       # of the job's output, on the console at its end
DRIVER_LIBS=/usr/local/nvidia/lib64               # where the container sees the driver's libraries

PHASE=starting FAILED="" WORK="" TOKEN=""
RUN_ID="" ATTEMPT="" STORE="" BUCKET="" OBJ_PREFIX="" INSTANCE="" ZONE="" PROJECT=""

log() { printf 'runner: %s\n' "$*"; }
phase() { PHASE=$1; printf 'runner-phase: %s\n' "$1"; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
last_line() { grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 || true; }

to_int() {  # seconds as an integer (metadata may say "25.0"): the integer part, at least $2
  local v=${1%%.*}
  is_uint "$v" && ((v >= $2)) || v=$2
  printf '%s' "$v"
}

json_str() {  # $1 as a JSON string literal; control characters become spaces
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "${s//[$'\x01'-$'\x1f']/ }"
}

urlencode() {
  local s=$1 out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) printf -v c '%%%02X' "'$c"; out+=$c ;;
    esac
  done
  printf '%s' "$out"
}

# ---- the metadata server ----

md_fetch() {  # GET $METADATA_URL/$1 into file $2: 0 found, 4 not found (404), 1 anything else
  local code
  code=$(curl -sS -o "$2" -w '%{http_code}' -H 'Metadata-Flavor: Google' --max-time 10 \
    --retry 5 --retry-connrefused --retry-delay 1 "$METADATA_URL/$1") || code=000
  case $code in
    200) return 0 ;;
    404) return 4 ;;
    *) log "metadata $1: HTTP $code $(last_line "$2")"; return 1 ;;
  esac
}

md_attr() {  # md_attr VAR KEY [DEFAULT]: an instance attribute; required unless a default is given
  local rc=0
  md_fetch "instance/attributes/$2" "$WORK/md" || rc=$?
  if ((rc == 0)); then printf -v "$1" '%s' "$(<"$WORK/md")"
  elif ((rc == 4 && $# >= 3)); then printf -v "$1" '%s' "$3"
  elif ((rc == 4)); then fail bad_metadata "instance attribute $2 is missing"
  else fail bad_metadata "could not read instance attribute $2 from the metadata server"
  fi
}

md_value() {  # md_value VAR PATH: instance name, zone, project id
  md_fetch "$2" "$WORK/md" || fail bad_metadata "could not read $2 from the metadata server"
  printf -v "$1" '%s' "$(<"$WORK/md")"
}

get_token() {  # the VM service account's access token into TOKEN; never printed
  [[ -n $TOKEN ]] && return 0
  local re='"access_token"[[:space:]]*:[[:space:]]*"([^"]+)"'
  md_fetch instance/service-accounts/default/token "$WORK/token" || return 1
  [[ $(<"$WORK/token") =~ $re ]] || { log "token response has no access_token"; return 1; }
  TOKEN=${BASH_REMATCH[1]}
  rm -f "$WORK/token"
}

# The token goes in a header read from a pipe: never in argv (visible in /proc) nor the output.
curl_auth() { curl -H @<(printf 'Authorization: Bearer %s\n' "$TOKEN") "$@"; }

# ---- reporting and self-deletion ----

write_startup_record() {  # STATUS REASON DETAIL -> runs/ID/attempts/N/startup.json
  local name code reason=null
  if [[ -z $BUCKET || -z $RUN_ID ]] || ! is_uint "$ATTEMPT"; then
    log "cannot write startup.json: run id, attempt or store unknown"; return 1
  fi
  get_token || { log "cannot write startup.json: no access token"; return 1; }
  [[ -z $2 ]] || reason=$(json_str "$2")
  printf '{"schema_version":1,"attempt":%d,"phase":%s,"status":"%s","reason":%s,"detail":%s,"instance":%s,"zone":%s,"time":%(%s)T}\n' \
    "$((10#$ATTEMPT))" "$(json_str "$PHASE")" "$1" "$reason" "$(json_str "${3:0:2000}")" \
    "$(json_str "$INSTANCE")" "$(json_str "$ZONE")" -1 >"$WORK/startup.json"
  name="${OBJ_PREFIX}runs/$RUN_ID/attempts/$((10#$ATTEMPT))/startup.json"
  code=$(curl_auth -sS -o "$WORK/upload.out" -w '%{http_code}' --max-time 30 --retry 3 \
    --retry-connrefused --retry-delay 1 -X POST -H 'Content-Type: application/json' --data-binary @"$WORK/startup.json" \
    "$GCS_API/upload/storage/v1/b/$BUCKET/o?uploadType=media&name=$(urlencode "$name")") || code=000
  [[ $code == 200 ]] || { log "startup.json upload to gs://$BUCKET/$name failed: HTTP $code $(last_line "$WORK/upload.out")"; return 1; }
  log "wrote gs://$BUCKET/$name ($1)"
}

self_delete() {
  local code
  if [[ -n $PROJECT && -n $ZONE && -n $INSTANCE ]] && get_token; then
    code=$(curl_auth -sS -o "$WORK/delete.out" -w '%{http_code}' --max-time 30 --retry 3 --retry-connrefused \
      --retry-delay 2 -X DELETE "$COMPUTE_API/compute/v1/projects/$PROJECT/zones/$ZONE/instances/$INSTANCE") || code=000
    [[ $code == 200 ]] && { log "requested deletion of this VM ($INSTANCE in $ZONE)"; return 0; }
    log "deleting this VM failed: HTTP $code $(last_line "$WORK/delete.out")"
  fi
  log "powering off instead of deleting"   # a stopped spot VM bills for its disks only
  poweroff || log "poweroff failed; this VM may keep billing until the supervisor deletes it"
}

fail() {  # fail REASON DETAIL: marker, failure record, self-delete, exit. Never returns.
  trap - ERR
  set +e
  [[ -z $FAILED ]] || exit 1
  FAILED=$1
  printf 'runner-phase: failed:%s\n' "$1"
  log "boot failed in phase $PHASE: $1: $2"
  [[ -n $INSTANCE ]] || { md_fetch instance/name "$WORK/md" && INSTANCE=$(<"$WORK/md"); }
  [[ -n $ZONE ]] || { md_fetch instance/zone "$WORK/md" && ZONE=$(<"$WORK/md") && ZONE=${ZONE##*/}; }
  [[ -n $PROJECT ]] || { md_fetch project/project-id "$WORK/md" && PROJECT=$(<"$WORK/md"); }
  write_startup_record failed "$1" "$2" || log "WARNING: the failure is not recorded in the store"
  self_delete
  exit 1
}

on_error() {  # an unexpected error still ends in a record and a deleted VM, never an idle VM
  [[ $BASHPID == "$$" ]] || exit "$1"   # in a subshell: let the parent handle it
  fail startup_error "unexpected failure (exit $1) at line $2: $3"
}

# ---- phases ----

read_metadata() {
  phase metadata
  local zone_path
  md_attr RUN_ID runner-run-id
  md_attr ATTEMPT runner-attempt
  md_attr STORE runner-store
  md_attr IMAGE runner-image
  md_attr GPU_COUNT runner-gpu-count 0
  md_attr GPU_TIMEOUT runner-gpu-timeout 600
  md_attr GPU_DRIVER_VERSION runner-gpu-driver-version ""
  md_attr CHECKPOINT_DIR runner-checkpoint-dir /var/lib/runner/checkpoints
  md_attr RESULTS_DIR runner-results-dir /var/lib/runner/results
  md_attr HEARTBEAT_INTERVAL runner-heartbeat-interval 5
  md_attr SYNC_INTERVAL runner-sync-interval 10
  md_attr GRACE_PERIOD runner-grace-period 25
  md_attr SHM_SIZE runner-shm-size 2g
  md_attr DATA_DISK runner-data-disk ""
  md_attr DATA_MOUNT runner-data-mount /var/lib/runner/data
  md_value INSTANCE instance/name
  md_value zone_path instance/zone
  ZONE=${zone_path##*/}                     # projects/NUM/zones/ZONE
  md_value PROJECT project/project-id
  [[ $STORE =~ ^gs://([^/]+)/*(.*[^/])?/*$ ]] || fail bad_metadata "runner-store must be gs://BUCKET[/PREFIX], not $STORE"
  BUCKET=${BASH_REMATCH[1]}
  OBJ_PREFIX=${BASH_REMATCH[2]:+${BASH_REMATCH[2]}/}   # same rule as entrypoint.store_gcs.parse_gs_url
  is_uint "$ATTEMPT" || fail bad_metadata "runner-attempt must be a number, not $ATTEMPT"
  is_uint "$GPU_COUNT" || fail bad_metadata "runner-gpu-count must be a number, not $GPU_COUNT"
  GPU_COUNT=$((10#$GPU_COUNT))
  GPU_TIMEOUT=$(to_int "$GPU_TIMEOUT" 1)
  GRACE=$(to_int "$GRACE_PERIOD" 1)
  # What docker's --shm-size parser accepts (2g, 512m, 1.5GB, 2GiB); checked here to fail early.
  [[ $SHM_SIZE =~ ^[0-9]+(\.[0-9]+)?[kKmMgGtTpP]?[iI]?[bB]?$ ]] || fail bad_metadata "runner-shm-size must look like 2g, not $SHM_SIZE"
  if [[ -n $DATA_DISK ]]; then
    [[ $DATA_DISK =~ ^[A-Za-z0-9_-]+$ ]] || fail data_disk_failed "invalid data disk device name '$DATA_DISK'"
    # /mnt is read-only on COS (DESIGN §4); a mount anywhere but /var/lib fails or is lost.
    if ! [[ $DATA_MOUNT =~ ^/var/lib/[A-Za-z0-9._/-]+$ ]] || [[ /$DATA_MOUNT/ == */../* || /$DATA_MOUNT/ == */./* ]]; then
      fail data_disk_failed "runner-data-mount must be a path under /var/lib (COS: / and /mnt are read-only), not $DATA_MOUNT"
    fi
  fi
  [[ $IMAGE == *@sha256:* ]] || log "warning: image $IMAGE is not pinned by digest; a restart may run other code"
  log "run $RUN_ID attempt $ATTEMPT on $INSTANCE ($ZONE, project $PROJECT): image $IMAGE, $GPU_COUNT GPU(s)"
}

# Before the driver: `cos-extensions install gpu` runs its installer in a Docker container.
wait_for_docker() {
  phase docker
  local waited=0
  until docker info >/dev/null 2>&1; do
    ((waited < DOCKER_WAIT)) || fail docker_unavailable "the Docker daemon did not answer within ${DOCKER_WAIT}s"
    sleep 1
    waited=$((waited + 1))
  done
  log "docker is up after ${waited}s"
}

gpu_ready() {  # nvidia-smi works and the device nodes exist: GPU_DEVICES, or why not in GPU_WHY
  local d
  GPU_WHY="" GPU_DEVICES=()
  timeout 30 "$NVIDIA_ROOT/bin/nvidia-smi" >"$WORK/nvidia-smi.out" 2>&1 ||
    { GPU_WHY="nvidia-smi failed: $(last_line "$WORK/nvidia-smi.out")"; return 1; }
  for d in "$DEV_ROOT"/nvidia[0-9]*; do
    [[ ${d##*/} =~ ^nvidia[0-9]+$ && -c $d ]] && GPU_DEVICES+=("$d")
  done
  ((${#GPU_DEVICES[@]} >= GPU_COUNT)) || { GPU_WHY="${#GPU_DEVICES[@]} of $GPU_COUNT GPU device nodes in $DEV_ROOT"; return 1; }
  for d in nvidiactl nvidia-uvm; do
    [[ -c $DEV_ROOT/$d ]] || { GPU_WHY="$DEV_ROOT/$d is missing"; return 1; }
  done
}

# The driver tree is on /var, which COS mounts noexec: bind it onto itself and make that one
# mount executable ("remount,bind" changes only this mount's flags, not the filesystem's).
nvidia_exec_mount() {
  [[ -d $NVIDIA_ROOT ]] || return 0
  mountpoint -q "$NVIDIA_ROOT" || mount --bind "$NVIDIA_ROOT" "$NVIDIA_ROOT" || fail gpu_driver_failed "mount --bind $NVIDIA_ROOT failed"
  mount -o remount,bind,exec "$NVIDIA_ROOT" || mount -o remount,exec "$NVIDIA_ROOT" ||
    fail gpu_driver_failed "could not remount $NVIDIA_ROOT exec"
}

# Killing cos-extensions leaves its installer container running: remove that too.
kill_installer() {
  local id image
  while read -r id image; do
    [[ $image == *cos-gpu-installer* ]] || continue
    log "removing the GPU installer container $id ($image)"
    docker rm -f "$id" >/dev/null 2>&1 || log "could not remove installer container $id"
  done < <(docker ps --no-trunc --format '{{.ID}} {{.Image}}' 2>/dev/null || true)
}

# After a STOP/start the kernel has forgotten the modules: the install runs at every boot (its
# cached files on the kept disk make a repeat faster). Install and wait fit in runner-gpu-timeout,
# so the supervisor's stall window, which config keeps >= gpu_timeout, never fires first.
setup_gpu() {
  phase gpu-driver
  GPU_START=$SECONDS
  local deadline=$((SECONDS + GPU_TIMEOUT + 1)) try rc args=(install gpu)   # +1: SECONDS is whole seconds
  [[ -z $GPU_DRIVER_VERSION ]] || args+=(-- "-version=$GPU_DRIVER_VERSION")
  nvidia_exec_mount
  for ((try = 1; ; try++)); do
    ((deadline - SECONDS > 0)) || fail gpu_timeout "no GPU within ${GPU_TIMEOUT}s: cos-extensions install gpu did not finish"
    log "cos-extensions ${args[*]} (try $try of $GPU_INSTALL_TRIES)"
    rc=0
    timeout -k 5 $((deadline - SECONDS)) cos-extensions "${args[@]}" >"$WORK/install.log" 2>&1 </dev/null || rc=$?
    tail -n 20 "$WORK/install.log"
    ((rc == 0)) && break
    if ((rc == 124 || rc == 137)); then
      kill_installer
      fail gpu_timeout "no GPU within ${GPU_TIMEOUT}s: cos-extensions ${args[*]} did not finish"
    fi
    ((try < GPU_INSTALL_TRIES)) || fail gpu_driver_failed "cos-extensions ${args[*]} failed $try times (exit $rc): $(last_line "$WORK/install.log")"
    sleep 10
  done
  nvidia_exec_mount

  phase gpu-wait
  local next_diag=$((SECONDS + GPU_DIAG_INTERVAL))
  until gpu_ready; do
    if ((SECONDS >= deadline || SECONDS >= next_diag)); then
      # Best effort by design: a diagnostic that fails must not end the wait.
      log "gpu-wait diagnostics after $((SECONDS - GPU_START))s: $GPU_WHY"
      { dmesg 2>&1 | grep -iE 'nvidia|nvrm|xid' | tail -n 20 | sed 's/^/runner:   dmesg: /'; } || true
      grep -i nvidia /proc/modules | sed 's/^/runner:   module: /' || log "  no nvidia kernel module loaded"
      next_diag=$((SECONDS + GPU_DIAG_INTERVAL))
    fi
    ((SECONDS < deadline)) || fail gpu_timeout "no usable GPU within ${GPU_TIMEOUT}s (driver install and wait): $GPU_WHY"
    sleep "$GPU_POLL"
  done
  log "GPU ready: ${GPU_DEVICES[*]}"
}

registry_auth() {
  phase registry-auth
  local host=${IMAGE%%/*}
  # A first component without "." or ":" (and not localhost) is a Docker Hub namespace.
  if [[ $IMAGE != */* || ($host != *.* && $host != *:* && $host != localhost) ]]; then
    log "image $IMAGE is on Docker Hub; no Google credentials needed"; return 0
  fi
  case $host in
    gcr.io | *.gcr.io | *-docker.pkg.dev | docker.pkg.dev)
      docker-credential-gcr configure-docker --registries="$host" >"$WORK/cred.log" 2>&1 ||
        fail registry_auth_failed "docker-credential-gcr configure-docker --registries=$host: $(last_line "$WORK/cred.log")"
      log "docker authenticates to $host with the VM's service account" ;;
    *) log "registry $host is not Google's; pulling without credentials" ;;
  esac
}

# On a kept disk (STOP/start) the image is already there: this is what a restart in place saves.
pull_image() {
  phase image-pull
  local try delay=$PULL_BACKOFF err=""
  for ((try = 1; try <= PULL_RETRIES; try++)); do
    docker pull "$IMAGE" >"$WORK/pull.log" 2>&1 && { log "pulled $IMAGE: $(last_line "$WORK/pull.log")"; return 0; }
    err=$(last_line "$WORK/pull.log")
    log "docker pull $IMAGE failed (try $try of $PULL_RETRIES): $err"
    ((try == PULL_RETRIES)) || { log "retrying in ${delay}s"; sleep "$delay"; delay=$((delay * 2 > 60 ? 60 : delay * 2)); }
  done
  fail image_pull_failed "docker pull $IMAGE failed $PULL_RETRIES times: $err"
}

mount_data_disk() {
  phase data-disk
  local dev="$DISK_BY_ID/google-$DATA_DISK" waited=0 rc=0
  until [[ -b $dev ]]; do   # an attached disk can show up a little after boot
    ((waited < 60)) || fail data_disk_failed "data disk $dev did not appear"
    sleep 1
    waited=$((waited + 1))
  done
  if mountpoint -q "$DATA_MOUNT"; then log "$DATA_MOUNT is already mounted"; return 0; fi
  blkid "$dev" >/dev/null 2>&1 || rc=$?
  if ((rc == 2)); then   # blkid: no filesystem signature at all, so a new disk
    log "formatting $dev (ext4)"
    mkfs.ext4 -q -F -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard "$dev" >"$WORK/mkfs.log" 2>&1 ||
      fail data_disk_failed "mkfs.ext4 $dev: $(last_line "$WORK/mkfs.log")"
  elif ((rc != 0)); then
    fail data_disk_failed "blkid $dev failed (exit $rc)"
  fi
  mkdir -p "$DATA_MOUNT" || fail data_disk_failed "cannot create $DATA_MOUNT"
  mount -o discard,defaults "$dev" "$DATA_MOUNT" >"$WORK/mount.log" 2>&1 ||
    fail data_disk_failed "mount $dev $DATA_MOUNT: $(last_line "$WORK/mount.log")"
  log "mounted $dev at $DATA_MOUNT"
}

gpu_args() {  # COS GPU wiring (DESIGN §4): never --gpus (its CDI hook fails) nor --runtime=nvidia
  local d image_path
  args+=(-v "$NVIDIA_ROOT/lib64:$DRIVER_LIBS" -v "$NVIDIA_ROOT/bin:/usr/local/nvidia/bin")
  for d in "${GPU_DEVICES[@]}" "$DEV_ROOT/nvidiactl" "$DEV_ROOT/nvidia-uvm"; do
    if [[ $DEV_ROOT == /dev ]]; then args+=(--device "$d"); else args+=(--device "$d:/dev/${d##*/}"); fi
  done
  # Prepend, never replace: PyTorch/NGC images find CUDA through their own LD_LIBRARY_PATH.
  image_path=$(docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed -n 's/^LD_LIBRARY_PATH=//p')
  args+=(-e "LD_LIBRARY_PATH=$DRIVER_LIBS${image_path:+:$image_path}" -e "RUNNER_GPU_LIB_DIR=$DRIVER_LIBS")
}

start_container() {
  phase container-start
  local status args
  # A reboot (terminationAction=STOP) finds the previous attempt's container: stop it with its
  # grace period (a final sync if it still runs), remove it, start fresh from the checkpoints.
  if docker container inspect "$CONTAINER" >/dev/null 2>&1; then
    log "removing the existing $CONTAINER container"
    docker stop --time "$GRACE" "$CONTAINER" >/dev/null 2>&1 || log "docker stop $CONTAINER failed; removing it anyway"
    docker rm -f "$CONTAINER" >"$WORK/rm.log" 2>&1 || fail container_start_failed "cannot remove the old $CONTAINER: $(last_line "$WORK/rm.log")"
  fi
  # Host network is the COS norm: no docker0 NAT in the path of checkpoint uploads, no MTU
  # mismatch with the VPC (1460), and the metadata server answers the agent's credentials.
  args=(run -d --name "$CONTAINER" --restart no --network host --pull never
    --shm-size "$SHM_SIZE"      # docker's 64 MB /dev/shm crashes data loaders with "Bus error"
    --stop-timeout "$GRACE" --log-driver json-file --log-opt max-size=100m --log-opt max-file=3
    --label "cos-spot-runner.run-id=$RUN_ID" --label "cos-spot-runner.attempt=$ATTEMPT"
    -e "RUNNER_RUN_ID=$RUN_ID" -e "RUNNER_STORE=$STORE" -e "RUNNER_ATTEMPT=$ATTEMPT"
    -e "RUNNER_CHECKPOINT_DIR=$CHECKPOINT_DIR" -e "RUNNER_RESULTS_DIR=$RESULTS_DIR"
    -e "RUNNER_HEARTBEAT_INTERVAL=$HEARTBEAT_INTERVAL" -e "RUNNER_SYNC_INTERVAL=$SYNC_INTERVAL"
    -e "RUNNER_GRACE_PERIOD=$GRACE_PERIOD" -e "RUNNER_INSTANCE=$INSTANCE" -e "RUNNER_ZONE=$ZONE"
    -e "RUNNER_IMAGE=$IMAGE" -e RUNNER_COMMAND_FROM_SPEC=1)
  # Only set in tests (the GCS emulator); the agent needs it to reach the same store.
  [[ -z ${STORAGE_EMULATOR_HOST:-} ]] || args+=(-e "STORAGE_EMULATOR_HOST=$STORAGE_EMULATOR_HOST")
  if ((GPU_COUNT > 0)); then gpu_args; fi
  [[ -z $DATA_DISK ]] || args+=(-v "$DATA_MOUNT:$DATA_MOUNT")
  # The image's ENTRYPOINT is `python3 -m entrypoint --`; with no arguments after the image, the
  # agent runs the command of spec.json.
  args+=("$IMAGE")
  docker "${args[@]}" >"$WORK/run.log" 2>&1 || fail container_start_failed "docker run: $(last_line "$WORK/run.log")"
  status=$(docker container inspect -f '{{.State.Status}}' "$CONTAINER" 2>"$WORK/inspect.log") ||
    fail container_start_failed "docker inspect $CONTAINER: $(last_line "$WORK/inspect.log")"
  case $status in
    running | exited) ;;   # a quick job may already be done: the agent recorded it
    *) fail container_start_failed "container $CONTAINER is $status after docker run" ;;
  esac
  phase container-running
  write_startup_record ok "" "container $(last_line "$WORK/run.log") started" ||
    log "warning: startup.json (ok) not written; the agent's manifest will show the start anyway"
}

# The attempt is over once the container exits: success, failure, or an agent that died. A VM
# with nothing left to run must not keep billing, so it deletes itself, unless the exit came
# from a shutdown in progress (preemption, stop, delete), which the shutdown script marks: with
# terminationAction=STOP that VM is meant to be kept.
release_when_done() {
  local code
  code=$(docker wait "$CONTAINER" 2>/dev/null) || code="?"
  log "container exited ($code); the last lines of the job's output (all of it: gs://$BUCKET/${OBJ_PREFIX}runs/$RUN_ID/logs/$ATTEMPT.log):"
  docker logs --tail "$JOB_TAIL_LINES" "$CONTAINER" 2>&1 | tail -c 8192 | sed 's/^/job: /' || log "docker logs failed"
  if [[ -e $STATE_DIR/shutting-down ]]; then log "the container stopped during a shutdown; leaving the VM to it"; return 0; fi
  printf 'runner-phase: finished\n'
  log "this attempt is over; releasing the VM"
  self_delete
}

main() {
  set -E
  trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR
  WORK=$(mktemp -d /tmp/runner-startup.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
  local knob
  for knob in PULL_RETRIES PULL_BACKOFF GPU_DIAG_INTERVAL GPU_INSTALL_TRIES DOCKER_WAIT JOB_TAIL_LINES; do
    is_uint "${!knob}" || fail startup_error "$knob must be a whole number, not ${!knob}"
  done
  read_metadata
  wait_for_docker
  if ((GPU_COUNT > 0)); then setup_gpu; fi   # not `||`: that would turn off -e inside it
  # The docker CLI and docker-credential-gcr keep their config in $HOME/.docker, and /root is
  # read-only on COS. (Set only now: the driver step runs as COS documents it.)
  mkdir -p "$STATE_DIR/home"
  export HOME="$STATE_DIR/home" DOCKER_CONFIG="$STATE_DIR/home/.docker"
  registry_auth
  pull_image
  if [[ -n $DATA_DISK ]]; then mount_data_disk; fi
  rm -f "$STATE_DIR/shutting-down"  # left by the shutdown before a STOP/start cycle
  start_container
  trap - ERR
  if [[ $RELEASE_WAIT == foreground ]]; then
    release_when_done
  else
    # Detached from this script: google-startup-scripts.service stops only its main process.
    (trap - EXIT; WORK=$(mktemp -d /tmp/runner-release.XXXXXX); release_when_done) </dev/null >>"$SERIAL" 2>&1 &
    disown
  fi
}

main "$@"
