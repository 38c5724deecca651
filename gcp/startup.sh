#!/bin/bash
# cos-spot-runner: the COS startup script, run as root at every boot of a run's VM. It reads the
# run's scalars from metadata (runner/launch/backends/vm_metadata.py), waits for Docker, installs the GPU
# driver, pulls the pinned image and starts the agent, which reads the job's command and env from
# spec.json (docs/architecture.md#on-the-vm-cos). One `runner-phase: NAME` line per phase goes to the serial console, where
# a VM that never wrote a heartbeat is diagnosed; the job's output goes to the bucket, only its
# tail to the console (GCE keeps 1 MiB). A boot that cannot succeed writes attempts/N/startup.json
# and deletes its own VM. Endpoints and roots can be overridden from the environment (tests/standins/cos_sim).
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
PRESTAGE_WAIT=${RUNNER_PRESTAGE_WAIT:-120}        # seconds the job waits for the checkpoint fetched meanwhile
DRIVER_LIBS=/usr/local/nvidia/lib64               # where the container finds the driver's libraries

STARTED_AT=$EPOCHREALTIME   # this script began: the attempt's `startup_script` phase
PHASE=starting FAILED="" WORK="" TOKEN="" BAKE="" PRESTAGED=""
RUN_ID="" ATTEMPT="" BUCKET="" OBJ_PREFIX="" INSTANCE="" ZONE="" PROJECT="" NNODES=1 NODE_RANK=0

