# export.sh CKPT [PAGE]: CKPT sent back in 15 MiB pieces with their sha256, so that a later machine can carry it in
# (launch.sh's WEIGHTS_TO) instead of training it again: its weights alone (scripts/export_weights.py, enough for
# the stages after a tokenizer's), or with FULL=1 the whole checkpoint, which a resumed run continues from. A call
# returns at most 64 MiB, so pieces come 4 per page (a fifth is left behind): PAGE 0 (the default) cuts them, pages
# 1, 2, ... send the rest; alone in its call, without wait.sh's archive beside it. Reassembled here:
# `cat weights.part.* > weights.pt && sha256sum -c weights.sha256`; pack.sh's WEIGHTS then carries it in.
set -eu
STAGE=${STAGE:-/root/stage}  # the device's staging folder; another one rehearses the flow on a CPU (rehearse.sh)
pieces=$STAGE/pieces page=${2:-0}
if [ "$page" = 0 ]; then
  [ -f "$1" ] || { echo "no checkpoint $1: the machine went cold or the stage did not finish"; exit 3; }
  rm -rf "$pieces" && mkdir -p "$pieces"
  if [ -n "${FULL:-}" ]; then cp "$1" "$STAGE/weights.pt"
  else python "$STAGE/repo/scripts/export_weights.py" "$1" "$STAGE/weights.pt"; fi
  (cd "$STAGE" && sha256sum weights.pt > "$pieces/weights.sha256" && split -b 15M -d weights.pt "$pieces/weights.part.")
fi
cd "$pieces" && cp weights.sha256 "$OUT/"
ls weights.part.* | sed -n "$((page * 4 + 1)),$((page * 4 + 4))p" | xargs -r cp -t "$OUT/"
total=$(ls weights.part.* | wc -l)
echo "page $page: $(ls "$OUT" | grep -c part) of $total pieces; pages: $(( (total + 3) / 4 ))"
