#!/usr/bin/env bash
# TPU pod lifecycle for sdce training: queued resource -> ACTIVE -> workers prepared ->
# `sdce train-job` on every worker (PJRT_DEVICE=TPU, --worker=all) -> monitor / resume / stop.
#
# Usage: infra/gcloud/tpu-pod.sh [--dry-run] [--config FILE] COMMAND [ARG]
#
# Commands
#   setup       bucket (made if missing), code upload, queued resource create, wait for
#               ACTIVE, prepare all workers (free /dev/accel*, pull the tpu image or
#               install the package), launch training on all workers
#   create      only the queued resource: create (unless it exists) and wait for ACTIVE
#   resume      after a preemption or a stop: re-create the queued resource if it is
#               SUSPENDED or FAILED (or gone), prepare the workers again and relaunch;
#               `sdce train-job` resumes from its last checkpoint
#   status      states of the queued resource and of the TPU node
#   monitor     poll status and the tail of worker 0's log until the run ends or the queued
#               resource fails (bounded by SDCE_MONITOR_MINUTES); SDCE_AUTO_RESUME=1
#               resumes a preempted run
#   logs [N]    last SDCE_LOG_LINES lines of worker N's log (default 0; "all": every worker)
#   ssh [N]     interactive shell on worker N (default 0)
#   stop        stop training on all workers (the TPU stays allocated)
#   cleanup     delete the queued resource and its TPU node
#
# Options
#   --dry-run       print every command (shell-quoted, prefixed "+ ") instead of running it
#   --config FILE   KEY=VALUE lines for the variables below (the environment wins)
#
# Configuration (environment or --config file)
#   SDCE_PROJECT          Google Cloud project ID                                  (required)
#   SDCE_ZONE             zone of the TPU, e.g. us-central2-b for v4                (required)
#   SDCE_ACCELERATOR      accelerator type: v4-8 ... v4-4096, v5p-*, v5litepod-*, v6e-*,
#                         v2-*, v3-*                                               [v4-32]
#   SDCE_RUNTIME_VERSION  TPU VM software version                    [tpu-ubuntu2204-base]
#   SDCE_BUCKET           artifacts bucket (name or gs://name)            (setup, resume)
#   SDCE_TPU_NAME         name of the queued resource and of its TPU node       [sdce-tpu]
#   SDCE_SPOT             1: Spot capacity (preemptible, cheaper); 0: on-demand        [1]
#   SDCE_TRAIN_ARGS       arguments of `sdce train-job` on the workers, e.g.
#                         "--config config/config.yaml --name r1 --seed 1 ..."  (setup, resume)
#   SDCE_TPU_IMAGE        tpu image (registry path@sha256:digest); unset: pip-install the
#                         package from the uploaded code with containers/constraints-tpu.txt
#   SDCE_NETWORK, SDCE_SUBNETWORK, SDCE_TPU_TAGS, SDCE_SERVICE_ACCOUNT
#                         from `terraform output` (network, tpu_subnetwork, tpu_network_tag,
#                         workload_service_account); unset: gcloud's defaults
#   SDCE_INTERNAL_IPS     1: workers get no external IP; SSH goes through IAP
#                         (gcloud alpha ... tpu-vm ssh --tunnel-through-iap)            [0]
#   SDCE_RUN_ID           folder of this run's code under gs://BUCKET/tpu-runs/ [TPU name]
#   SDCE_WAIT_MINUTES     give up waiting for ACTIVE after this long                  [120]
#   SDCE_POLL_SECONDS     polling interval                                            [30]
#   SDCE_RETRIES          attempts of eventually consistent calls                      [5]
#   SDCE_MONITOR_MINUTES  monitor's time limit                                      [1440]
#   SDCE_LOG_LINES        lines shown by logs                                        [200]
set -euo pipefail

readonly SCRIPT_NAME="tpu-pod.sh"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly REPO_ROOT
# Files and folders on each worker; $HOME is expanded there, not here.
# shellcheck disable=SC2016
readonly REMOTE_DIR='$HOME/sdce'
# shellcheck disable=SC2016
readonly REMOTE_LOGS='$HOME/sdce-logs'
# shellcheck disable=SC2016
readonly REMOTE_VENV='$HOME/sdce-venv'
readonly CONTAINER_NAME="sdce-train"

