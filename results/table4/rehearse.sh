# rehearse.sh [DIR]: the flow that trains one tokenizer on two lent machines in turn (it outlasts one machine's device
# time), rehearsed on this CPU before device time is spent on it, with two folders standing in for the two machines'
# /root/stage (STAGE), for 2 steps on each:
#   machine 1  pack.sh's parts staged one call at a time, launch.sh tok_search lpips_k4096_40k with TOK_CHUNK=2,
#              wait.sh, then export.sh FULL=1 page by page, the pieces reassembled here and checked by sha256
#   machine 2  a fresh one: the parts again with that checkpoint (pack.sh's WEIGHTS), launch.sh with WEIGHTS_TO
#              putting it where the variant continues from, wait.sh
# It stops with a message at the first step that fails, and passes when machine 2 continued machine 1's checkpoint
# (step 2 -> 4 of the variant's 40,000). Run from the repository root after changing pack.sh, launch.sh, run.sh,
# wait.sh, export.sh or the tok stage's resume; about 2 minutes on 2 CPU cores, 4.4 GB under DIR (default: a
# temporary folder, removed at the end). Uses .stage/ as the real flow does.
set -euo pipefail
keep=${1:-}
dir=${1:-$(mktemp -d)}
[ -n "$keep" ] || trap 'rm -rf "$dir"' EXIT
fail() { echo "rehearsal failed: $*" >&2; exit 1; }
variant=lpips_k4096_40k
ckpt=t4/tok_search/$variant/tok/ckpt.pt
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
      STAGE=$stage OUT=$dir/$1.out bash .stage/launch.sh tok_search "$variant" > "$dir/$1.launch.log" 2>&1 \
        || { cat "$dir/$1.launch.log"; fail "launch.sh on $1"; }
    fi
  done
  STAGE=$stage OUT=$dir/$1.out bash "$stage/wait.sh" 600 > "$dir/$1.wait.log" 2>&1 || { cat "$dir/$1.wait.log"; fail "wait.sh on $1"; }
  [ -f "$stage/DONE" ] || { cat "$dir/$1.wait.log"; fail "run.sh on $1 did not finish in 10 minutes"; }
  grep -q "tok_search exit 0" "$stage/run.log" || { cat "$stage/run.log" "$stage/t4/tok_search.log"; fail "tok_search on $1"; }
}

DATA=$dir/data bash results/table4/pack.sh "$dir/parts_1" > /dev/null
on_machine machine_1 "$dir/parts_1"
step_of() { python -c "import torch, sys; print(torch.load(sys.argv[1], weights_only=True)['step'])" "$1"; }
[ "$(step_of "$dir/machine_1/$ckpt")" = 2 ] || fail "machine 1 did not stop at step 2"

page=0 pages=1
mkdir -p "$dir/pieces"
while [ "$page" -lt "$pages" ]; do  # each page a call of its own, its files fetched before the next
  rm -rf "$dir/export.out" && mkdir "$dir/export.out"
  report=$(FULL=1 STAGE=$dir/machine_1 OUT=$dir/export.out bash results/table4/export.sh "$dir/machine_1/$ckpt" "$page")
  pages=${report##*pages: }
  cp "$dir"/export.out/* "$dir/pieces/"
  page=$((page + 1))
done
(cd "$dir/pieces" && cat weights.part.* > weights.pt && sha256sum -c --quiet weights.sha256) || fail "export: sha256"
rm -rf "$dir/machine_1"  # the machine goes back

DATA=$dir/data WEIGHTS="$dir/pieces/weights.pt:t4_40k.pt" bash results/table4/pack.sh "$dir/parts_2" > /dev/null
WEIGHTS_TO="t4_40k.pt:$ckpt" on_machine machine_2 "$dir/parts_2"
[ "$(step_of "$dir/machine_2/$ckpt")" = 4 ] || fail "machine 2 did not continue to step 4"
grep -q "tok: continuing" "$dir/machine_2/t4/tok_search/$variant/run.log" || fail "machine 2 did not say it resumed"
echo "rehearsal passed: step 2 on machine_1, exported in $pages page(s), continued to step 4 on machine_2"
