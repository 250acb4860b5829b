#!/usr/bin/env bash
# Installs what the agent and its tests need on a fresh Debian machine (run as root).
set -euo pipefail

packages=(busybox-static iproute2 util-linux procps crun nftables systemd man-db mmdebstrap debootstrap btrfs-progs python3 openssh-client gcc libc6-dev iputils-arping git)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
