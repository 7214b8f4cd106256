#!/usr/bin/env bash
# Dev mode: signaling and orbs on this machine, no cluster. Builds the binaries, then runs
# orb-signaling with the local orb runtime: each room's orb is a child process started, queued,
# timed out and stopped by the operator's own policy code. Ctrl-C stops everything.
#
# Environment: PORT (default 8080), HOST (default 127.0.0.1: this machine only), ORB_LOG_DIR (default target/dev/logs), and any orb or
# signaling setting (e.g. MAX_CONCURRENT_ORBS, ORB_CLEANUP_GRACE_PERIOD, IDLE_TIMEOUT). Without
# OPENAI_API_KEY the orbs run the test brain (a greeting tone, then an echo of what they hear).
# ORB_BRAIN=local runs the local brain on this machine's CPU with the small models (installed
# into target/models on first use): say "Hey orb, ..." to be answered.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh build

echo "==> building orb-signaling and orb"
cargo build --quiet --bin orb-signaling --bin orb

PORT="${PORT:-8080}"
# Loopback only: dev mode hands out room tokens to anyone who asks. HOST=0.0.0.0 opens it to the
# network (say, to join from a phone), on a network you trust.
HOST="${HOST:-127.0.0.1}"
DEV_DIR="target/dev"
export ORB_LOG_DIR="${ORB_LOG_DIR:-$DEV_DIR/logs}"
mkdir -p "$DEV_DIR" "$ORB_LOG_DIR"

# Room tokens are on, as in production: a random key for this machine, kept between runs.
KEY_FILE="$DEV_DIR/signing-key"
if [ ! -s "$KEY_FILE" ]; then
  (umask 077 && head -c 48 /dev/urandom | base64 | tr -d '\n' >"$KEY_FILE")
fi

if [ -z "${OPENAI_API_KEY:-}" ]; then
  export ORB_BRAIN="${ORB_BRAIN:-test}"
fi
if [ "${ORB_BRAIN:-}" = local ]; then
  ./scripts/install-models.sh
  export ORB_MODELS_DIR="${ORB_MODELS_DIR:-$PWD/target/models}"
fi

cat <<INFO

  Dev mode: orb-signaling with local orbs (cap ${MAX_CONCURRENT_ORBS:-8}, brain ${ORB_BRAIN:-openai-realtime})

  Open in a browser (Chromium or Firefox):
    coach:   http://localhost:${PORT}/rooms/demo?role=coach&name=Coach
    client:  http://localhost:${PORT}/rooms/demo?role=client&name=Client
    start:   http://localhost:${PORT}/

  Orb logs:  ${ORB_LOG_DIR}/orb-<room>.log      Metrics: http://localhost:${PORT}/metrics
  Ctrl-C stops signaling and every orb.

INFO

unset ORB_SIGNING_KEY
exec target/debug/orb-signaling \
  --listen "${HOST}:${PORT}" \
  --orb-runtime local \
  --auth jwt \
  --signing-key-file "$KEY_FILE" \
  --orb-binary target/debug/orb \
  --orb-log-dir "$ORB_LOG_DIR" \
  --summary-dir "$DEV_DIR/summaries"
