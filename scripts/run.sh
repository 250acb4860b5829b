#!/usr/bin/env bash
# The main job: build the agent and run the daemon in the foreground with its configuration
# (the embedded default when /etc/magestack/agent.toml does not exist: fw1, lb1, web1, web2, db1,
# mail1, acc1, monitor1, with the public side on a veth to this host). Once every node runs it
# prints `status` and the URL to try; Ctrl-C stops the agent and leaves the nodes running
# (`magestack-agent stop NODE...` stops them). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked
agent=./target/release/magestack-agent

"$agent" run "$@" &
daemon=$!
trap 'kill -TERM "$daemon" 2>/dev/null; wait "$daemon"' INT TERM

# The configuration the agent runs with, for the public address to print.
config=${MAGESTACK_CONFIG:-/etc/magestack/agent.toml}
[ -f "$config" ] || config=agent/config/default.toml
public_ip=$(sed -n 's/^public_ip *= *"\([^/"]*\).*/\1/p' "$config" | head -n 1)

all_running='import json, sys
try:
    nodes = json.load(sys.stdin)["nodes"]
except ValueError:
    sys.exit(1)
sys.exit(0 if nodes and all(node["state"] == "running" for node in nodes) else 1)'

# The first run builds the real images (a few minutes); later runs start in about a second.
echo "run: waiting for every node to run (the first run builds the images)" >&2
for _ in $(seq 1800); do
  kill -0 "$daemon" 2>/dev/null || { wait "$daemon"; exit $?; }
  if "$agent" status --json 2>/dev/null | python3 -c "$all_running"; then
    "$agent" status
    echo
    echo "Try: curl -i http://${public_ip:-<public_ip>}/health_check.php"
    break
  fi
  sleep 1
done
wait "$daemon"
