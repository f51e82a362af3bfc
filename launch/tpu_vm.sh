#!/usr/bin/env bash
# Pretrains simclr_jax on a Cloud TPU VM or pod slice: create it, install the project on every
# worker, run the same `python3 -m simclr_jax.main` on all workers (JAX joins them into one run),
# stream the logs here, delete the TPU at the end. With --spot (or --preemptible) a preempted TPU
# is recreated and the same command rerun; it resumes from the newest checkpoint in the gs://
# workdir, and the batch of step s is a pure function of (seed, s), so the numbers match an
# uninterrupted run. See docs/scaling.md.
#
# Usage:
#   bash launch/tpu_vm.sh --name=simclr-v4 --zone=us-central2-b --accelerator-type=v4-32 \
#     --workdir=gs://BUCKET/simclr/r50_b4096 [--config=configs/imagenet.py] [--spot] [--keep] \
#     [--dry-run] [-- --config.batch_size=4096 --config.dataset.data_dir=gs://BUCKET/tfds]
#
# Options (all --opt=value or --opt value):
#   --name              TPU name (required)
#   --zone              zone (required), e.g. us-central2-b (v4), europe-west4-a (v3/v5e)
#   --accelerator-type  v3-32 | v4-32 | v5litepod-64 | ... (default v4-32)
#   --version           TPU software version (default: picked from the accelerator type)
#   --project           GCP project (default: gcloud's configured project)
#   --config            config file, relative to the repository (default configs/imagenet.py)
#   --workdir           gs:// folder for checkpoints, TensorBoard events, results.json (required;
#                       all workers must see it, and a recreated VM must find the checkpoints)
#   --mode              simclr_jax.main --mode (default pretrain_then_eval)
#   --repo, --ref       git URL and branch/tag to clone on the workers; without --repo the
#                       local checkout's HEAD is copied (git archive + scp; uncommitted changes
#                       are not included)
#   --spot | --preemptible  cheaper, preemptible capacity; preemptions are handled
#   --max-restarts      recreations after preemption before giving up (default 20)
#   --keep              do not delete the TPU at the end
#   --log               also append the streamed logs to this local file
#   --dry-run           print every command instead of running it
#   -- ARGS             passed on to simclr_jax.main (absl flags, e.g. --config.batch_size=4096)
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"

name=""
zone=""
accelerator_type="v4-32"
version=""
project=""
config="configs/imagenet.py"
workdir=""
mode="pretrain_then_eval"
repo_url=""
repo_ref="main"
capacity=""
max_restarts=20
keep=0
dry_run=0
log_file=""
main_args=()

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 2
}

# Parses --opt=value and --opt value.
while [ $# -gt 0 ]; do
  opt="$1"
  shift
  case "$opt" in
    --) main_args=("$@"); break ;;
    -h|--help) usage 0 ;;
    --spot|--preemptible) capacity="$opt"; continue ;;
    --keep) keep=1; continue ;;
    --dry-run) dry_run=1; continue ;;
    --*=*) value="${opt#*=}"; opt="${opt%%=*}" ;;
    --*) [ $# -gt 0 ] || die "$opt needs a value"; value="$1"; shift ;;
    *) die "unexpected argument '$opt' (simclr_jax.main flags go after --)" ;;
  esac
  case "$opt" in
    --name) name="$value" ;;
    --zone) zone="$value" ;;
    --accelerator-type) accelerator_type="$value" ;;
    --version) version="$value" ;;
    --project) project="$value" ;;
    --config) config="$value" ;;
    --workdir) workdir="$value" ;;
    --mode) mode="$value" ;;
    --repo) repo_url="$value" ;;
    --ref) repo_ref="$value" ;;
    --max-restarts) max_restarts="$value" ;;
    --log) log_file="$value" ;;
    *) die "unknown option $opt (see --help)" ;;
  esac
done

[ -n "$name" ] || die "--name is required"
[ -n "$zone" ] || die "--zone is required"
[ -n "$workdir" ] || die "--workdir is required"
case "$workdir" in
  gs://*) ;;
  *) die "--workdir must be gs://...: every worker, and a VM recreated after preemption, must see it" ;;
esac
[ -f "$repo_root/$config" ] || die "no config file $config in $repo_root"

if [ -z "$version" ]; then
  # The software images Cloud TPU documents per generation (gcloud compute tpus tpu-vm versions list).
  case "$accelerator_type" in
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) version="tpu-ubuntu2204-base" ;;
  esac
fi

location=("--zone=$zone")
if [ -n "$project" ]; then
  location+=("--project=$project")
fi

# Prints a command in a form that can be pasted into a shell: words quoted only where needed.
show() {
  local out="" word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+="$word "
    else
      out+="'${word//\'/\'\\\'\'}' "
    fi
  done
  echo "+ ${out% }"
}

# Runs a command, or only prints it with --dry-run.
run() {
  show "$@"
  if [ "$dry_run" = 0 ]; then
    "$@"
  fi
}