log() { printf 'runner: %s\n' "$*"; }
phase() { PHASE=$1; printf 'runner-phase: %s\n' "$1"; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
last_line() { grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 || true; }

must() {  # must REASON CMD...: run CMD, its output aside; if it fails, fail REASON with its last line
  "${@:2}" >"$WORK/out" 2>&1 || fail "$1" "${*:2}: $(last_line "$WORK/out")"
}

poll() {  # poll SECONDS CMD...: CMD once a second until it succeeds; 1 if it did not in time
  local end=$((SECONDS + $1))
  until "${@:2}"; do ((SECONDS < end)) || return 1; sleep 1; done
}

json_str() {  # $1 as a JSON string literal; control characters become spaces
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "${s//[$'\x01'-$'\x1f']/ }"
}

# Every byte percent-encoded: always valid in a URL query, whatever the run id or store prefix.
urlencode() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n' | sed 's/../%&/g'; }

md_get() {  # md_get VAR PATH [DEFAULT]: a metadata value; a 404 is an error unless a default is given
  local code
  code=$(curl -sS -o "$WORK/md" -w '%{http_code}' -H 'Metadata-Flavor: Google' --max-time 10 \
    --retry 5 --retry-connrefused --retry-delay 1 "$METADATA_URL/$2") || code=000
  if [[ $code == 200 ]]; then printf -v "$1" '%s' "$(<"$WORK/md")"
  elif [[ $code == 404 && $# -ge 3 ]]; then printf -v "$1" '%s' "$3"
  elif [[ $code == 404 ]]; then fail bad_metadata "metadata $2 is missing"
  else fail bad_metadata "could not read metadata $2: HTTP $code $(last_line "$WORK/md")"
  fi
}

md_attr() { md_get "$1" "instance/attributes/$2" "${@:3}"; }

# A gang node's rank is the -nR tail of its own name (runner.naming.node_name: ...-aN-nR, the same
# pattern as runner.naming.rank_of): one bulkInsert gives every node the same metadata, so the
# name is the one thing that tells the nodes apart.
node_rank() {  # node_rank NAME: prints R; returns 1 for a name that carries no rank
  [[ $1 =~ -a[0-9]+-n([0-9]+)$ ]] || return 1
  printf '%d' "$((10#${BASH_REMATCH[1]}))"
}

get_token() {  # the VM service account's access token into TOKEN; never printed
  [[ -n $TOKEN ]] && return 0
  local re='"access_token"[[:space:]]*:[[:space:]]*"([^"]+)"' body
  body=$(curl -sSf -H 'Metadata-Flavor: Google' --max-time 10 --retry 3 \
    "$METADATA_URL/instance/service-accounts/default/token") || { log "no access token from the metadata server"; return 1; }
  [[ $body =~ $re ]] || { log "token response has no access_token"; return 1; }
  TOKEN=${BASH_REMATCH[1]}
}

# The token goes in a header read from a pipe: never in argv (visible in /proc) nor the output.
curl_auth() { curl -H @<(printf 'Authorization: Bearer %s\n' "$TOKEN") "$@"; }

# Where this boot's outcome goes: a run's attempt, or (bake mode) the warm image being made. A
# gang's other nodes keep theirs apart (RunPaths.startup_name): the supervisor judges rank 0's boot,
# and a node that cannot boot is a lost node (its VM goes), which restarts the whole gang.
record_name() {
  if [[ -n $BAKE ]]; then printf '%sbakes/%s/startup.json' "$OBJ_PREFIX" "$BAKE"
  elif ((NODE_RANK > 0)); then printf '%sruns/%s/attempts/%s/nodes/%s/startup.json' "$OBJ_PREFIX" "$RUN_ID" "$ATTEMPT" "$NODE_RANK"
  else printf '%sruns/%s/attempts/%s/startup.json' "$OBJ_PREFIX" "$RUN_ID" "$ATTEMPT"; fi
}

# mark PHASE AT DETAIL_JSON: one create-only mark of this attempt's recovery timeline
# (attempts/N/phases/PHASE.json, entrypoint/record/phases.py), the way RunRecord.mark_phase
# writes it. Best effort and in the background, with a short timeout: a slow bucket must not
# slow the boot it times, and a mark that cannot be written is a log line, never a failed boot.
mark() {
  [[ -z $BAKE ]] || return 0
  ((NODE_RANK == 0)) || return 0  # a gang's timeline is rank 0's (the marks are create-only)
  get_token || { log "phase $1 not marked: no token"; return 0; }
  local file="$WORK/phase-$1.json" name="${OBJ_PREFIX}runs/$RUN_ID/attempts/$ATTEMPT/phases/$1.json"
  printf '{"actor":"startup:%s","attempt":%d,"detail":%s,"phase":"%s","schema_version":1,"time":%s}\n' \
    "$INSTANCE" "$ATTEMPT" "$3" "$1" "$2" >"$file"
  (
    code=$(curl_auth -sS -o "$file.out" -w '%{http_code}' --max-time 10 -X POST \
      -H 'Content-Type: application/json' --data-binary @"$file" \
      "$GCS_API/upload/storage/v1/b/$BUCKET/o?uploadType=media&name=$(urlencode "$name")&ifGenerationMatch=0") || code=000
    # 412: already marked (a boot before this one, or a reply lost after the write).
    [[ $code == 200 || $code == 412 ]] || log "phase $1 not marked: HTTP $code $(last_line "$file.out")"
  ) </dev/null &
}

# Times in pure bash (COS has no python, and awk is not a promise): EPOCHREALTIME is "S.UUUUUU".
us() { local t=${1/./}; printf '%d' "$((10#$t))"; }            # seconds with 6 decimals -> microseconds
secs() { printf '%d.%06d' "$(($1 / 1000000))" "$(($1 % 1000000))"; }  # microseconds -> seconds
since() { local d=$(($(us "$EPOCHREALTIME") - $(us "$1"))); printf '%d.%d' "$((d / 1000000))" "$((d % 1000000 / 100000))"; }

write_startup_record() {  # STATUS REASON DETAIL -> runs/ID/attempts/N/startup.json (bakes/NAME/ when baking)
  local name code reason=null
  if [[ -z $BUCKET ]] || ! is_uint "$ATTEMPT"; then log "cannot write startup.json: store or attempt unknown"; return 1; fi
  get_token || return 1
  [[ -z $2 ]] || reason=$(json_str "$2")
  printf '{"schema_version":1,"attempt":%d,"phase":%s,"status":"%s","reason":%s,"detail":%s,"instance":%s,"zone":%s,"time":%(%s)T}\n' \
    "$ATTEMPT" "$(json_str "$PHASE")" "$1" "$reason" "$(json_str "${3:0:2000}")" \
    "$(json_str "$INSTANCE")" "$(json_str "$ZONE")" -1 >"$WORK/startup.json"
  name=$(record_name)
  code=$(curl_auth -sS -o "$WORK/upload.out" -w '%{http_code}' --max-time 30 --retry 3 --retry-connrefused \
    -X POST -H 'Content-Type: application/json' --data-binary @"$WORK/startup.json" \
    "$GCS_API/upload/storage/v1/b/$BUCKET/o?uploadType=media&name=$(urlencode "$name")") || code=000
  [[ $code == 200 ]] || { log "startup.json upload to gs://$BUCKET/$name: HTTP $code $(last_line "$WORK/upload.out")"; return 1; }
  log "wrote gs://$BUCKET/$name ($1)"
}

self_delete() {  # a VM with nothing left to run must not keep billing
  local code
  if [[ -n $PROJECT && -n $ZONE && -n $INSTANCE ]] && get_token; then
    code=$(curl_auth -sS -o "$WORK/delete.out" -w '%{http_code}' --max-time 30 --retry 3 --retry-connrefused \
      -X DELETE "$COMPUTE_API/compute/v1/projects/$PROJECT/zones/$ZONE/instances/$INSTANCE") || code=000
    [[ $code == 200 ]] && { log "requested deletion of this VM ($INSTANCE in $ZONE)"; return 0; }
    log "deleting this VM failed: HTTP $code $(last_line "$WORK/delete.out")"
  fi
  log "powering off instead of deleting"   # a stopped spot VM bills for its disks only
  poweroff || log "poweroff failed; this VM may keep billing until the supervisor deletes it"
}

fail() {  # fail REASON DETAIL: marker, failure record, self-delete, exit. Never returns.
  trap - ERR && set +e
  [[ -z $FAILED ]] || exit 1   # a failure while failing: the first one is what counts
  FAILED=$1
  printf 'runner-phase: failed:%s\n' "$1"
  log "boot failed in phase $PHASE: $1: $2"
  write_startup_record failed "$1" "$2" || log "WARNING: the failure is not recorded in the store"
  self_delete
  exit 1
}

on_error() {  # an unexpected error still ends in a record and a deleted VM, never an idle VM
  [[ $BASHPID == "$$" ]] || exit "$1"   # in a subshell: let the parent handle it
  fail startup_error "unexpected failure (exit $1) at line $2: $3"
}

read_metadata() {
  phase metadata
  local key name
  # Who we are first: a failure from here on can still delete this VM.
  md_get INSTANCE instance/name
  md_get ZONE instance/zone
  ZONE=${ZONE##*/}                          # projects/NUM/zones/ZONE
  md_get PROJECT project/project-id
  # runner-KEY into the variable KEY in upper snake case (runner-gpu-count: GPU_COUNT).
  for key in run-id attempt store image gpu-count gpu-timeout grace-period shm-size data-mount; do
    name=${key//-/_} && md_attr "${name^^}" "runner-$key"
  done
  for key in gpu-driver-version data-disk checkpoint-dir results-dir heartbeat-interval sync-interval bake nnodes provisioning data-mounts; do
    name=${key//-/_} && md_attr "${name^^}" "runner-$key" ""   # optional
  done
  [[ $STORE =~ ^gs://([^/]+)/*(.*[^/])?/*$ ]] || fail bad_metadata "runner-store must be gs://BUCKET[/PREFIX], not $STORE"
  BUCKET=${BASH_REMATCH[1]}
  OBJ_PREFIX=${BASH_REMATCH[2]:+${BASH_REMATCH[2]}/}   # same rule as entrypoint.store_gcs.parse_gs_url
  NNODES=${NNODES:-1}   # absent: a single VM
  for key in ATTEMPT GPU_COUNT GPU_TIMEOUT GRACE_PERIOD NNODES; do   # whole numbers, as vm_metadata writes them
    name=${key//_/-}
    is_uint "${!key}" || fail bad_metadata "runner-${name,,} must be a whole number, not ${!key}"
    printf -v "$key" '%d' "$((10#${!key}))"
  done
  if [[ -n $DATA_DISK ]]; then
    [[ $DATA_DISK =~ ^[A-Za-z0-9_-]+$ ]] || fail data_disk_failed "invalid data disk device name '$DATA_DISK'"
    # /mnt is read-only on COS (docs/architecture.md#on-the-vm-cos); a mount anywhere but /var/lib fails or is lost.
    [[ $DATA_MOUNT =~ ^/var/lib/[A-Za-z0-9._/-]+$ && /$DATA_MOUNT/ != */../* && /$DATA_MOUNT/ != */./* ]] ||
      fail data_disk_failed "runner-data-mount must be a path under /var/lib (COS: / and /mnt are read-only), not $DATA_MOUNT"
  fi
  for key in $DATA_MOUNTS; do   # --data mount paths (runner.launch.staged_data), as entrypoint.data_sources allows
    [[ $key =~ ^/[A-Za-z0-9._/-]+$ && /$key/ != */../* ]] || fail bad_metadata "runner-data-mounts holds an invalid path: $key"
  done
  if ((NNODES > 1)); then
    NODE_RANK=$(node_rank "$INSTANCE") || fail bad_metadata "runner-nnodes is $NNODES but this VM's name $INSTANCE carries no node rank (-aN-nR)"
    ((NODE_RANK < NNODES)) || fail bad_metadata "node rank $NODE_RANK of $INSTANCE is outside a gang of $NNODES"
    log "gang node $NODE_RANK of $NNODES"
  fi
  [[ $IMAGE == *@sha256:* ]] || log "warning: image $IMAGE is not pinned by digest; a restart may run other code"
  [[ -z $BAKE || $BAKE =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || fail bad_metadata "runner-bake must be an image name, not $BAKE"
  log "run $RUN_ID attempt $ATTEMPT on $INSTANCE ($ZONE, project $PROJECT): image $IMAGE, $GPU_COUNT GPU(s)"
}

wait_for_docker() {  # before the driver: `cos-extensions install gpu` runs its installer in Docker
  phase docker
  poll "$DOCKER_WAIT" docker info >/dev/null 2>&1 || fail docker_unavailable "the Docker daemon did not answer within ${DOCKER_WAIT}s"
}

gpu_ready() {  # nvidia-smi works and the device nodes exist: GPU_DEVICES, or why not in GPU_WHY
  local d
  GPU_WHY="" GPU_DEVICES=()
  timeout 30 "$NVIDIA_ROOT/bin/nvidia-smi" >"$WORK/nvidia-smi.out" 2>&1 ||
    { GPU_WHY="nvidia-smi failed: $(last_line "$WORK/nvidia-smi.out")"; return 1; }
  for d in "$DEV_ROOT"/nvidia[0-9]*; do
    if [[ ${d##*/} =~ ^nvidia[0-9]+$ && -c $d ]]; then GPU_DEVICES+=("$d"); fi
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
  mountpoint -q "$NVIDIA_ROOT" || must gpu_driver_failed mount --bind "$NVIDIA_ROOT" "$NVIDIA_ROOT"
  mount -o remount,bind,exec "$NVIDIA_ROOT" 2>/dev/null || must gpu_driver_failed mount -o remount,exec "$NVIDIA_ROOT"
}

kill_installer() {  # killing cos-extensions leaves its installer container running: remove that too
  local id image
  while read -r id image; do
    if [[ $image == *cos-gpu-installer* ]]; then log "removing the GPU installer container $id"; docker rm -f "$id" >/dev/null || log "could not remove $id"; fi
  done < <(docker ps --no-trunc --format '{{.ID}} {{.Image}}')
}

# At every boot: after a STOP/start the kernel has forgotten the modules. Install and wait fit in
# gpu-timeout, so the supervisor's stall window (config keeps it >= gpu_timeout) never fires first.
setup_gpu() {
  phase gpu-driver
  local start=$SECONDS deadline=$((SECONDS + GPU_TIMEOUT + 1)) try rc args=(install gpu)  # +1: whole seconds
  local t0=$EPOCHREALTIME path=cold want
  # Driver files left on this disk by an earlier install (a kept disk, or a warm image baked with
  # them) for this kernel and version: the installer only verifies and loads them. It still runs,
  # at every boot: the kernel modules are gone after any power-off.
  want="$(uname -r) ${GPU_DRIVER_VERSION:-default}"
  [[ $(cat "$NVIDIA_ROOT/.runner-driver" 2>/dev/null) == "$want" ]] && path=warm
  [[ -z $GPU_DRIVER_VERSION ]] || args+=(-- "-version=$GPU_DRIVER_VERSION")
  nvidia_exec_mount
  for ((try = 1; ; try++)); do
    log "cos-extensions ${args[*]} (try $try of $GPU_INSTALL_TRIES)"
    rc=0
    timeout -k 5 $((deadline - SECONDS)) cos-extensions "${args[@]}" >"$WORK/install.log" 2>&1 </dev/null || rc=$?
    tail -n 20 "$WORK/install.log"
    ((rc != 0)) || break
    if ((rc == 124 || rc == 137)); then
      kill_installer
      fail gpu_timeout "no GPU within ${GPU_TIMEOUT}s: cos-extensions ${args[*]} did not finish"
    fi
    ((try < GPU_INSTALL_TRIES)) || fail gpu_driver_failed "cos-extensions ${args[*]} failed $try times (exit $rc): $(last_line "$WORK/install.log")"
    ((deadline - SECONDS > 10)) || fail gpu_timeout "no GPU within ${GPU_TIMEOUT}s: cos-extensions ${args[*]} failed (exit $rc)"
    sleep 10
  done
  nvidia_exec_mount

  phase gpu-wait
  local next_diag=$((SECONDS + GPU_DIAG_INTERVAL))
  until gpu_ready; do
    if ((SECONDS >= deadline || SECONDS >= next_diag)); then   # best effort: diagnostics never end the wait
      log "gpu-wait diagnostics after $((SECONDS - start))s: $GPU_WHY"
      { dmesg 2>&1 | grep -iE 'nvidia|nvrm|xid' | tail -n 20 | sed 's/^/runner:   dmesg: /'; } || true
      grep -i nvidia /proc/modules | sed 's/^/runner:   module: /' || log "  no nvidia kernel module loaded"
      next_diag=$((SECONDS + GPU_DIAG_INTERVAL))
    fi
    ((SECONDS < deadline)) || fail gpu_timeout "no usable GPU within ${GPU_TIMEOUT}s (driver install and wait): $GPU_WHY"
    sleep "$GPU_POLL"
  done
  log "GPU ready: ${GPU_DEVICES[*]} ($path driver path, $(since "$t0") s)"
  printf '%s' "$want" >"$NVIDIA_ROOT/.runner-driver" || log "could not note the installed driver"
  mark driver_ready "$EPOCHREALTIME" "{\"path\":\"$path\",\"seconds\":$(since "$t0")}"
}

registry_auth() {
  phase registry-auth
  local host=${IMAGE%%/*}
  if [[ $host == gcr.io || $host == *.gcr.io || $host == *docker.pkg.dev ]]; then   # else no credentials
    must registry_auth_failed docker-credential-gcr configure-docker --registries="$host"
  fi
}

# On a kept disk (STOP/start) the image is already there: this is what a restart in place saves.
# A warm image (baked with it) holds it too: pinned by digest, `image inspect` of that reference
# succeeds only for exactly those bytes, so it is verified, not trusted.
pull_image() {
  phase image-pull
  local try delay=$PULL_BACKOFF err="" t0=$EPOCHREALTIME
  if [[ $IMAGE == *@sha256:* ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "image $IMAGE is already on this disk (warm): no pull"
    mark image_ready "$EPOCHREALTIME" '{"path":"warm","seconds":0}'
    return 0
  fi
  for ((try = 1; try <= PULL_RETRIES; try++)); do
    if docker pull "$IMAGE" >"$WORK/pull.log" 2>&1; then
      log "pulled $IMAGE in $(since "$t0") s: $(last_line "$WORK/pull.log")"
      mark image_ready "$EPOCHREALTIME" "{\"path\":\"cold\",\"seconds\":$(since "$t0")}"
      return 0
    fi
    err=$(last_line "$WORK/pull.log")
    log "docker pull $IMAGE failed (try $try of $PULL_RETRIES): $err"
    ((try == PULL_RETRIES)) || { log "retrying in ${delay}s"; sleep "$delay"; delay=$((delay * 2 > 60 ? 60 : delay * 2)); }
  done
  fail image_pull_failed "docker pull $IMAGE failed $PULL_RETRIES times: $err"
}

mount_data_disk() {
  phase data-disk
  local dev="$DISK_BY_ID/google-$DATA_DISK" rc=0
  poll 60 test -b "$dev" || fail data_disk_failed "data disk $dev did not appear"   # it can show up late
  if mountpoint -q "$DATA_MOUNT"; then log "$DATA_MOUNT is already mounted"; return 0; fi
  blkid "$dev" >/dev/null 2>&1 || rc=$?
  ((rc == 0 || rc == 2)) || fail data_disk_failed "blkid $dev failed (exit $rc)"
  if ((rc == 2)); then   # blkid: no filesystem signature at all, so a new disk
    log "formatting $dev (ext4)"
    must data_disk_failed mkfs.ext4 -q -F -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard "$dev"
  fi
  must data_disk_failed mkdir -p "$DATA_MOUNT"
  must data_disk_failed mount -o discard,defaults "$dev" "$DATA_MOUNT"
  log "mounted $dev at $DATA_MOUNT"
}

# On a warm disk the image is here before the driver is loaded: fetch the checkpoint meanwhile,
# in the workload image (python3 -m entrypoint.prestage), into a directory the job's container
# gets as RUNNER_PRESTAGED_DIR. The agent adopts a file only if it is exactly the stored object,
# so a copy cut short or stale costs a download, never a wrong resume. Best effort throughout.
start_prestage() {
  local dir="$STATE_DIR/prestaged" args
  rm -rf "$dir" && mkdir -p "$dir" || { log "prestage: cannot make $dir"; return 0; }
  docker rm -f "$CONTAINER-prestage" >/dev/null 2>&1 || true
  args=(run -d --name "$CONTAINER-prestage" --network host --pull never --entrypoint python3
    -v "$dir:/prestaged" -e "RUNNER_RUN_ID=$RUN_ID" -e "RUNNER_STORE=$STORE")
  [[ -z ${STORAGE_EMULATOR_HOST:-} ]] || args+=(-e "STORAGE_EMULATOR_HOST=$STORAGE_EMULATOR_HOST")
  if docker "${args[@]}" "$IMAGE" -m entrypoint.prestage /prestaged >"$WORK/prestage.log" 2>&1; then
    PRESTAGED=$dir
    log "fetching the checkpoint while the driver loads"
  else
    log "prestage not started: $(last_line "$WORK/prestage.log")"
  fi
}

finish_prestage() {
  [[ -n $PRESTAGED ]] || return 0
  local code
  # Bounded: a prestage that hangs must not hold the job back; the agent downloads what is missing.
  code=$(timeout "$PRESTAGE_WAIT" docker wait "$CONTAINER-prestage" 2>/dev/null) || code="?"
  log "prestage exited ($code): $(docker logs --tail 1 "$CONTAINER-prestage" 2>&1 | tail -n 1)"
  docker rm -f "$CONTAINER-prestage" >/dev/null 2>&1 || log "could not remove $CONTAINER-prestage"
}

gpu_args() {  # COS GPU wiring (docs/architecture.md#on-the-vm-cos): never --gpus (its CDI hook fails) nor --runtime=nvidia
  local d image_path
  args+=(-v "$NVIDIA_ROOT/lib64:$DRIVER_LIBS" -v "$NVIDIA_ROOT/bin:/usr/local/nvidia/bin")
  for d in "${GPU_DEVICES[@]}" "$DEV_ROOT/nvidiactl" "$DEV_ROOT/nvidia-uvm"; do args+=(--device "$d:/dev/${d##*/}"); done
  # Prepend, never replace: PyTorch/NGC images find CUDA through their own LD_LIBRARY_PATH.
  image_path=$(docker image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed -n 's/^LD_LIBRARY_PATH=//p')
  args+=(-e "LD_LIBRARY_PATH=$DRIVER_LIBS${image_path:+:$image_path}" -e "RUNNER_GPU_LIB_DIR=$DRIVER_LIBS")
}

# --data: the agent stages source i into $root/i (entrypoint.staging) through the read-write
# staging mount; the job reads the same folder through a read-only bind at the path it asked for.
# On the data disk when there is one (it survives the VM, so a restart copies only what changed),
# else on the stateful partition (kept by a STOP-mode VM).
data_args() {
  local root i=0 m
  if [[ -n $DATA_DISK ]]; then root=$DATA_MOUNT/staged; else root=$STATE_DIR/staged; fi
  args+=(-v "$root:/var/lib/runner/staged" -e RUNNER_DATA_DIR=/var/lib/runner/staged)
  for m in $DATA_MOUNTS; do
    must container_start_failed mkdir -p "$root/$i"
    args+=(-v "$root/$i:$m:ro")
    i=$((i + 1))
  done
}

start_container() {
  phase container-start
  local status args key
  # A reboot (terminationAction=STOP) finds the previous attempt's container: stop it with its
  # grace period (a final sync if it still runs), remove it, start fresh from the checkpoints.
  if docker container inspect "$CONTAINER" >/dev/null 2>&1; then
    docker stop --time "$GRACE_PERIOD" "$CONTAINER" >/dev/null 2>&1 || log "docker stop $CONTAINER failed; removing it anyway"
    must container_start_failed docker rm -f "$CONTAINER"
  fi
  # Host network is the COS norm: no docker0 NAT in the path of checkpoint uploads, no MTU
  # mismatch with the VPC (1460), and the metadata server answers the agent's credentials.
  args=(run -d --name "$CONTAINER" --restart no --network host --pull never
    --shm-size "$SHM_SIZE"      # docker's 64 MB /dev/shm crashes data loaders with "Bus error"
    --stop-timeout "$GRACE_PERIOD" --log-driver json-file --log-opt max-size=100m --log-opt max-file=3
    --label "cos-spot-runner.run-id=$RUN_ID" --label "cos-spot-runner.attempt=$ATTEMPT"
    -e "RUNNER_RUN_ID=$RUN_ID" -e "RUNNER_STORE=$STORE" -e "RUNNER_ATTEMPT=$ATTEMPT"
    -e "RUNNER_GRACE_PERIOD=$GRACE_PERIOD" -e "RUNNER_INSTANCE=$INSTANCE" -e "RUNNER_ZONE=$ZONE"
    -e "RUNNER_IMAGE=$IMAGE" -e RUNNER_COMMAND_FROM_SPEC=1)
  # A gang's node: its place in the generation. Not the master address: the agent reads rank 0's
  # from the attempt's create claim (this script knows only its own VM). The host network above
  # is what lets torchrun's port on rank 0 be reached from the other nodes.
  if ((NNODES > 1)); then args+=(-e "RUNNER_NODE_RANK=$NODE_RANK" -e "RUNNER_NNODES=$NNODES"); fi
  for key in CHECKPOINT_DIR RESULTS_DIR HEARTBEAT_INTERVAL SYNC_INTERVAL PROVISIONING; do   # unset: the agent's default
    [[ -z ${!key} ]] || args+=(-e "RUNNER_$key=${!key}")
  done
  # Set only in tests (the GCS emulator): the agent must reach the same store as this script.
  [[ -z ${STORAGE_EMULATOR_HOST:-} ]] || args+=(-e "STORAGE_EMULATOR_HOST=$STORAGE_EMULATOR_HOST")
  if ((GPU_COUNT > 0)); then gpu_args; fi
  [[ -z $DATA_DISK ]] || args+=(-v "$DATA_MOUNT:$DATA_MOUNT")
  [[ -z $DATA_MOUNTS ]] || data_args
  # The checkpoint directory on the VM's own disk, not in the container (removed above at a
  # STOP/start): a kept disk then holds the newest checkpoint, and the agent resumes from it
  # without a download (entrypoint.tiers). On a data disk it is kept already.
  local ckpt=${CHECKPOINT_DIR:-/var/lib/runner/checkpoints}
  if [[ -z $DATA_DISK || $ckpt/ != "$DATA_MOUNT"/* ]]; then
    must container_start_failed mkdir -p "$STATE_DIR/checkpoints"
    args+=(-v "$STATE_DIR/checkpoints:$ckpt")
  fi
  # Writable: the agent empties it once restored (a checkpoint must not sit on the disk twice).
  [[ -z $PRESTAGED ]] || args+=(-v "$PRESTAGED:/var/lib/runner/prestaged" -e RUNNER_PRESTAGED_DIR=/var/lib/runner/prestaged)
  # The image's ENTRYPOINT is `python3 -m entrypoint --`; with nothing after it, spec.json's command.
  docker "${args[@]}" "$IMAGE" >"$WORK/run.log" 2>&1 || fail container_start_failed "docker run: $(last_line "$WORK/run.log")"
  status=$(docker container inspect -f '{{.State.Status}}' "$CONTAINER" 2>&1) || fail container_start_failed "docker inspect: $status"
  [[ $status == running || $status == exited ]] ||   # exited: a quick job, which the agent recorded
    fail container_start_failed "container $CONTAINER is $status after docker run"
  phase container-running
  write_startup_record ok "" "container $(last_line "$WORK/run.log") started" ||
    log "warning: startup.json (ok) not written; the agent's manifest will show the start anyway"
}

# The attempt is over once the container exits, and the VM deletes itself, unless the exit came
# from a shutdown (preemption, stop, delete; marked by shutdown.sh): a STOP VM is to be kept.
release_when_done() {
  local code
  code=$(docker wait "$CONTAINER" 2>/dev/null) || code="?"
  log "container exited ($code); the end of the job's output (all of it: gs://$BUCKET/${OBJ_PREFIX}runs/$RUN_ID/logs/$ATTEMPT.log):"
  docker logs --tail 40 "$CONTAINER" 2>&1 | tail -c 8192 | sed 's/^/job: /' || log "docker logs failed"
  rm -rf "$STATE_DIR/prestaged"   # the agent restored from it long ago: give the disk back
  if [[ -e $STATE_DIR/shutting-down ]]; then log "stopped during a shutdown; leaving the VM to it"; return 0; fi
  printf 'runner-phase: finished\n'
  self_delete
}

# Bake mode (`runner images bake`): this VM's disk becomes a warm boot image. The driver is
# installed and the image pulled above; nothing else may land on the disk (no job, no record of
# a run), and the VM is kept for `runner images bake` to stop and image.
bake_done() {
  phase bake-ready
  docker image inspect "$IMAGE" >/dev/null || fail image_pull_failed "$IMAGE is not on the disk after the pull"
  write_startup_record ok "" "driver and $IMAGE on the disk" || fail bake_failed "could not record the bake as ready"
  rm -rf "$STATE_DIR/home"   # docker's credential config: not part of an image
}

main() {
  set -E
  trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR
  WORK=$(mktemp -d /tmp/runner-startup.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
  read_metadata
  # The kernel started when the VM turned RUNNING: its uptime dates that on the VM's own clock.
  local booted=${RUNNER_BOOTED_AT:-} up
  if [[ -z $booted ]]; then   # /proc/uptime: "SECONDS.CC IDLE"
    read -r up _ </proc/uptime
    booted=$(secs "$(($(us "$EPOCHREALTIME") - $(us "$up") * 10000))")
  fi
  mark vm_running "$booted" '{"source":"uptime"}'
  mark startup_script "$STARTED_AT" '{}'
  wait_for_docker
  # docker and docker-credential-gcr keep their config in $HOME/.docker; /root is read-only on COS.
  mkdir -p "$STATE_DIR/home"
  export HOME="$STATE_DIR/home" DOCKER_CONFIG="$STATE_DIR/home/.docker"
  if ((GPU_COUNT > 0)) && [[ -z $BAKE && $IMAGE == *@sha256:* ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    start_prestage
  fi
  if ((GPU_COUNT > 0)); then setup_gpu; else mark driver_ready "$EPOCHREALTIME" '{"path":"none"}'; fi  # not `||`: that would turn off -e inside it
  registry_auth
  pull_image
  if [[ -n $BAKE ]]; then bake_done; return 0; fi
  if [[ -n $DATA_DISK ]]; then mount_data_disk; fi
  rm -f "$STATE_DIR/shutting-down"  # left by the shutdown before a STOP/start cycle
  finish_prestage
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
