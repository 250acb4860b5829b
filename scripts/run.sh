#!/usr/bin/env bash
# The main job: build the agent and run the daemon in the foreground with its configuration
# (the embedded default when /etc/magestack/agent.toml does not exist). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked
exec ./target/release/magestack-agent run "$@"