# The TPU's state (READY, CREATING, PREEMPTED, ...), or ABSENT. With --dry-run: ABSENT before
# the first creation, READY after, so that one pass of the loop is printed.
tpu_state() {
  if [ "$dry_run" = 1 ]; then
    if [ "${created:-0}" = 1 ]; then echo READY; else echo ABSENT; fi
    return
  fi
  gcloud compute tpus tpu-vm describe "$name" "${location[@]}" --format='value(state)' 2>/dev/null \
    || echo ABSENT
}

create_tpu() {
  local create=(gcloud compute tpus tpu-vm create "$name" "${location[@]}"
                "--accelerator-type=$accelerator_type" "--version=$version")
  if [ -n "$capacity" ]; then
    create+=("$capacity")
  fi
  run "${create[@]}"
  created=1
}

delete_tpu() {
  run gcloud compute tpus tpu-vm delete "$name" "${location[@]}" --quiet
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker=all --command="$1"
}

jax_version="$(sed -n 's/^jax==\([0-9.]*\).*/\1/p' "$repo_root/requirements.txt")"
[ -n "$jax_version" ] || die "no jax==VERSION pin in requirements.txt"
# requirements.txt holds the CPU wheels; jax[tpu] of the same version adds libtpu.
install_cmd="cd simclr_jax && python3 -m pip install -q -U pip \
&& python3 -m pip install -q -r requirements.txt \
&& python3 -m pip install -q 'jax[tpu]==$jax_version'"

install_project() {
  if [ -n "$repo_url" ]; then
    on_all_workers "rm -rf simclr_jax && git clone -q --depth=1 --branch=$(printf '%q' "$repo_ref") \
$(printf '%q' "$repo_url") simclr_jax && $install_cmd"
  else
    local archive
    archive="${TMPDIR:-/tmp}/simclr_jax_${name}.tar.gz"
    run git -C "$repo_root" archive --format=tar.gz --prefix=simclr_jax/ -o "$archive" HEAD
    run gcloud compute tpus tpu-vm scp "$archive" "$name:simclr_jax.tar.gz" "${location[@]}" \
      --worker=all
    on_all_workers "rm -rf simclr_jax && tar -xzf simclr_jax.tar.gz && $install_cmd"
  fi
}

train_cmd="cd simclr_jax && TF_CPP_MIN_LOG_LEVEL=2 python3 -m simclr_jax.main \
--config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir") --mode=$(printf '%q' "$mode")"
for arg in "${main_args[@]}"; do
  train_cmd+=" $(printf '%q' "$arg")"
done

# Streams every worker's output here (and to --log); returns the remote command's status.
train_on_all_workers() {
  if [ -n "$log_file" ] && [ "$dry_run" = 0 ]; then
    show gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker=all --command="$train_cmd"
    gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker=all --command="$train_cmd" \
      2>&1 | tee -a "$log_file"
  else
    on_all_workers "$train_cmd"
  fi
}

cleanup() {
  local status=$?
  if [ "$keep" = 1 ]; then
    echo "tpu_vm.sh: keeping $name (delete it with: gcloud compute tpus tpu-vm delete $name --zone=$zone)" >&2
  elif [ "${created:-0}" = 1 ] || [ "$(tpu_state)" != ABSENT ]; then
    delete_tpu || echo "tpu_vm.sh: could not delete $name; delete it by hand" >&2
  fi
  exit "$status"
}
trap cleanup EXIT

# Counts a preemption; gives up past --max-restarts or when the TPU is not preemptible.
preempted() {
  [ -n "$capacity" ] || die "$name is $1, and it was not created with --spot or --preemptible"
  restarts=$((restarts + 1))
  [ "$restarts" -le "$max_restarts" ] || die "preempted $restarts times; giving up (--max-restarts)"
  echo "tpu_vm.sh: $name is $1 (preempted); recreating it and resuming from $workdir" \
    "(restart $restarts of at most $max_restarts)" >&2
}

restarts=0
installed=0
while true; do
  state="$(tpu_state)"
  case "$state" in
    READY) ;;
    ABSENT)
      create_tpu
      installed=0
      ;;
    PREEMPTED|TERMINATED|STOPPED)
      delete_tpu
      create_tpu
      installed=0
      ;;
    *)
      echo "tpu_vm.sh: $name is $state; waiting" >&2
      sleep 30
      continue
      ;;
  esac
  if [ "$installed" = 0 ]; then
    if ! install_project; then
      state="$(tpu_state)"
      [ "$state" != READY ] || die "installing on the workers failed (see above)"
      preempted "$state"
      continue
    fi
    installed=1
  fi
  status=0
  train_on_all_workers || status=$?
  # A preempted worker gets SIGTERM, saves a checkpoint and exits 0, or its ssh connection just
  # drops: the TPU's state, not the exit status, says whether the run is over.
  state="$(tpu_state)"
  if [ "$state" = READY ]; then
    [ "$status" = 0 ] || die "training failed with status $status on a healthy TPU (see the log above)"
    echo "tpu_vm.sh: finished; results in $workdir/results.json" >&2
    break
  fi
  preempted "$state"
done
