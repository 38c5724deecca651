#!/bin/bash
# cos-spot-runner: the COS startup script. Runs as root at every boot of a run's VM.
#
# Reads the run from instance metadata (runner/backends/vm_metadata.py is the contract), installs
# the GPU driver when the run has GPUs, pulls the pinned image and starts the job container with
# the COS GPU wiring (DESIGN §4). Each phase prints one `runner-phase: NAME` line on stdout, which
# the guest agent copies to the serial console: a VM that never wrote a heartbeat is diagnosed
# from those lines. A boot that cannot succeed writes runs/ID/attempts/N/startup.json
# (status "failed") to the store and deletes its own VM, so nothing is left billing.
#
# COS has bash, curl, base64 and docker but no python or jq, so the base64(JSON) command and env
# are decoded here by a strict JSON string parser (json_* below), never guessed.
#
# Every endpoint and root path can be overridden from the environment (tests run this script for
# real against fakes); the defaults are production's.
set -euo pipefail
# Byte semantics for the JSON parser and URL encoding, whatever the VM's locale.
export LC_ALL=C

METADATA_URL=${METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}
GCS_API=${GCS_API:-https://storage.googleapis.com}
COMPUTE_API=${COMPUTE_API:-https://compute.googleapis.com}
NVIDIA_ROOT=${RUNNER_NVIDIA_ROOT:-/var/lib/nvidia}
DEV_ROOT=${RUNNER_DEV_ROOT:-/dev}
DISK_BY_ID=${RUNNER_DISK_BY_ID:-/dev/disk/by-id}
STATE_DIR=${RUNNER_STATE_DIR:-/var/lib/runner}    # /var/lib is writable on COS; / and /mnt are not
SERIAL=${RUNNER_SERIAL:-/dev/console}             # where the job's log is streamed
CONTAINER=${RUNNER_CONTAINER_NAME:-runner-job}
RELEASE_WAIT=${RUNNER_RELEASE_WAIT:-background}  # foreground: wait for the job here (tests)
PULL_RETRIES=${PULL_RETRIES:-5}
PULL_BACKOFF=${PULL_BACKOFF:-5}                   # seconds before the 2nd try, doubled each time
GPU_POLL=${RUNNER_GPU_POLL:-5}                    # seconds between nvidia-smi checks
GPU_DIAG_INTERVAL=${RUNNER_GPU_DIAG_INTERVAL:-30} # seconds between diagnostics while waiting
GPU_INSTALL_TRIES=${RUNNER_GPU_INSTALL_TRIES:-3}
DOCKER_WAIT=${RUNNER_DOCKER_WAIT:-120}            # docker.service may start after this script

PHASE=starting
FAILED=""
WORK=""
TOKEN=""
RUN_ID="" ATTEMPT="" STORE="" BUCKET="" OBJ_PREFIX="" INSTANCE="" ZONE="" PROJECT=""

log() { printf 'runner: %s\n' "$*"; }

phase() {
  PHASE=$1
  printf 'runner-phase: %s\n' "$1"
}

# ---------------------------------------------------------------------------------------------
# Strict JSON decoding for the two shapes the contract uses: an array of strings (the command)
# and an object of string -> string (the env). Anything else is refused. Non-ASCII arrives as
# \uXXXX (Python's json.dumps) and is re-encoded as UTF-8 bytes; a lone surrogate \udc80-\udcff is
# the raw byte Python's surrogateescape stands for (a non-UTF-8 argv byte), as os.fsencode does.
# NUL cannot be in an argv or env string, so \u0000 is refused rather than truncated.
# ---------------------------------------------------------------------------------------------
_JS=""   # the text not yet consumed
_JV=""   # the last string decoded
_JERR=""

_json_fail() { _JERR=$1; return 1; }

_json_ws() { _JS=${_JS#"${_JS%%[!$' \t\n\r']*}"}; }

# UTF-8 bytes of code point $1 into _JU.
_json_utf8() {
  local cp=$1 fmt
  if ((cp < 0x80)); then
    printf -v fmt '\\x%02x' "$cp"
  elif ((cp < 0x800)); then
    printf -v fmt '\\x%02x\\x%02x' $((0xC0 | cp >> 6)) $((0x80 | (cp & 0x3F)))
  elif ((cp < 0x10000)); then
    printf -v fmt '\\x%02x\\x%02x\\x%02x' $((0xE0 | cp >> 12)) $((0x80 | (cp >> 6 & 0x3F))) \
      $((0x80 | (cp & 0x3F)))
  else
    printf -v fmt '\\x%02x\\x%02x\\x%02x\\x%02x' $((0xF0 | cp >> 18)) $((0x80 | (cp >> 12 & 0x3F))) \
      $((0x80 | (cp >> 6 & 0x3F))) $((0x80 | (cp & 0x3F)))
  fi
  printf -v _JU %b "$fmt"
}

# After "\u": four hex digits (and a low surrogate after a high one) into _JU.
_json_unicode() {
  local hex=${_JS:0:4} cp lo
  if ! [[ $hex =~ ^[0-9A-Fa-f]{4}$ ]]; then _json_fail "bad \\u escape"; return 1; fi
  _JS=${_JS:4}
  cp=$((16#$hex))
  if ((cp >= 0xD800 && cp <= 0xDBFF)); then
    if [[ ${_JS:0:2} == '\u' && ${_JS:2:4} =~ ^[dD][c-fC-F][0-9A-Fa-f]{2}$ ]]; then
      lo=$((16#${_JS:2:4}))
      _JS=${_JS:6}
      cp=$((0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)))
    else
      _json_fail "unpaired surrogate \\u$hex"; return 1
    fi
  elif ((cp >= 0xDC80 && cp <= 0xDCFF)); then
    printf -v hex '\\x%02x' $((cp - 0xDC00))
    printf -v _JU %b "$hex"
    return 0
  elif ((cp >= 0xDC00 && cp <= 0xDFFF)); then
    _json_fail "unpaired surrogate \\u$hex"; return 1
  fi
  if ((cp == 0)); then _json_fail "NUL (\\u0000) cannot be passed in argv or env"; return 1; fi
  _json_utf8 "$cp"
}

# One JSON string at the head of _JS into _JV.
_json_string() {
  local out="" chunk esc re='^([^"\]*)'
  if [[ ${_JS:0:1} != '"' ]]; then _json_fail "expected a string"; return 1; fi
  _JS=${_JS:1}
  while :; do
    [[ $_JS =~ $re ]]
    chunk=${BASH_REMATCH[1]}
    if [[ $chunk == *[$'\x01'-$'\x1f']* ]]; then _json_fail "raw control character in a string"; return 1; fi
    out+=$chunk
    _JS=${_JS:${#chunk}}
    case ${_JS:0:1} in
      '"') _JS=${_JS:1}; _JV=$out; return 0 ;;
      '') _json_fail "unterminated string"; return 1 ;;
    esac
    esc=${_JS:1:1}
    _JS=${_JS:2}
    case $esc in
      '"') out+='"' ;;
      \\) out+=\\ ;;
      '/') out+='/' ;;
      b) out+=$'\b' ;;
      f) out+=$'\f' ;;
      n) out+=$'\n' ;;
      r) out+=$'\r' ;;
      t) out+=$'\t' ;;
      u) _json_unicode || return 1; out+=$_JU ;;
      *) _json_fail "bad escape \\$esc"; return 1 ;;
    esac
  done
}

