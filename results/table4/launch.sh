# launch.sh [row ...]: reassemble the payload, check it, unpack, copy the code, start run.sh [row ...] detached.
# WEIGHTS_TO=t4/cifar10/tok/ckpt.pt: also reassemble the weights.part.* copied to /root/stage by earlier calls there
set -eu
cd /root/stage && cp "$OLDPWD"/.stage/part.* . && cat part.0? > payload.tar && mkdir -p w && tar -xf payload.tar -C w
(cd w && sha256sum -c SHA256SUMS)
mkdir -p data && tar -xzf w/cifar10.tgz -C data && ls data && find data/train -name '*.jpg' | wc -l
mkdir -p repo && (cd "$OLDPWD" && tar --exclude=./.stage -cf - .) | tar -xf - -C repo
cp "$OLDPWD/.stage/run.sh" "$OLDPWD/.stage/wait.sh" . && mkdir -p t4
if [ -n "${WEIGHTS_TO:-}" ]; then  # weights sent back by export.sh in an earlier session, carried in as weights.part.*
  cat weights.part.* > weights.pt && sha256sum -c weights.sha256 && mkdir -p "$(dirname "$WEIGHTS_TO")" && mv weights.pt "$WEIGHTS_TO"
fi
setsid nohup bash /root/stage/run.sh "$@" > /root/stage/run.log 2>&1 < /dev/null &
sleep 45; bash wait.sh 0  # wait.sh's report of the logs so far, without waiting
