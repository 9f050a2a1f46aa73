# launch.sh [row ...]: reassemble the payload (pack.sh builds and stages it), check it, unpack, copy the code, start
# run.sh [row ...] detached.
# WEIGHTS_TO="NAME:DEST ...": also reassemble each set of weights export.sh sent back in an earlier session, its
# weights.part.* and weights.sha256 copied to /root/stage/NAME by earlier calls, into /root/stage/DEST (e.g.
# WEIGHTS_TO="srtok:t4/superres16/tok/ckpt.pt tok:t4/cifar10/tok/ckpt.pt")
set -eu
cd /root/stage && cp "$OLDPWD"/.stage/part.* . && cat part.0? > payload.tar && mkdir -p w && tar -xf payload.tar -C w
(cd w && sha256sum -c SHA256SUMS)
mkdir -p data && tar -xzf w/cifar10.tgz -C data && ls data && find data/train -name '*.jpg' | wc -l
mkdir -p repo && (cd "$OLDPWD" && tar --exclude=./.stage -cf - .) | tar -xf - -C repo
cp "$OLDPWD/.stage/run.sh" "$OLDPWD/.stage/wait.sh" . && mkdir -p t4
for pair in ${WEIGHTS_TO:-}; do
  name=${pair%%:*} dest=/root/stage/${pair#*:}
  (cd "$name" && cat weights.part.* > weights.pt && sha256sum -c weights.sha256)
  mkdir -p "$(dirname "$dest")" && mv "$name/weights.pt" "$dest"
done
setsid nohup bash /root/stage/run.sh "$@" > /root/stage/run.log 2>&1 < /dev/null &
sleep 45; bash wait.sh 0  # wait.sh's report of the logs so far, without waiting
