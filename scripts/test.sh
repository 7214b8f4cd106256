#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: dependencies, formatting, lints, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

# The real-API-server tier (tests/apiserver.rs) runs where control-plane binaries are unpacked.
if [ -z "${KUBEBUILDER_ASSETS:-}" ] && [ -x target/kube-assets/kube-apiserver ]; then
  export KUBEBUILDER_ASSETS="$PWD/target/kube-assets"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo nextest"
cargo nextest run --workspace --locked --profile ci
