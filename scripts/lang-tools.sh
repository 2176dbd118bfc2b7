#!/usr/bin/env bash
# Installs the tools `tern build` uses for Python and JavaScript actors
# (componentize-py from PyPI, componentize-js from npm) into
# target/lang-tools, once, at the versions runtime/cli/src/lang.rs names.
# Prints the environment lines that point `tern build` at them:
#   eval "$(bash scripts/lang-tools.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
version() { sed -n "s/.*$1: &str = \"\(.*\)\";/\1/p" runtime/cli/src/lang.rs; }
PY_VERSION=$(version COMPONENTIZE_PY_VERSION)
JS_VERSION=$(version COMPONENTIZE_JS_VERSION)
TOOLS="$PWD/target/lang-tools"
PY="$TOOLS/py-$PY_VERSION"
JS="$TOOLS/js-$JS_VERSION"
if [ ! -x "$PY/bin/componentize-py" ]; then
  echo "installing componentize-py $PY_VERSION (pip) ..." >&2
  python3 -m venv "$PY" >&2
  "$PY/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$PY_VERSION" >&2
fi
if [ ! -x "$JS/node_modules/.bin/componentize-js" ]; then
  echo "installing componentize-js $JS_VERSION (npm) ..." >&2
  mkdir -p "$JS"
  npm install --prefix "$JS" --no-audit --no-fund --loglevel=error \
    "@bytecodealliance/componentize-js@$JS_VERSION" >&2
fi
echo "export TERN_COMPONENTIZE_PY='$PY/bin/componentize-py'"
echo "export TERN_COMPONENTIZE_JS='$JS/node_modules/.bin/componentize-js'"
