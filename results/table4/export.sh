# export.sh CKPT: CKPT's weights (scripts/export_weights.py) sent back in 15 MiB pieces with their sha256 (a call
# returns at most 8 files of 16 MiB), so that a later session can carry a tokenizer in instead of training it again:
# there, `cat weights.part.* > weights.pt && sha256sum -c weights.sha256`
set -eu
[ -f "$1" ] || { echo "no checkpoint $1: the machine went cold or the stage did not finish"; exit 3; }
python /root/stage/repo/scripts/export_weights.py "$1" /root/stage/weights.pt
cd /root/stage && sha256sum weights.pt > "$OUT/weights.sha256" && split -b 15M -d weights.pt "$OUT/weights.part."
ls -l "$OUT"
