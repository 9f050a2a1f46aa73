# Sourced by the scripts that train several variants at once (gen_search.sh, tok_search.sh, tokens_per_step.sh,
# table4.sh) and by results/table4/run.sh: GPUS and gpu_of, the GPUs to spread runs over; check_variants, which
# stops on an unknown variant name; pending_variants, which leaves out the variants finished earlier; steps_of and
# without_steps, a name's _Nk length suffix; run_variants, which runs one command per variant, the j-th on GPU
# gpu_of j, RUNS_PER_GPU at a time; and encode_tokens, the token files generator variants share.
# shellcheck shell=bash
# The GPUs this shell may use: CUDA_VISIBLE_DEVICES's list when it is set, so that a script given some of a host's
# GPUs keeps its variants on them, else every GPU nvidia-smi lists
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then IFS=, read -ra VISIBLE_GPUS <<< "$CUDA_VISIBLE_DEVICES"
else mapfile -t VISIBLE_GPUS < <(seq 0 $(( $( (nvidia-smi -L 2>/dev/null || true) | wc -l) - 1))); fi
GPUS=${GPUS:-${#VISIBLE_GPUS[@]}}  # fewer GPUs than variants: some share one
[ "$GPUS" -ge 1 ] || GPUS=1

# gpu_of J: the CUDA_VISIBLE_DEVICES of the J-th run: the (J mod GPUS)-th visible GPU, counted round the list when
# GPUS is set above its length (J mod GPUS itself when none is listed, as on a CPU)
gpu_of() {
  local k=$(($1 % GPUS))
  if [ ${#VISIBLE_GPUS[@]} -gt 0 ]; then echo "${VISIBLE_GPUS[$((k % ${#VISIBLE_GPUS[@]}))]}"; else echo "$k"; fi
}

# steps_of NAME DEFAULT: the length a variant's name gives, N000 for a NAME ending in _Nk (N thousand steps), else
# DEFAULT; without_steps NAME: NAME without that suffix, the recipe whose flags the calling script looks up
steps_of() {
  if [[ $1 =~ _([0-9]+)k$ ]]; then echo "${BASH_REMATCH[1]}000"; else echo "$2"; fi
}
without_steps() {
  if [[ $1 =~ ^(.*)_[0-9]+k$ ]]; then echo "${BASH_REMATCH[1]}"; else echo "$1"; fi
}

# check_variants FLAGS NAME ...: calls the calling script's function FLAGS on each NAME, output discarded, in this
# shell, so that FLAGS' own message and exit status stop the script on the first unknown name, before any run.
check_variants() {
  local flags=$1 name
  shift
  for name in "$@"; do "$flags" "$name" >/dev/null; done
}

# pending_variants LABEL DIR_PREFIX DONE NAME ...: sets pending to the NAMEs without a file DIR_PREFIX<NAME>/DONE (the
# last output of a finished variant) and names each finished one ("LABEL<NAME>: finished earlier (...)"). Passing
# pending to run_variants leaves a finished variant's folder as it is, its run.log included.
pending_variants() {
  local label=$1 prefix=$2 done_file=$3 name
  shift 3
  pending=()
  for name in "$@"; do
    if [ -f "$prefix$name/$done_file" ]; then echo "$label$name: finished earlier ($prefix$name/$done_file)"
    else pending+=("$name"); fi
  done
}

# run_variants LABEL DIR_PREFIX RUN NAME ...: for each NAME creates DIR=DIR_PREFIX<NAME> and runs `RUN NAME DIR`
# with CUDA_VISIBLE_DEVICES set to its GPU (the j-th NAME on gpu_of j) and its output in DIR/run.log, at most
# RUNS_PER_GPU at a time on each GPU (unset: all at once); the others wait for a run on their GPU to end, in order.
# No NAME: nothing to run. Then waits for them all, names each one that failed with its log ("LABEL<NAME> failed: see ..."), and sets failed
# to 1 if any did, else 0. RUN is a command or a function of the calling script; check the names first
# (check_variants), as an error in RUN only fails its own variant.
run_variants() {
  local label=$1 prefix=$2 run=$3 lane j
  shift 3
  local names=("$@") pids=()
  failed=0
  [ ${#names[@]} -gt 0 ] || return 0
  local lanes=$((GPUS * ${RUNS_PER_GPU:-${#names[@]}}))  # lane l runs the names l, l + lanes, ... on gpu_of l
  [ "$lanes" -ge 1 ] || { echo "RUNS_PER_GPU=${RUNS_PER_GPU:-}: give at least 1, or leave it unset (all at once)" >&2
                          exit 2; }
  for ((lane = 0; lane < lanes && lane < ${#names[@]}; lane++)); do
    (
      lane_failed=0
      for ((j = lane; j < ${#names[@]}; j += lanes)); do
        mkdir -p "$prefix${names[$j]}"
        ( export CUDA_VISIBLE_DEVICES=$(gpu_of "$lane"); "$run" "${names[$j]}" "$prefix${names[$j]}" ) \
          >"$prefix${names[$j]}/run.log" 2>&1 \
          || { echo "$label${names[$j]} failed: see $prefix${names[$j]}/run.log" >&2; lane_failed=1; }
      done
      exit $lane_failed
    ) &
    pids+=($!)
  done
  for j in "${!pids[@]}"; do wait "${pids[$j]}" || failed=1; done
}

# encode_tokens VIEWS: $ROOT/tokens_k<VIEWS>.npz, the codes by $TOK of the images in $TRAIN in VIEWS views per image,
# and $ROOT/val_tokens.npz, those of $HELD_OUT, encoded once (skipped while the training file exists) for the
# generators trained on them (train_gen.py --tokens ... --augment VIEWS --val_tokens ...). The token files record
# the folders they hold: train_gen.py refuses them for other --data / --val_data.
encode_tokens() {
  [ -f "$ROOT/tokens_k$1.npz" ] || python train_gen.py --tok_ckpt "$TOK" --data "$TRAIN" --tokens "$ROOT/tokens_k$1.npz" \
    --augment "$1" --val_data "$HELD_OUT" --val_tokens "$ROOT/val_tokens.npz" --encode_only --workers "$WORKERS" --out_dir "$ROOT"
}
