#!/usr/bin/env bash
# Installs the Debian packages batchgate needs to build, test and benchmark (idempotent).
set -euo pipefail
pkgs=(cmake ninja-build g++ libboost1.81-dev libyaml-cpp-dev nlohmann-json3-dev prometheus-cpp-dev
      libgtest-dev libssl-dev curl "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
