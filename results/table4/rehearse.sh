# rehearse.sh [DIR]: the flow that trains a tokenizer on two lent machines in turn (it outlasts one machine's device
# time), rehearsed on this CPU before device time is spent on it, with two folders standing in for the two machines'
# /root/stage (STAGE), for 2 steps on each:
#   machine 1  pack.sh's parts staged one call at a time, launch.sh tok_search lpips_k4096_40k with TOK_CHUNK=2,
#              wait.sh, then export.sh FULL=1 page by page, the pieces reassembled here and checked by sha256
#   machine 2  a fresh one: the parts again with that checkpoint (pack.sh's WEIGHTS), launch.sh with WEIGHTS_TO
#              putting it where the variant continues from, wait.sh
# WITH_FINAL=1: the plan for a 2-GPU host, the final run's 40k tokenizer beside the variant (launch.sh tok_search
# lpips_k4096_40k // cifar10 TOK_STEPS=40000 tok): both checkpoints exported, carried and continued.
# It stops with a message at the first step that fails, and passes when machine 2 continued machine 1's checkpoints
# (step 2 -> 4 of 40,000). Run from the repository root after changing pack.sh, launch.sh, run.sh, wait.sh,
# export.sh or the tok stage's resume; about 2 minutes on 2 CPU cores and 4.4 GB under DIR (WITH_FINAL=1: about 4
# and 8), by default a temporary folder, removed at the end. Uses .stage/ as the real flow does.
set -euo pipefail
keep=${1:-}
dir=${1:-$(mktemp -d)}
[ -n "$keep" ] || trap 'rm -rf "$dir"' EXIT
fail() { echo "rehearsal failed: $*" >&2; exit 1; }
variant=lpips_k4096_40k
# what machine 1 runs; per run: the script, its checkpoint and the console that says "tok: continuing"
run_args=(tok_search "$variant")
scripts=(tok_search) ckpts=("t4/tok_search/$variant/tok/ckpt.pt") consoles=("t4/tok_search/$variant/run.log")
if [ -n "${WITH_FINAL:-}" ]; then
  run_args+=(// cifar10 TOK_STEPS=40000 tok)
  scripts+=(cifar10) ckpts+=(t4/cifar10/tok/ckpt.pt) consoles+=(t4/cifar10.log)
fi
# the variant as the device trains it (the cifar preset, LPIPS at 128 px, K = 4,096), on batches of 8 sample images
export COMPILE= TOK_BATCH=8 WORKERS=0 VAL_PER_CLASS=5 TOK_CHUNK=2 GPUS=1

mkdir -p "$dir/data/test"
cp -r assets/cifar10_sample "$dir/data/train"
for class in "$dir"/data/train/*; do  # a test/ as the payload has one; the search reads only train/
  mkdir -p "$dir/data/test/${class##*/}" && cp "$(find "$class" -type f | sort | head -1)" "$dir/data/test/${class##*/}/"
done

on_machine() {  # on_machine NAME PARTS: stage every part of PARTS on machine NAME, one call each, then launch and wait
  local stage=$dir/$1 parts=$2 n last
  last=$(($(ls "$parts" | grep -c '^part\.') - 1))
  for n in $(seq 0 "$last"); do
    bash results/table4/pack.sh "$parts" "$n" > /dev/null
    if [ "$n" -lt "$last" ]; then
      mkdir -p "$stage" && cp .stage/part.* "$stage/"
    else
      mkdir -p "$dir/$1.out"
      STAGE=$stage OUT=$dir/$1.out bash .stage/launch.sh "${run_args[@]}" > "$dir/$1.launch.log" 2>&1 \
        || { cat "$dir/$1.launch.log"; fail "launch.sh on $1"; }
    fi
  done
  STAGE=$stage OUT=$dir/$1.out bash "$stage/wait.sh" 600 > "$dir/$1.wait.log" 2>&1 || { cat "$dir/$1.wait.log"; fail "wait.sh on $1"; }
  [ -f "$stage/DONE" ] || { cat "$dir/$1.wait.log"; fail "run.sh on $1 did not finish in 10 minutes"; }
  local script
  for script in "${scripts[@]}"; do
    grep -q "$script exit 0" "$stage/run.log" || { cat "$stage/run.log" "$stage/t4/$script.log"; fail "$script on $1"; }
  done
}

DATA=$dir/data bash results/table4/pack.sh "$dir/parts_1" > /dev/null
on_machine machine_1 "$dir/parts_1"
step_of() { python -c "import torch, sys; print(torch.load(sys.argv[1], weights_only=True)['step'])" "$1"; }
weights=() weights_to=()
for k in "${!ckpts[@]}"; do
  ckpt=${ckpts[$k]} pieces=$dir/pieces_$k
  [ "$(step_of "$dir/machine_1/$ckpt")" = 2 ] || fail "machine 1 did not stop at step 2 ($ckpt)"
  page=0 pages=1
  mkdir -p "$pieces"
  while [ "$page" -lt "$pages" ]; do  # each page a call of its own, its files fetched before the next
    rm -rf "$dir/export.out" && mkdir "$dir/export.out"
    report=$(FULL=1 STAGE=$dir/machine_1 OUT=$dir/export.out \
             bash results/table4/export.sh "$dir/machine_1/$ckpt" "$page")
    pages=${report##*pages: }
    cp "$dir"/export.out/* "$pieces/"
    page=$((page + 1))
  done
  (cd "$pieces" && cat weights.part.* > weights.pt && sha256sum -c --quiet weights.sha256) \
    || fail "export: sha256 ($ckpt)"
  weights+=("$pieces/weights.pt:tok_$k.pt") weights_to+=("tok_$k.pt:$ckpt")
done
rm -rf "$dir/machine_1"  # the machine goes back

DATA=$dir/data WEIGHTS="${weights[*]}" bash results/table4/pack.sh "$dir/parts_2" > /dev/null
WEIGHTS_TO="${weights_to[*]}" on_machine machine_2 "$dir/parts_2"
for k in "${!ckpts[@]}"; do
  [ "$(step_of "$dir/machine_2/${ckpts[$k]}")" = 4 ] || fail "machine 2 did not continue to step 4 (${ckpts[$k]})"
  grep -q "tok: continuing" "$dir/machine_2/${consoles[$k]}" || fail "machine 2 did not say it resumed (${ckpts[$k]})"
done
echo "rehearsal passed: ${#ckpts[@]} tokenizer(s) at step 2 on machine_1, each exported in $pages page(s), continued" \
  "to step 4 on machine_2"