DRY_RUN=0
CONFIG_FILE=""

die() {
  echo "${SCRIPT_NAME}: $*" >&2
  exit 2
}

log() {
  echo "[${SCRIPT_NAME}] $*" >&2
}

usage() {
  sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------
readonly CONFIG_KEYS=(SDCE_PROJECT SDCE_ZONE SDCE_ACCELERATOR SDCE_RUNTIME_VERSION
  SDCE_BUCKET SDCE_TPU_NAME SDCE_SPOT SDCE_TRAIN_ARGS SDCE_TPU_IMAGE SDCE_NETWORK
  SDCE_SUBNETWORK SDCE_TPU_TAGS SDCE_SERVICE_ACCOUNT SDCE_INTERNAL_IPS SDCE_RUN_ID
  SDCE_WAIT_MINUTES SDCE_POLL_SECONDS SDCE_RETRIES SDCE_MONITOR_MINUTES SDCE_LOG_LINES
  SDCE_AUTO_RESUME)

# KEY=VALUE lines (optional quotes, # comments). Values are taken literally, never run.
load_config_file() {
  local file="$1" line key value known
  [[ -r "${file}" ]] || die "config file '${file}' is not readable"
  while IFS= read -r line || [[ -n "${line}" ]]; do
    line="${line#"${line%%[![:space:]]*}"}"
    [[ -z "${line}" || "${line}" == \#* ]] && continue
    [[ "${line}" == export\ * ]] && line="${line#export }"
    [[ "${line}" == *=* ]] || die "${file}: not a KEY=VALUE line: ${line}"
    key="${line%%=*}"
    value="${line#*=}"
    if [[ "${value}" =~ ^\"(.*)\"$ || "${value}" =~ ^\'(.*)\'$ ]]; then
      value="${BASH_REMATCH[1]}"
    fi
    known=0
    for k in "${CONFIG_KEYS[@]}"; do [[ "${k}" == "${key}" ]] && known=1; done
    [[ "${known}" == 1 ]] || die "${file}: unknown setting '${key}'"
    # The environment wins over the file.
    if [[ -z "${!key+set}" ]]; then
      printf -v "${key}" '%s' "${value}"
      export "${key?}"
    fi
  done < "${file}"
}

apply_defaults() {
  SDCE_PROJECT="${SDCE_PROJECT:-}"
  SDCE_ZONE="${SDCE_ZONE:-}"
  SDCE_ACCELERATOR="${SDCE_ACCELERATOR:-v4-32}"
  SDCE_RUNTIME_VERSION="${SDCE_RUNTIME_VERSION:-tpu-ubuntu2204-base}"
  SDCE_BUCKET="${SDCE_BUCKET:-}"
  SDCE_BUCKET="${SDCE_BUCKET#gs://}"
  SDCE_BUCKET="${SDCE_BUCKET%/}"
  SDCE_TPU_NAME="${SDCE_TPU_NAME:-sdce-tpu}"
  SDCE_SPOT="${SDCE_SPOT:-1}"
  SDCE_TRAIN_ARGS="${SDCE_TRAIN_ARGS:-}"
  SDCE_TPU_IMAGE="${SDCE_TPU_IMAGE:-}"
  SDCE_NETWORK="${SDCE_NETWORK:-}"
  SDCE_SUBNETWORK="${SDCE_SUBNETWORK:-}"
  SDCE_TPU_TAGS="${SDCE_TPU_TAGS:-}"
  SDCE_SERVICE_ACCOUNT="${SDCE_SERVICE_ACCOUNT:-}"
  SDCE_INTERNAL_IPS="${SDCE_INTERNAL_IPS:-0}"
  SDCE_RUN_ID="${SDCE_RUN_ID:-${SDCE_TPU_NAME}}"
  SDCE_WAIT_MINUTES="${SDCE_WAIT_MINUTES:-120}"
  SDCE_POLL_SECONDS="${SDCE_POLL_SECONDS:-30}"
  SDCE_RETRIES="${SDCE_RETRIES:-5}"
  SDCE_MONITOR_MINUTES="${SDCE_MONITOR_MINUTES:-1440}"
  SDCE_LOG_LINES="${SDCE_LOG_LINES:-200}"
  SDCE_AUTO_RESUME="${SDCE_AUTO_RESUME:-0}"
}

# ---------------------------------------------------------------------------------------
# Validation: every check runs before the first cloud call.
# ---------------------------------------------------------------------------------------
is_power_of_two() {
  local n="$1"
  [[ "${n}" =~ ^[0-9]+$ ]] && ((n > 0 && (n & (n - 1)) == 0))
}

# Accelerator types Cloud TPU offers (the core- or chip-count suffix of each generation).
valid_accelerator() {
  local acc="$1" gen count
  [[ "${acc}" =~ ^(v2|v3|v4|v5p|v5litepod|v6e)-([0-9]+)$ ]] || return 1
  gen="${BASH_REMATCH[1]}"
  count="${BASH_REMATCH[2]}"
  [[ "${count}" =~ ^0 ]] && return 1
  case "${gen}" in
    v2) [[ " 8 32 128 256 512 " == *" ${count} "* ]] ;;
    v3) [[ " 8 32 64 128 256 512 1024 2048 " == *" ${count} "* ]] ;;
    v4) is_power_of_two "${count}" && ((count >= 8 && count <= 4096)) ;;
    # v5p: TensorCores = 2 x chips, chips in multiples of 4 (3D topologies), up to 6144 chips.
    v5p) ((count >= 8 && count <= 12288 && count % 8 == 0)) ;;
    v5litepod | v6e) [[ " 1 4 8 16 32 64 128 256 " == *" ${count} "* ]] ;;
    *) return 1 ;;
  esac
}

