#!/usr/bin/env bash
# Installs what webshard's tests need on a fresh Debian 12 machine, as root:
# Mesa lavapipe (software Vulkan, 25.x from bookworm-backports: bookworm's 22.3 is too old for Dawn),
# the Vulkan loader, Debian's Chromium for the browser tests, then the npm packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive
if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list
fi
need_apt=0
dpkg -s libvulkan1 >/dev/null 2>&1 || need_apt=1
dpkg -s chromium >/dev/null 2>&1 || need_apt=1
mesa=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
case "$mesa" in 25.*|26.*) ;; *) need_apt=1 ;; esac
if [ "$need_apt" = 1 ]; then
  apt-get update -qq
  apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers >/dev/null
  apt-get install -y -qq libvulkan1 chromium xz-utils >/dev/null
fi
npm ci --no-audit --no-fund --loglevel=error
