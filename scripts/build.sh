#!/usr/bin/env bash
# Builds the binaries the README's commands and the cluster tests run
# (`tern`, `doom-lobby`, `tern-sim`), always as one set: cargo unifies
# features per set of packages, so building them apart would compile
# shared dependencies twice.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
# Not -q: a first build takes many minutes, and cargo's progress shows it
# is working.
echo "building tern, doom-lobby and tern-sim (a first build takes a while) ..." >&2
cargo build -p tern-cli -p doom-lobby -p tern-sim --bins