# $1: JSON text of an array of strings -> JSON_ARRAY.
json_string_array() {
  JSON_ARRAY=()
  _JS=$1
  _json_ws
  if [[ ${_JS:0:1} != '[' ]]; then _json_fail "expected a JSON array"; return 1; fi
  _JS=${_JS:1}
  _json_ws
  if [[ ${_JS:0:1} == ']' ]]; then
    _JS=${_JS:1}
  else
    while :; do
      _json_ws
      _json_string || return 1
      JSON_ARRAY+=("$_JV")
      _json_ws
      case ${_JS:0:1} in
        ,) _JS=${_JS:1} ;;
        ']') _JS=${_JS:1}; break ;;
        *) _json_fail "expected , or ] in the array (only strings are allowed)"; return 1 ;;
      esac
    done
  fi
  _json_ws
  if [[ -n $_JS ]]; then _json_fail "trailing data after the array"; return 1; fi
}

# $1: JSON text of an object of string -> string -> JSON_KEYS, JSON_VALUES (same order).
json_string_object() {
  JSON_KEYS=()
  JSON_VALUES=()
  local k seen
  _JS=$1
  _json_ws
  if [[ ${_JS:0:1} != '{' ]]; then _json_fail "expected a JSON object"; return 1; fi
  _JS=${_JS:1}
  _json_ws
  if [[ ${_JS:0:1} == '}' ]]; then
    _JS=${_JS:1}
  else
    while :; do
      _json_ws
      _json_string || return 1
      k=$_JV
      for seen in "${JSON_KEYS[@]}"; do
        if [[ $seen == "$k" ]]; then _json_fail "duplicate key $k"; return 1; fi
      done
      _json_ws
      if [[ ${_JS:0:1} != : ]]; then _json_fail "expected : after key $k"; return 1; fi
      _JS=${_JS:1}
      _json_ws
      _json_string || { _JERR="value of $k: $_JERR (only strings are allowed)"; return 1; }
      JSON_KEYS+=("$k")
      JSON_VALUES+=("$_JV")
      _json_ws
      case ${_JS:0:1} in
        ,) _JS=${_JS:1} ;;
        '}') _JS=${_JS:1}; break ;;
        *) _json_fail "expected , or } in the object"; return 1 ;;
      esac
    done
  fi
  _json_ws
  if [[ -n $_JS ]]; then _json_fail "trailing data after the object"; return 1; fi
}

