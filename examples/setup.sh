#!/usr/bin/env bash
# Installs the client libraries of the producer examples into a cache directory, without
# touching the system's Python or Node packages. Idempotent (skips what is installed already).
#
#   bash examples/setup.sh [python|node|all] [DIR]      # DIR defaults to .cache/producer-kit
#
# Then run the examples with:
#   PYTHONPATH=DIR/python python3 examples/python/publish.py ...
#   NODE_PATH=DIR/node/node_modules node examples/node/publish.js ...
#
# tests/producers.rs calls this itself before running the examples.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
what="${1:-all}"
dir="${2:-$here/../.cache/producer-kit}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

setup_python() {
  local target="$dir/python"
  local marker="$target/.installed-$(sha256sum "$here/python/requirements.txt" | cut -c1-16)"
  if [ -f "$marker" ]; then return; fi
  rm -rf "$target"
  python3 -m pip install --quiet --disable-pip-version-check --no-input --root-user-action=ignore \
    --target "$target" -r "$here/python/requirements.txt"
  touch "$marker"
  echo "pika installed in $target"
}

setup_node() {
  local target="$dir/node"
  local marker="$target/.installed-$(cat "$here/node/package.json" "$here/node/package-lock.json" | sha256sum | cut -c1-16)"
  if [ -f "$marker" ]; then return; fi
  rm -rf "$target"
  mkdir -p "$target"
  cp "$here/node/package.json" "$here/node/package-lock.json" "$target/"
  (cd "$target" && npm ci --silent --no-audit --no-fund)
  touch "$marker"
  echo "amqplib installed in $target/node_modules"
}

case "$what" in
  python) setup_python ;;
  node) setup_node ;;
  all) setup_python; setup_node ;;
  *) echo "usage: $0 [python|node|all] [DIR]" >&2; exit 2 ;;
esac
