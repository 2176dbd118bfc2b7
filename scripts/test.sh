#!/usr/bin/env bash
# Runs every test in the workspace: unit tests, the storage conformance
# suite, in-process runtime tests and the cluster tests that start real
# `tern` processes. Guest components are built on demand into
# target/guest by the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
# componentize-py and componentize-js, for the Python and JavaScript actors.
eval "$(bash scripts/lang-tools.sh)"
cargo test --workspace -- "$@"
