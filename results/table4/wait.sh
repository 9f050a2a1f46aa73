# wait.sh SECONDS [FLAG]: wait up to SECONDS for /root/stage/FLAG (default DONE), then send back all but arrays and checkpoints
set -u
STAGE=${STAGE:-/root/stage}  # the device's staging folder; another one rehearses the flow on a CPU (rehearse.sh)
[ -d "$STAGE/t4" ] || { echo "machine went cold: $STAGE/t4 is missing"; exit 3; }
end=$((SECONDS + ${1:-500}))
while [ ! -f "$STAGE/${2:-DONE}" ] && [ $SECONDS -lt $end ]; do sleep 5; done
# no nvidia-smi where the flow is rehearsed on a CPU (rehearse.sh)
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
tail -6 "$STAGE/run.log"
for r in "$STAGE"/t4/*/run.log "$STAGE"/t4/*.log; do [ -f "$r" ] || continue; echo "== $r"; tail -c 400 "$r" | tr '\r' '\n' | tail -2; done
# checkpoints mid-write too (ckpt.pt.tmp.PID, written atomically): one in the archive pushed it past 16 MiB
cd "$STAGE" && tar -czf "$OUT/t4.tgz" --exclude='*.npz' --exclude='*.pt' --exclude='*.pt.tmp.*' t4 run.log && ls -l "$OUT"
