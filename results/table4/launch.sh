# launch.sh [row ...]: reassemble the payload (pack.sh builds and stages it), check it, unpack, copy the code, start
# run.sh [row ...] detached.
# WEIGHTS_TO="NAME:DEST ...": also copy each file NAME that pack.sh's WEIGHTS added to the payload (weights that
# export.sh sent back from an earlier machine) to /root/stage/DEST, e.g. WEIGHTS_TO="tok.pt:t4/cifar10/tok/ckpt.pt",
# where cifar10.sh's stages after tok read the tokenizer; a NAME may go to several DESTs
set -eu
STAGE=${STAGE:-/root/stage}  # the device's staging folder; another one rehearses the flow on a CPU (rehearse.sh)
# parts 00 to this call's (the last) only: a machine may come with an earlier lease's /root/stage, parts of a
# longer payload among them
last=$(basename .stage/part.*) && last=$((10#${last#part.}))  # run from the working tree
cd "$STAGE" && cp "$OLDPWD"/.stage/part.* . && cat $(seq -f part.%02g 0 "$last") > payload.tar
[ -z "$(ls -A t4 2>/dev/null)" ] || { echo "t4 already holds (an earlier launch's; a stage finds its outputs there):"; ls t4; }
mkdir -p w && tar -xf payload.tar -C w
(cd w && sha256sum -c SHA256SUMS)
mkdir -p data && tar -xzf w/cifar10.tgz -C data && ls data && find data/train -name '*.jpg' | wc -l
mkdir -p repo && (cd "$OLDPWD" && tar --exclude=./.stage -cf - .) | tar -xf - -C repo
cp "$OLDPWD/.stage/run.sh" "$OLDPWD/.stage/wait.sh" . && mkdir -p t4
for pair in ${WEIGHTS_TO:-}; do
  name=${pair%%:*} dest=$STAGE/${pair#*:}
  [ -f "w/$name" ] || { echo "WEIGHTS_TO: no $name in the payload (pack.sh's WEIGHTS)"; exit 3; }
  mkdir -p "$(dirname "$dest")" && cp "w/$name" "$dest"
done
rm -f "$STAGE/DONE"  # an earlier launch's, on a machine still warm: wait.sh would not wait for this one
setsid nohup bash "$STAGE/run.sh" "$@" > "$STAGE/run.log" 2>&1 < /dev/null &
sleep 45; bash wait.sh 0  # wait.sh's report of the logs so far, without waiting
