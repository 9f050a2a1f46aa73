# wait.sh SECONDS [FLAG]: wait up to SECONDS for /root/stage/FLAG (default DONE), then send back all but arrays and checkpoints
set -u
[ -d /root/stage/t4 ] || { echo "machine went cold: /root/stage/t4 is missing"; exit 3; }
end=$((SECONDS + ${1:-500}))
while [ ! -f "/root/stage/${2:-DONE}" ] && [ $SECONDS -lt $end ]; do sleep 5; done
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
tail -6 /root/stage/run.log
for r in /root/stage/t4/*/run.log /root/stage/t4/*.log; do [ -f "$r" ] || continue; echo "== $r"; tail -c 400 "$r" | tr '\r' '\n' | tail -2; done
# checkpoints mid-write too (ckpt.pt.tmp.PID, written atomically): one in the archive pushed it past 16 MiB
cd /root/stage && tar -czf "$OUT/t4.tgz" --exclude='*.npz' --exclude='*.pt' --exclude='*.pt.tmp.*' t4 run.log && ls -l "$OUT"