# $1: base64 -> the decoded bytes in _JTEXT. Refuses bad base64 and NUL bytes (which bash
# would silently drop).
b64_text() {
  local n
  if ! _JTEXT=$(printf '%s' "$1" | base64 -d 2>/dev/null && printf x); then
    _json_fail "not valid base64"; return 1
  fi
  _JTEXT=${_JTEXT%x}
  n=$(printf '%s' "$1" | base64 -d | wc -c)
  if ((n != ${#_JTEXT})); then _json_fail "decoded text contains NUL bytes"; return 1; fi
}

decode_command_b64() { b64_text "$1" && json_string_array "$_JTEXT"; }   # -> JSON_ARRAY
decode_env_b64() { b64_text "$1" && json_string_object "$_JTEXT"; }      # -> JSON_KEYS/VALUES

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

# printf -v "$1" with $2 as a JSON string literal (quotes included).
json_quote() {
  local s=$2 i c hx
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  for ((i = 1; i < 32; i++)); do
    printf -v hx '%02x' "$i"
    printf -v c %b "\\x$hx"
    if [[ $s == *"$c"* ]]; then
      printf -v hx '\\u%04x' "$i"
      s=${s//"$c"/$hx}
    fi
  done
  printf -v "$1" '"%s"' "$s"
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

last_line() {  # the last non-blank line of file $1
  local line="" l
  while IFS= read -r l || [[ -n $l ]]; do
    if [[ $l == *[![:space:]]* ]]; then line=$l; fi
  done <"$1"
  printf '%s' "$line"
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# Seconds as an integer (metadata may say "25.0"): the integer part, at least $2.
to_int() {
  local v=${1%%.*}
  is_uint "$v" || v=$2
  ((v >= $2)) || v=$2
  printf '%s' "$v"
}

# ---------------------------------------------------------------------------------------------
# Metadata server
# ---------------------------------------------------------------------------------------------

# GET $METADATA_URL/$1 into file $2. Returns 0 (found), 4 (404) or 1 (anything else).
md_fetch() {
  local code
  # --retry covers the metadata server being briefly unreachable early in boot.
  code=$(curl -sS -o "$2" -w '%{http_code}' -H 'Metadata-Flavor: Google' --max-time 10 \
    --retry 5 --retry-connrefused --retry-delay 1 "$METADATA_URL/$1") || code=000
  case $code in
    200) return 0 ;;
    404) return 4 ;;
    *) log "metadata $1: HTTP $code $(last_line "$2" 2>/dev/null || true)"; return 1 ;;
  esac
}

# md_attr VAR KEY [DEFAULT]: an instance attribute; required unless a default is given.
md_attr() {
  local rc=0 _mdv
  md_fetch "instance/attributes/$2" "$WORK/md" || rc=$?
  if ((rc == 0)); then
    _mdv=$(cat "$WORK/md" && printf x)   # the value exactly, trailing newlines included
    printf -v "$1" '%s' "${_mdv%x}"
  elif ((rc == 4 && $# >= 3)); then
    printf -v "$1" '%s' "$3"
  elif ((rc == 4)); then
    fail bad_metadata "instance attribute $2 is missing"
  else
    fail bad_metadata "could not read instance attribute $2 from the metadata server"
  fi
}

md_value() {  # md_value VAR PATH: a required non-attribute value (name, zone, project)
  if ! md_fetch "$2" "$WORK/md"; then fail bad_metadata "could not read $2 from the metadata server"; fi
  printf -v "$1" '%s' "$(<"$WORK/md")"
}

# The VM service account's access token into TOKEN. Never printed.
get_token() {
  [[ -n $TOKEN ]] && return 0
  local body re='"access_token"[[:space:]]*:[[:space:]]*"([^"]+)"'
  md_fetch instance/service-accounts/default/token "$WORK/token" || return 1
  body=$(<"$WORK/token")
  rm -f "$WORK/token"
  [[ $body =~ $re ]] || { log "token response has no access_token"; return 1; }
  TOKEN=${BASH_REMATCH[1]}
}

# curl with the bearer token as a header read from a pipe: the token never appears in argv
# (visible in /proc) or in the output.
curl_auth() {
  curl -H @<(printf 'Authorization: Bearer %s\n' "$TOKEN") "$@"
}

# ---------------------------------------------------------------------------------------------
# Reporting and self-deletion
# ---------------------------------------------------------------------------------------------

# write_startup_record STATUS REASON DETAIL: create/overwrite runs/ID/attempts/N/startup.json.
write_startup_record() {
  local status=$1 reason=$2 detail=${3:0:2000} now name code q_phase q_reason q_detail q_inst q_zone
  if [[ -z $BUCKET || -z $RUN_ID ]] || ! is_uint "$ATTEMPT"; then
    log "cannot write startup.json: run id, attempt or store unknown"
    return 1
  fi
  get_token || { log "cannot write startup.json: no access token"; return 1; }
  printf -v now '%(%s)T' -1
  json_quote q_phase "$PHASE"
  if [[ -n $reason ]]; then json_quote q_reason "$reason"; else q_reason=null; fi
  json_quote q_detail "$detail"
  json_quote q_inst "$INSTANCE"
  json_quote q_zone "$ZONE"
  printf '{"schema_version":1,"attempt":%d,"phase":%s,"status":"%s","reason":%s,"detail":%s,"instance":%s,"zone":%s,"time":%d}\n' \
    "$((10#$ATTEMPT))" "$q_phase" "$status" "$q_reason" "$q_detail" "$q_inst" "$q_zone" "$now" >"$WORK/startup.json"
  name="${OBJ_PREFIX}runs/$RUN_ID/attempts/$((10#$ATTEMPT))/startup.json"
  code=$(curl_auth -sS -o "$WORK/upload.out" -w '%{http_code}' --max-time 30 \
    --retry 3 --retry-connrefused --retry-delay 1 -X POST -H 'Content-Type: application/json' \
    --data-binary @"$WORK/startup.json" \
    "$GCS_API/upload/storage/v1/b/$BUCKET/o?uploadType=media&name=$(urlencode "$name")") || code=000
  if [[ $code != 200 ]]; then
    log "startup.json upload to gs://$BUCKET/$name failed: HTTP $code $(last_line "$WORK/upload.out" 2>/dev/null || true)"
    return 1
  fi
  log "wrote gs://$BUCKET/$name ($status)"
}

self_delete() {
  local code url
  if [[ -n $PROJECT && -n $ZONE && -n $INSTANCE ]] && get_token; then
    url="$COMPUTE_API/compute/v1/projects/$PROJECT/zones/$ZONE/instances/$INSTANCE"
    code=$(curl_auth -sS -o "$WORK/delete.out" -w '%{http_code}' --max-time 30 \
      --retry 3 --retry-connrefused --retry-delay 2 -X DELETE "$url") || code=000
    if [[ $code == 200 ]]; then
      log "requested deletion of this VM ($INSTANCE in $ZONE)"
      return 0
    fi
    log "deleting this VM failed: HTTP $code $(last_line "$WORK/delete.out" 2>/dev/null || true)"
  fi
  # A stopped spot VM bills for its disks only, not for CPUs and GPUs.
  log "powering off instead of deleting"
  poweroff || log "poweroff failed; this VM may keep billing until the supervisor deletes it"
}

# fail REASON DETAIL: marker, failure record, self-delete, exit. Never returns.
fail() {
  trap - ERR
  set +e
  if [[ -n $FAILED ]]; then exit 1; fi
  FAILED=$1
  printf 'runner-phase: failed:%s\n' "$1"
  log "boot failed in phase $PHASE: $1: $2"
  # Identity for the record and the delete, if the failure came before we read it.
  [[ -n $INSTANCE ]] || { md_fetch instance/name "$WORK/md" && INSTANCE=$(<"$WORK/md"); }
  [[ -n $ZONE ]] || { md_fetch instance/zone "$WORK/md" && ZONE=$(<"$WORK/md") && ZONE=${ZONE##*/}; }
  [[ -n $PROJECT ]] || { md_fetch project/project-id "$WORK/md" && PROJECT=$(<"$WORK/md"); }
  write_startup_record failed "$1" "$2" || log "WARNING: the failure is not recorded in the store"
  self_delete
  exit 1
}

# An unexpected error anywhere still ends in a record and a deleted VM, never a silent idle VM.
on_error() {
  local rc=$1
  if [[ $BASHPID != "$$" ]]; then exit "$rc"; fi   # in a subshell: let the parent handle it
  fail startup_error "unexpected failure (exit $rc) at line $2: $3"
}

# ---------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------

read_metadata() {
  phase metadata
  local cmd_b64 env_b64 zone_path store_rest
  md_attr RUN_ID runner-run-id
  md_attr ATTEMPT runner-attempt
  md_attr STORE runner-store
  md_value INSTANCE instance/name
  md_value zone_path instance/zone
  ZONE=${zone_path##*/}                     # projects/NUM/zones/ZONE
  md_value PROJECT project/project-id
  if [[ $STORE =~ ^gs://([^/]+)(/(.*))?$ ]]; then
    BUCKET=${BASH_REMATCH[1]}
    store_rest=${BASH_REMATCH[3]}
    store_rest=${store_rest#/}
    store_rest=${store_rest%/}
    OBJ_PREFIX=${store_rest:+$store_rest/}  # same rule as entrypoint.store_gcs.parse_gs_url
  else
    fail bad_metadata "runner-store must be gs://BUCKET[/PREFIX], not $STORE"
  fi
  is_uint "$ATTEMPT" || fail bad_metadata "runner-attempt must be a number, not $ATTEMPT"
  md_attr IMAGE runner-image
  md_attr cmd_b64 runner-command-b64
  md_attr env_b64 runner-env-b64 e30=          # base64("{}")
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

  decode_command_b64 "$cmd_b64" || fail bad_metadata "runner-command-b64: $_JERR"
  ((${#JSON_ARRAY[@]} > 0)) || fail bad_metadata "runner-command-b64 is an empty command"
  COMMAND=("${JSON_ARRAY[@]}")
  decode_env_b64 "$env_b64" || fail bad_metadata "runner-env-b64: $_JERR"
  ENV_KEYS=("${JSON_KEYS[@]}")
  ENV_VALUES=("${JSON_VALUES[@]}")
  local k
  for k in "${ENV_KEYS[@]}"; do
    [[ -n $k && $k != *=* ]] || fail bad_metadata "runner-env-b64: invalid variable name '$k'"
  done
  is_uint "$GPU_COUNT" || fail bad_metadata "runner-gpu-count must be a number, not $GPU_COUNT"
  GPU_COUNT=$((10#$GPU_COUNT))
  GPU_TIMEOUT=$(to_int "$GPU_TIMEOUT" 1)
  GRACE=$(to_int "$GRACE_PERIOD" 1)
  # What docker's --shm-size parser accepts (2g, 512m, 1.5GB, 2GiB); checked here to fail early.
  [[ $SHM_SIZE =~ ^[0-9]+(\.[0-9]+)?[kKmMgGtTpP]?[iI]?[bB]?$ ]] ||
    fail bad_metadata "runner-shm-size must look like 2g, not $SHM_SIZE"
  if [[ -n $DATA_DISK ]]; then
    # /mnt is read-only on COS (DESIGN §4); a mount anywhere but /var/lib fails or is lost.
    [[ $DATA_DISK =~ ^[A-Za-z0-9_-]+$ ]] || fail data_disk_failed "invalid data disk device name '$DATA_DISK'"
    if ! [[ $DATA_MOUNT =~ ^/var/lib/[A-Za-z0-9._/-]+$ ]] || [[ /$DATA_MOUNT/ == */../* || /$DATA_MOUNT/ == */./* ]]; then
      fail data_disk_failed "runner-data-mount must be a path under /var/lib (COS: / and /mnt are read-only), not $DATA_MOUNT"
    fi
  fi
  [[ $IMAGE == *@sha256:* ]] || log "warning: image $IMAGE is not pinned by digest; a restart may run other code"
  log "run $RUN_ID attempt $ATTEMPT on $INSTANCE ($ZONE, project $PROJECT): image $IMAGE, ${GPU_COUNT} GPU(s)"
}

# The devices a GPU run needs exist and nvidia-smi works. Sets GPU_DEVICES, or GPU_WHY on failure.
gpu_ready() {
  local d
  GPU_WHY=""
  GPU_DEVICES=()
  if ! timeout 30 "$NVIDIA_ROOT/bin/nvidia-smi" >"$WORK/nvidia-smi.out" 2>&1; then
    GPU_WHY="nvidia-smi failed: $(last_line "$WORK/nvidia-smi.out")"
    return 1
  fi
  for d in "$DEV_ROOT"/nvidia[0-9]*; do
    if [[ ${d##*/} =~ ^nvidia[0-9]+$ && -c $d ]]; then GPU_DEVICES+=("$d"); fi
  done
  if ((${#GPU_DEVICES[@]} < GPU_COUNT)); then
    GPU_WHY="${#GPU_DEVICES[@]} of $GPU_COUNT GPU device nodes in $DEV_ROOT"
    return 1
  fi
  for d in nvidiactl nvidia-uvm; do
    if [[ ! -c $DEV_ROOT/$d ]]; then GPU_WHY="$DEV_ROOT/$d is missing"; return 1; fi
  done
}

# The driver tree is on /var, which COS mounts noexec: bind it onto itself and make that one
# mount executable. "remount,bind" changes only this mount's flags, not the filesystem's.
nvidia_exec_mount() {
  [[ -d $NVIDIA_ROOT ]] || return 0
  if ! mountpoint -q "$NVIDIA_ROOT"; then
    mount --bind "$NVIDIA_ROOT" "$NVIDIA_ROOT" || fail gpu_driver_failed "mount --bind $NVIDIA_ROOT failed"
  fi
  if ! mount -o remount,bind,exec "$NVIDIA_ROOT"; then
    mount -o remount,exec "$NVIDIA_ROOT" || fail gpu_driver_failed "could not remount $NVIDIA_ROOT exec"
  fi
  log "$NVIDIA_ROOT is bind-mounted with exec"
}

gpu_diagnostics() {
  # Best effort by design: a diagnostic that fails must not end the wait.
  log "gpu-wait diagnostics after $((SECONDS - GPU_START))s: ${GPU_WHY}"
  { dmesg 2>&1 | grep -iE 'nvidia|nvrm|xid' | tail -n 20 | sed 's/^/runner:   dmesg: /'; } || true
  grep -i nvidia /proc/modules | sed 's/^/runner:   module: /' || log "  no nvidia kernel module loaded"
  # shellcheck disable=SC2012  # ls -l shows what matters here: char device, major, minor
  { ls -l "$DEV_ROOT"/nvidia* 2>&1 | sed 's/^/runner:   /'; } || true
}

# The whole GPU phase (install and wait) fits in runner-gpu-timeout, so the supervisor's stall
# window, which config validation keeps >= gpu_timeout, never fires first.
setup_gpu() {
  phase gpu-driver
  GPU_START=$SECONDS
  # +1: SECONDS ticks in whole seconds, and the wait must never give up before GPU_TIMEOUT.
  local deadline=$((SECONDS + GPU_TIMEOUT + 1)) try remaining rc args=(install gpu)
  [[ -z $GPU_DRIVER_VERSION ]] || args+=(-- "-version=$GPU_DRIVER_VERSION")
  nvidia_exec_mount
  if gpu_ready; then
    log "GPU driver already loaded (a reboot of this VM); not reinstalling"
  else
    for ((try = 1; ; try++)); do
      remaining=$((deadline - SECONDS))
      ((remaining > 0)) || fail gpu_timeout "no GPU within ${GPU_TIMEOUT}s: cos-extensions install gpu did not finish"
      log "cos-extensions ${args[*]} (try $try of $GPU_INSTALL_TRIES)"
      if timeout -k 10 "$remaining" cos-extensions "${args[@]}" 2>&1 | tee "$WORK/install.log"; then
        break
      else
        rc=$?
      fi
      if ((try >= GPU_INSTALL_TRIES)); then
        fail gpu_driver_failed "cos-extensions ${args[*]} failed $try times (exit $rc): $(last_line "$WORK/install.log")"
      fi
      sleep 10
    done
    nvidia_exec_mount
  fi

  phase gpu-wait
  local next_diag=$((SECONDS + GPU_DIAG_INTERVAL))
  until gpu_ready; do
    if ((SECONDS >= deadline)); then
      gpu_diagnostics
      fail gpu_timeout "no usable GPU within ${GPU_TIMEOUT}s (driver install and wait): $GPU_WHY"
    fi
    if ((SECONDS >= next_diag)); then
      gpu_diagnostics
      next_diag=$((SECONDS + GPU_DIAG_INTERVAL))
    fi
    sleep "$GPU_POLL"
  done
  log "GPU ready: ${GPU_DEVICES[*]}"
}

registry_auth() {
  phase registry-auth
  local host=${IMAGE%%/*}
  # A first component without "." or ":" (and not localhost) is a Docker Hub namespace.
  if [[ $IMAGE != */* || ($host != *.* && $host != *:* && $host != localhost) ]]; then
    log "image $IMAGE is on Docker Hub; no Google credentials needed"
    return 0
  fi
  case $host in
    gcr.io | *.gcr.io | *-docker.pkg.dev | docker.pkg.dev)
      # /root is read-only on COS: the docker config lives under /var/lib.
      docker-credential-gcr configure-docker --registries="$host" >"$WORK/cred.log" 2>&1 ||
        fail registry_auth_failed "docker-credential-gcr configure-docker --registries=$host: $(last_line "$WORK/cred.log")"
      log "docker authenticates to $host with the VM's service account"
      ;;
    *) log "registry $host is not Google's; pulling without credentials" ;;
  esac
}

pull_image() {
  phase image-pull
  local try delay=$PULL_BACKOFF waited=0 err=""
  until docker info >/dev/null 2>&1; do
    ((waited < DOCKER_WAIT)) || fail image_pull_failed "docker daemon not ready after ${DOCKER_WAIT}s"
    sleep 1
    waited=$((waited + 1))
  done
  for ((try = 1; try <= PULL_RETRIES; try++)); do
    if docker pull "$IMAGE" >"$WORK/pull.log" 2>&1; then
      log "pulled $IMAGE"
      return 0
    fi
    err=$(last_line "$WORK/pull.log")
    log "docker pull $IMAGE failed (try $try of $PULL_RETRIES): $err"
    if ((try < PULL_RETRIES)); then
      log "retrying in ${delay}s"
      sleep "$delay"
      delay=$((delay * 2 > 60 ? 60 : delay * 2))
    fi
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
  if mountpoint -q "$DATA_MOUNT"; then
    log "$DATA_MOUNT is already mounted"
    return 0
  fi
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

is_reserved() {
  local r
  for r in "${RESERVED_ENV[@]}"; do [[ $r != "$1" ]] || return 0; done
  return 1
}

start_container() {
  phase container-start
  local i k d status args
  # A reboot (terminationAction=STOP) finds the previous attempt's container: stop it with its
  # grace period (a final sync if it still runs), remove it, start fresh from the checkpoints.
  if docker container inspect "$CONTAINER" >/dev/null 2>&1; then
    log "removing the existing $CONTAINER container"
    docker stop --time "$GRACE" "$CONTAINER" >/dev/null 2>&1 || true   # rm -f below is what counts
    docker rm -f "$CONTAINER" >"$WORK/rm.log" 2>&1 ||
      fail container_start_failed "cannot remove the old $CONTAINER: $(last_line "$WORK/rm.log")"
  fi

  args=(run -d --name "$CONTAINER" --restart no
    # Host network is the COS norm: no docker0 NAT in the path of checkpoint uploads and no
    # MTU mismatch with the VPC (1460), and the metadata server answers the agent's credentials.
    --network host
    --pull never                # exactly the image pulled above, never an implicit re-pull
    --shm-size "$SHM_SIZE"      # docker's 64 MB /dev/shm crashes data loaders with "Bus error"
    --stop-timeout "$GRACE"
    --log-driver json-file --log-opt max-size=100m --log-opt max-file=3
    --label "cos-spot-runner.run-id=$RUN_ID" --label "cos-spot-runner.attempt=$ATTEMPT")

  RESERVED_ENV=(RUNNER_RUN_ID RUNNER_STORE RUNNER_ATTEMPT RUNNER_CHECKPOINT_DIR RUNNER_RESULTS_DIR
    RUNNER_HEARTBEAT_INTERVAL RUNNER_SYNC_INTERVAL RUNNER_GRACE_PERIOD RUNNER_INSTANCE RUNNER_ZONE
    RUNNER_IMAGE)
  if ((GPU_COUNT > 0)); then
    RESERVED_ENV+=(LD_LIBRARY_PATH)
    # COS GPU wiring (DESIGN §4): never --gpus (its CDI hook fails) nor --runtime=nvidia (unknown).
    args+=(-v "$NVIDIA_ROOT/lib64:/usr/local/nvidia/lib64" -v "$NVIDIA_ROOT/bin:/usr/local/nvidia/bin")
    for d in "${GPU_DEVICES[@]}" "$DEV_ROOT/nvidiactl" "$DEV_ROOT/nvidia-uvm"; do
      if [[ $DEV_ROOT == /dev ]]; then args+=(--device "$d"); else args+=(--device "$d:/dev/${d##*/}"); fi
    done
    args+=(-e LD_LIBRARY_PATH=/usr/local/nvidia/lib64)
  fi
  if [[ -n $DATA_DISK ]]; then args+=(-v "$DATA_MOUNT:$DATA_MOUNT"); fi

  for i in "${!ENV_KEYS[@]}"; do
    k=${ENV_KEYS[i]}
    if is_reserved "$k"; then
      log "ignoring $k from the job's env: the runner sets it"
    else
      args+=(-e "$k=${ENV_VALUES[i]}")
    fi
  done
  args+=(-e "RUNNER_RUN_ID=$RUN_ID" -e "RUNNER_STORE=$STORE" -e "RUNNER_ATTEMPT=$ATTEMPT"
    -e "RUNNER_CHECKPOINT_DIR=$CHECKPOINT_DIR" -e "RUNNER_RESULTS_DIR=$RESULTS_DIR"
    -e "RUNNER_HEARTBEAT_INTERVAL=$HEARTBEAT_INTERVAL" -e "RUNNER_SYNC_INTERVAL=$SYNC_INTERVAL"
    -e "RUNNER_GRACE_PERIOD=$GRACE_PERIOD" -e "RUNNER_INSTANCE=$INSTANCE" -e "RUNNER_ZONE=$ZONE"
    -e "RUNNER_IMAGE=$IMAGE")
  # The image's ENTRYPOINT is `python3 -m entrypoint --`: what follows the image is the job argv,
  # passed as separate words, so no shell ever re-parses it.
  args+=("$IMAGE" "${COMMAND[@]}")

  docker "${args[@]}" >"$WORK/run.log" 2>&1 ||
    fail container_start_failed "docker run: $(last_line "$WORK/run.log")"
  status=$(docker container inspect -f '{{.State.Status}}' "$CONTAINER" 2>"$WORK/inspect.log") ||
    fail container_start_failed "docker inspect $CONTAINER: $(last_line "$WORK/inspect.log")"
  case $status in
    running | exited) ;;   # a quick job may already be done: the agent recorded it
    *) fail container_start_failed "container $CONTAINER is $status after docker run" ;;
  esac

  # The job's output on the serial console too (the bucket log is the durable copy). setsid so
  # it outlives this script; the serial port is slow, but it only delays this follower, never
  # the job (the json-file driver buffers).
  setsid docker logs -f "$CONTAINER" >"$SERIAL" 2>&1 </dev/null &

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
  if [[ -e $STATE_DIR/shutting-down ]]; then
    log "container exited ($code) during a shutdown; leaving the VM to it"
    return 0
  fi
  printf 'runner-phase: finished\n'
  log "container exited ($code); this attempt is over, releasing the VM"
  self_delete
}

main() {
  set -E
  trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR
  WORK=$(mktemp -d /tmp/runner-startup.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
  local knob
  for knob in PULL_RETRIES PULL_BACKOFF GPU_DIAG_INTERVAL GPU_INSTALL_TRIES DOCKER_WAIT; do
    is_uint "${!knob}" || fail startup_error "$knob must be a whole number of seconds/tries, not ${!knob}"
  done

  read_metadata
  if ((GPU_COUNT > 0)); then setup_gpu; fi
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
    (trap - EXIT; WORK=$(mktemp -d /tmp/runner-release.XXXXXX); release_when_done) \
      </dev/null >>"$SERIAL" 2>&1 &
    disown
  fi
}

# Sourced (by the tests, for the JSON decoder): define functions only.
if ! (return 0 2>/dev/null); then
  main "$@"
fi