# Cloud Storage bucket naming rules.
valid_bucket() {
  local b="$1" part
  [[ "${b}" =~ ^[a-z0-9][a-z0-9._-]*[a-z0-9]$ ]] || return 1
  if [[ "${b}" == *.* ]]; then
    ((${#b} <= 222)) || return 1
    IFS=. read -r -a parts <<< "${b}"
    for part in "${parts[@]}"; do
      ((${#part} >= 1 && ${#part} <= 63)) || return 1
    done
    # Not an IP address in dotted-decimal notation.
    [[ "${b}" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] && return 1
    [[ "${b}" == *..* || "${b}" == *.-* || "${b}" == *-.* ]] && return 1
  else
    ((${#b} >= 3 && ${#b} <= 63)) || return 1
  fi
  [[ "${b}" == goog* ]] && return 1
  [[ "${b}" == *google* || "${b}" == *g00gle* ]] && return 1
  return 0
}

validate() {
  local cmd="$1" errors=()
  if [[ -z "${SDCE_PROJECT}" ]]; then
    errors+=("SDCE_PROJECT is not set: set it to the Google Cloud project ID (e.g. export SDCE_PROJECT=my-project)")
  elif [[ ! "${SDCE_PROJECT}" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]]; then
    errors+=("SDCE_PROJECT='${SDCE_PROJECT}' is not a project ID (6-30 lowercase letters, digits, hyphens)")
  fi
  if [[ -z "${SDCE_ZONE}" ]]; then
    errors+=("SDCE_ZONE is not set: set it to the TPU zone (e.g. export SDCE_ZONE=us-central2-b for TPU v4)")
  elif [[ ! "${SDCE_ZONE}" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]]; then
    errors+=("SDCE_ZONE='${SDCE_ZONE}' is not a zone name (e.g. us-central2-b)")
  fi
  if ! valid_accelerator "${SDCE_ACCELERATOR}"; then
    errors+=("SDCE_ACCELERATOR='${SDCE_ACCELERATOR}' is not a TPU accelerator type: set it to one of v4-8, v4-16, ..., v4-4096 (powers of two), v5p-N (N a multiple of 8), v5litepod-N or v6e-N (N in 1 4 8 16 32 64 128 256), v3-8/32/64/.../2048, v2-8/32/128/256/512")
  fi
  if [[ ! "${SDCE_RUNTIME_VERSION}" =~ ^[a-z0-9][a-z0-9._-]*$ ]]; then
    errors+=("SDCE_RUNTIME_VERSION='${SDCE_RUNTIME_VERSION}' is not a TPU software version (e.g. tpu-ubuntu2204-base)")
  fi
  if [[ ! "${SDCE_TPU_NAME}" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
    errors+=("SDCE_TPU_NAME='${SDCE_TPU_NAME}' must be lowercase letters, digits and hyphens, starting with a letter (at most 63)")
  fi
  if [[ ! "${SDCE_SPOT}" =~ ^(0|1|true|false)$ ]]; then
    errors+=("SDCE_SPOT='${SDCE_SPOT}' must be 1 or 0")
  fi
  if [[ ! "${SDCE_INTERNAL_IPS}" =~ ^(0|1|true|false)$ ]]; then
    errors+=("SDCE_INTERNAL_IPS='${SDCE_INTERNAL_IPS}' must be 1 or 0")
  fi
  local n
  for n in SDCE_WAIT_MINUTES SDCE_POLL_SECONDS SDCE_RETRIES SDCE_MONITOR_MINUTES SDCE_LOG_LINES; do
    [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || errors+=("${n}='${!n}' must be a positive whole number")
  done
  case "${cmd}" in
    setup | resume)
      if [[ -z "${SDCE_BUCKET}" ]]; then
        errors+=("SDCE_BUCKET is not set: set it to the artifacts bucket (terraform output artifact_bucket)")
      elif ! valid_bucket "${SDCE_BUCKET}"; then
        errors+=("SDCE_BUCKET='${SDCE_BUCKET}' breaks Cloud Storage bucket naming rules (3-63 characters of lowercase letters, digits, '-', '_', '.', starting and ending with a letter or digit, no 'goog' prefix, no 'google', not an IP address)")
      fi
      [[ -n "${SDCE_TRAIN_ARGS}" ]] || errors+=("SDCE_TRAIN_ARGS is not set: set it to the arguments of 'sdce train-job' (e.g. \"--config config/config.yaml --name run1 --seed 1 ...\")")
      [[ ! "${SDCE_RUN_ID}" =~ ^[A-Za-z0-9._-]+$ ]] && errors+=("SDCE_RUN_ID='${SDCE_RUN_ID}' must be letters, digits, '.', '_' or '-'")
      ;;
  esac
  if ((${#errors[@]})); then
    printf '%s: %s\n' "${SCRIPT_NAME}" "${errors[@]}" >&2
    exit 2
  fi
}

truthy() { [[ "$1" == 1 || "$1" == true ]]; }

# ---------------------------------------------------------------------------------------
# Running commands
# ---------------------------------------------------------------------------------------
# run CMD...: run it, or print it under --dry-run.
run() {
  if ((DRY_RUN)); then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    return 0
  fi
  "$@"
}

# retry CMD...: for eventually consistent calls (describe right after create, SSH right
# after ACTIVE): SDCE_RETRIES attempts, exponential backoff from 5 s, capped at 120 s.
retry() {
  local attempt=1 delay=5
  while true; do
    if run "$@"; then
      return 0
    fi
    if ((attempt >= SDCE_RETRIES)); then
      log "giving up after ${attempt} attempts: $*"
      return 1
    fi
    log "attempt ${attempt} failed; retrying in ${delay}s"
    sleep "${delay}"
    attempt=$((attempt + 1))
    delay=$((delay * 2 > 120 ? 120 : delay * 2))
  done
}

tpus() { run gcloud compute tpus "$@" --project="${SDCE_PROJECT}" --zone="${SDCE_ZONE}"; }

# SSH_CMD: the ssh command line up to the worker flag. Workers without external IPs are
# reached through IAP TCP forwarding, which only the alpha track's tpu-vm ssh offers (checked by the tests).
ssh_cmd() {
  if truthy "${SDCE_INTERNAL_IPS}"; then
    SSH_CMD=(gcloud alpha compute tpus tpu-vm ssh "${SDCE_TPU_NAME}" --tunnel-through-iap)
  else
    SSH_CMD=(gcloud compute tpus tpu-vm ssh "${SDCE_TPU_NAME}")
  fi
  SSH_CMD+=(--project="${SDCE_PROJECT}" --zone="${SDCE_ZONE}")
}

# on_workers WORKER COMMAND: run a shell command on worker N or "all", retried.
on_workers() {
  local worker="$1" command="$2"
  ssh_cmd
  retry "${SSH_CMD[@]}" --worker="${worker}" --command="${command}"
}

# ---------------------------------------------------------------------------------------
# Queued resource
# ---------------------------------------------------------------------------------------
# Prints the queued resource's state, NOT_FOUND, or fails (after retries) on other errors.
# Under --dry-run the describe is printed and the state is DRY_STATE: SDCE_DRY_RUN_STATE
# (default NOT_FOUND) before creation, ACTIVE while waiting.
DRY_STATE=""
qr_state() {
  if ((DRY_RUN)); then
    run gcloud compute tpus queued-resources describe "${SDCE_TPU_NAME}" \
      --project="${SDCE_PROJECT}" --zone="${SDCE_ZONE}" --format='value(state.state)' >&2
    echo "${DRY_STATE:-${SDCE_DRY_RUN_STATE:-NOT_FOUND}}"
    return 0
  fi
  local attempt=1 out err delay=5
  err="$(mktemp)"
  while true; do
    if out="$(gcloud compute tpus queued-resources describe "${SDCE_TPU_NAME}" \
      --project="${SDCE_PROJECT}" --zone="${SDCE_ZONE}" \
      --format='value(state.state)' 2> "${err}")"; then
      rm -f "${err}"
      echo "${out:-UNKNOWN}"
      return 0
    fi
    if grep -qE 'NOT_FOUND|not found|404' "${err}"; then
      rm -f "${err}"
      echo NOT_FOUND
      return 0
    fi
    if ((attempt >= SDCE_RETRIES)); then
      cat "${err}" >&2
      rm -f "${err}"
      return 1
    fi
    sleep "${delay}"
    attempt=$((attempt + 1))
    delay=$((delay * 2 > 120 ? 120 : delay * 2))
  done
}

qr_create() {
  local args=(compute tpus queued-resources create "${SDCE_TPU_NAME}"
    --project="${SDCE_PROJECT}" --zone="${SDCE_ZONE}"
    --node-id="${SDCE_TPU_NAME}"
    --accelerator-type="${SDCE_ACCELERATOR}"
    --runtime-version="${SDCE_RUNTIME_VERSION}"
    --labels="app=sdce,run=${SDCE_RUN_ID//[^a-z0-9_-]/-}"
    --async)
  truthy "${SDCE_SPOT}" && args+=(--spot)
  [[ -n "${SDCE_NETWORK}" ]] && args+=(--network="${SDCE_NETWORK}")
  [[ -n "${SDCE_SUBNETWORK}" ]] && args+=(--subnetwork="${SDCE_SUBNETWORK}")
  [[ -n "${SDCE_TPU_TAGS}" ]] && args+=(--tags="${SDCE_TPU_TAGS}")
  truthy "${SDCE_INTERNAL_IPS}" && args+=(--internal-ips)
  if [[ -n "${SDCE_SERVICE_ACCOUNT}" ]]; then
    args+=(--service-account="${SDCE_SERVICE_ACCOUNT}" --scopes=https://www.googleapis.com/auth/cloud-platform)
  fi
  run gcloud "${args[@]}"
}

qr_explain_failure() {
  log "queued resource ${SDCE_TPU_NAME} is $1; details:"
  run gcloud compute tpus queued-resources describe "${SDCE_TPU_NAME}" \
    --project="${SDCE_PROJECT}" --zone="${SDCE_ZONE}" \
    --format='yaml(state)' >&2 || true
  log "free it with '${SCRIPT_NAME} cleanup', then 'setup' (or 'resume') again"
}

# Waits (bounded) for ACTIVE; fails fast on FAILED and SUSPENDED/SUSPENDING.
qr_wait_active() {
  local deadline state
  deadline=$(($(date +%s) + SDCE_WAIT_MINUTES * 60))
  DRY_STATE=ACTIVE
  while true; do
    state="$(qr_state)"
    case "${state}" in
      ACTIVE)
        log "queued resource ${SDCE_TPU_NAME} is ACTIVE"
        return 0
        ;;
      FAILED | SUSPENDING | SUSPENDED)
        qr_explain_failure "${state}"
        return 1
        ;;
      NOT_FOUND)
        # Just created: the API may not list it yet (eventual consistency).
        log "queued resource ${SDCE_TPU_NAME} not visible yet"
        ;;
      *) log "queued resource ${SDCE_TPU_NAME}: ${state}" ;;
    esac
    if (($(date +%s) >= deadline)); then
      log "queued resource ${SDCE_TPU_NAME} not ACTIVE after ${SDCE_WAIT_MINUTES} min (last state ${state}); it stays queued: check '${SCRIPT_NAME} status', or 'cleanup'"
      return 1
    fi
    sleep "${SDCE_POLL_SECONDS}"
  done
}

# Create unless present; a SUSPENDED/FAILED one is replaced only when $1 is "replace".
qr_ensure_active() {
  local mode="${1:-keep}" state
  state="$(qr_state)"
  case "${state}" in
    NOT_FOUND)
      log "creating queued resource ${SDCE_TPU_NAME} (${SDCE_ACCELERATOR}, ${SDCE_RUNTIME_VERSION}, spot=${SDCE_SPOT})"
      qr_create
      ;;
    FAILED | SUSPENDED | SUSPENDING)
      if [[ "${mode}" != replace ]]; then
        qr_explain_failure "${state}"
        return 1
      fi
      log "queued resource ${SDCE_TPU_NAME} is ${state}: deleting it and queueing a new one"
      qr_delete
      qr_wait_gone
      qr_create
      ;;
    *) log "queued resource ${SDCE_TPU_NAME} exists (${state})" ;;
  esac
  qr_wait_active
}

qr_delete() {
  run gcloud compute tpus queued-resources delete "${SDCE_TPU_NAME}" \
    --project="${SDCE_PROJECT}" --zone="${SDCE_ZONE}" --force --quiet --async
}

qr_wait_gone() {
  local deadline state
  ((DRY_RUN)) && return 0
  deadline=$(($(date +%s) + SDCE_WAIT_MINUTES * 60))
  while state="$(qr_state)" && [[ "${state}" != NOT_FOUND ]]; do
    (($(date +%s) < deadline)) || die "queued resource ${SDCE_TPU_NAME} still ${state} after ${SDCE_WAIT_MINUTES} min"
    log "waiting for deletion (${state})"
    sleep "${SDCE_POLL_SECONDS}"
  done
}

# ---------------------------------------------------------------------------------------
# Code, workers, training
# ---------------------------------------------------------------------------------------
code_url() { echo "gs://${SDCE_BUCKET}/tpu-runs/${SDCE_RUN_ID}/code.tar.gz"; }

ensure_bucket() {
  local region="${SDCE_ZONE%-*}"
  if ((DRY_RUN)); then
    run gcloud storage buckets describe "gs://${SDCE_BUCKET}" --project="${SDCE_PROJECT}" --format='value(name)'
    return 0
  fi
  if gcloud storage buckets describe "gs://${SDCE_BUCKET}" --project="${SDCE_PROJECT}" \
    --format='value(name)' > /dev/null 2>&1; then
    return 0
  fi
  log "creating bucket gs://${SDCE_BUCKET} in ${region} (uniform access, public access prevented)"
  run gcloud storage buckets create "gs://${SDCE_BUCKET}" --project="${SDCE_PROJECT}" \
    --location="${region}" --uniform-bucket-level-access --public-access-prevention
}

# Sources, config and lock files (no results, virtualenvs or caches) to the bucket.
upload_code() {
  local tarball paths=() p
  for p in pyproject.toml README.md src config workflow Snakefile containers/constraints-tpu.txt containers/requirements-tpu.in; do
    [[ -e "${REPO_ROOT}/${p}" ]] && paths+=("${p}")
  done
  tarball="${TMPDIR:-/tmp}/sdce-code-${SDCE_RUN_ID}.tar.gz"
  run tar -C "${REPO_ROOT}" --exclude=__pycache__ --exclude='*.pyc' -czf "${tarball}" "${paths[@]}"
  retry gcloud storage cp "${tarball}" "$(code_url)" --project="${SDCE_PROJECT}"
  ((DRY_RUN)) || rm -f "${tarball}"
}

# Stale holders of the TPU devices (a previous run, a crashed process) make libtpu fail
# with "TPU in use"; kill them and drop libtpu's lock file.
readonly FREE_ACCEL='sudo lsof -t /dev/accel* 2>/dev/null | sort -u | xargs -r sudo kill -9; sudo rm -f /tmp/libtpu_lockfile; true'

prepare_workers() {
  local fetch install
  fetch="mkdir -p ${REMOTE_DIR} ${REMOTE_LOGS} && gcloud storage cp $(code_url) - | tar -xz -C ${REMOTE_DIR}"
  if [[ -n "${SDCE_TPU_IMAGE}" ]]; then
    local registry="${SDCE_TPU_IMAGE%%/*}"
    install="sudo gcloud auth configure-docker ${registry} --quiet && sudo docker pull ${SDCE_TPU_IMAGE}"
  else
    # The TPU VM's own Python (3.10 on tpu-ubuntu2204-base): containers/constraints-tpu.txt
    # is the lock of the image's Python 3.11, so only the pins of requirements-tpu.in
    # (torch, torch_xla, libtpu through its extra) hold here. The image is the exact path.
    install="(dpkg -s python3-venv >/dev/null 2>&1 || (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv))"
    install+=" && (test -x ${REMOTE_VENV}/bin/python || python3 -m venv ${REMOTE_VENV})"
    install+=" && ${REMOTE_VENV}/bin/pip install --quiet --extra-index-url https://download.pytorch.org/whl/cpu"
    install+=" -r ${REMOTE_DIR}/containers/requirements-tpu.in ${REMOTE_DIR}"
  fi
  log "preparing all workers (free /dev/accel*, fetch code, ${SDCE_TPU_IMAGE:+pull image}${SDCE_TPU_IMAGE:-install package})"
  on_workers all "set -e; ${FREE_ACCEL}; ${fetch}; ${install}"
}

launch() {
  local train
  if [[ -n "${SDCE_TPU_IMAGE}" ]]; then
    # --privileged and the devices' group: the image's non-root user opens /dev/accel*.
    train="sudo docker rm -f ${CONTAINER_NAME} >/dev/null 2>&1 || true; nohup sudo docker run --rm --name ${CONTAINER_NAME} --privileged --net=host --group-add \$(stat -c %g /dev/accel0) -e PJRT_DEVICE=TPU -v ${REMOTE_DIR}:/workdir -w /workdir ${SDCE_TPU_IMAGE} sdce train-job ${SDCE_TRAIN_ARGS}"
  else
    train="cd ${REMOTE_DIR} && PJRT_DEVICE=TPU nohup ${REMOTE_VENV}/bin/sdce train-job ${SDCE_TRAIN_ARGS}"
  fi
  log "launching 'sdce train-job' on all workers of ${SDCE_TPU_NAME} (PJRT_DEVICE=TPU)"
  # Detached, one log per worker, pid recorded for 'stop'.
  on_workers all "${FREE_ACCEL}; mkdir -p ${REMOTE_LOGS}; (${train}) > ${REMOTE_LOGS}/worker.log 2>&1 < /dev/null & echo \$! > ${REMOTE_LOGS}/train.pid"
}

stop_training() {
  on_workers all "if test -f ${REMOTE_LOGS}/train.pid; then kill \$(cat ${REMOTE_LOGS}/train.pid) 2>/dev/null || true; rm -f ${REMOTE_LOGS}/train.pid; fi; sudo docker rm -f ${CONTAINER_NAME} >/dev/null 2>&1 || true; ${FREE_ACCEL}"
}

# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------
cmd_setup() {
  ensure_bucket
  upload_code
  qr_ensure_active keep
  prepare_workers
  launch
  log "started; follow with '${SCRIPT_NAME} monitor' or '${SCRIPT_NAME} logs [N]'"
}

cmd_create() { qr_ensure_active keep; }

cmd_resume() {
  upload_code
  local state
  state="$(qr_state)"
  if [[ "${state}" == ACTIVE ]]; then
    stop_training
  fi
  DRY_STATE="${state}"
  qr_ensure_active replace
  prepare_workers
  launch
}

cmd_status() {
  tpus queued-resources describe "${SDCE_TPU_NAME}" --format='table(name.basename(),state.state,tpu.nodeSpec[0].node.acceleratorType,spot.yesno(yes=spot,no=on-demand))'
  tpus tpu-vm describe "${SDCE_TPU_NAME}" --format='table(name.basename(),state,health,acceleratorType,runtimeVersion)' || true
}

cmd_monitor() {
  local deadline state
  deadline=$(($(date +%s) + SDCE_MONITOR_MINUTES * 60))
  while true; do
    state="$(qr_state)"
    log "queued resource ${SDCE_TPU_NAME}: ${state}"
    case "${state}" in
      ACTIVE)
        on_workers 0 "tail -n 5 ${REMOTE_LOGS}/worker.log; test -f ${REMOTE_LOGS}/train.pid && kill -0 \$(cat ${REMOTE_LOGS}/train.pid) 2>/dev/null && echo '[running]' || echo '[not running]'" || true
        ;;
      FAILED | SUSPENDING | SUSPENDED | NOT_FOUND)
        if truthy "${SDCE_AUTO_RESUME}" && [[ "${state}" != SUSPENDING ]]; then
          log "capacity lost (${state}); resuming"
          cmd_resume
        else
          log "capacity lost (${state}); run '${SCRIPT_NAME} resume' (or set SDCE_AUTO_RESUME=1)"
          return 1
        fi
        ;;
    esac
    ((DRY_RUN)) && return 0
    if (($(date +%s) >= deadline)); then
      log "monitor stops after ${SDCE_MONITOR_MINUTES} min; the run goes on"
      return 0
    fi
    sleep "${SDCE_POLL_SECONDS}"
  done
}

cmd_logs() {
  local worker="${1:-0}"
  [[ "${worker}" =~ ^([0-9]+|all)$ ]] || die "logs: worker must be a number or 'all', not '${worker}'"
  on_workers "${worker}" "tail -n ${SDCE_LOG_LINES} ${REMOTE_LOGS}/worker.log"
}

cmd_ssh() {
  local worker="${1:-0}"
  [[ "${worker}" =~ ^[0-9]+$ ]] || die "ssh: worker must be a number, not '${worker}'"
  ssh_cmd
  run "${SSH_CMD[@]}" --worker="${worker}"
}

cmd_stop() { stop_training; }

cmd_cleanup() {
  qr_delete
  log "deletion of ${SDCE_TPU_NAME} requested"
}

main() {
  local cmd="" arg=""
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --config)
        (($# >= 2)) || die "--config needs a file"
        CONFIG_FILE="$2"
        shift
        ;;
      --config=*) CONFIG_FILE="${1#--config=}" ;;
      -h | --help | help)
        usage
        return 0
        ;;
      -*) die "unknown option '$1' (see --help)" ;;
      *)
        if [[ -z "${cmd}" ]]; then
          cmd="$1"
        elif [[ -z "${arg}" ]]; then
          arg="$1"
        else
          die "too many arguments (see --help)"
        fi
        ;;
    esac
    shift
  done
  [[ -n "${cmd}" ]] || {
    usage >&2
    exit 2
  }
  case "${cmd}" in
    setup | create | resume | status | monitor | logs | ssh | stop | cleanup) ;;
    *) die "unknown command '${cmd}' (setup, create, resume, status, monitor, logs, ssh, stop, cleanup)" ;;
  esac
  [[ -n "${arg}" && "${cmd}" != logs && "${cmd}" != ssh ]] && die "${cmd} takes no argument"
  [[ -n "${CONFIG_FILE}" ]] && load_config_file "${CONFIG_FILE}"
  apply_defaults
  validate "${cmd}"
  if ((!DRY_RUN)) && ! command -v gcloud > /dev/null 2>&1; then
    die "gcloud not found: install the Google Cloud CLI"
  fi
  "cmd_${cmd}" "${arg}"
}

main "$@"
