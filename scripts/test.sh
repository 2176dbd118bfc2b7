#!/usr/bin/env bash
# Runs every test in the workspace: unit tests, the storage conformance
# suite, in-process runtime tests and the cluster tests that start real
# `tern` processes. Guest components are built on demand into
# target/guest by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build -p tern-cli --bin tern -p doom-lobby -p tern-sim
cargo test --workspace -- "$@"
