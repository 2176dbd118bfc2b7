#!/usr/bin/env bash
# The README's first command: the doom-lobby demo. Starts a local 3-POP
# tern cluster on the embedded store, builds and deploys the doom-lobby
# actors, plays ~24 simulated players from Paris, New York and Seoul for
# about a minute while one player travels and one POP is SIGKILLed, then
# audits every acknowledged action. Exits non-zero if anything was lost.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec target/debug/doom-lobby demo "$@"
