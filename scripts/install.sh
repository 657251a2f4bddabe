#!/usr/bin/env bash
# Installs everything pycri needs on Debian 12 (run as root): system packages and a virtualenv in .venv.
# With --test it also installs what the test suite uses.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(python3 python3-venv runc crun conmon containernetworking-plugins iptables iproute2 util-linux)
test_packages=(busybox-static docker-registry skopeo umoci curl dbus-daemon apparmor criu)
extras=""
if [[ ${1:-} == --test ]]; then
  packages+=("${test_packages[@]}")
  extras="[test]"
fi

export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e ".${extras}"
