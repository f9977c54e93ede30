#!/usr/bin/env bash
# The whole test suite, from a fresh machine: services, formatting, lints, every test,
# deployment checks. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --no-fail-fast
if [ -x deploy/check.sh ]; then
  bash deploy/check.sh
fi
