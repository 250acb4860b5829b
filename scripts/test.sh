#!/usr/bin/env bash
# The test suite: formatting, lints, unit tests and the integration tests that start the real
# binary and make real nodes. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --lib --bins --tests
