#!/usr/bin/env bash
# Table 4 on one H100 at the campaign's budget (table4.sh's defaults: 1,500 tokenizer / 1,000 generator steps, CFG
# swept over 1.5 2 3 on 3,000 samples each), in waves so that a machine lost mid-way keeps every finished row:
# titok and full together, then full_s1 alone, then VAR's sampler against ours (the GPU otherwise idle), then
# titok_s1. After each wave, table4.sh over the finished rows writes the summary, table and per-position plot.
set -u
export PYTHONUNBUFFERED=1  # the device image has `python` on PATH (its venv)
cd /root/stage/repo
export DATA=/root/stage/data INCEPTION=/root/stage/w/default_1.pt LPIPS=/root/stage/w/vgg16.ckpt ROOT=/root/stage/t4
summarise() {  # table4.sh over the rows whose gFID is written: no training, only the summary
  local done=(); for r in titok full full_s1 titok_s1; do [ -f "$ROOT/$r/samples/fid.json" ] && done+=("$r"); done
  [ ${#done[@]} -eq 0 ] || bash scripts/table4.sh "${done[@]}" > "$ROOT/summary.txt" 2>&1
}
for wave in "titok full" "full_s1" "var_speed" "titok_s1"; do
  date; echo "wave: $wave"
  if [ "$wave" = var_speed ]; then
    python scripts/var_speed.py --var_repo /root/stage/VAR --batches 16 64 256 --json "$ROOT/var_speed.jsonl" \
      > "$ROOT/var_speed.log" 2>&1; echo "var_speed exit $?"
  else
    bash scripts/table4.sh $wave; echo "table4 exit $?"; summarise
  fi
  touch "/root/stage/DONE_${wave// /_}"
done
date; touch /root/stage/DONE
