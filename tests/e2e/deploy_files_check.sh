#!/usr/bin/env bash
# ctest deploy_files_check: static checks of everything under deploy/.
#   usage: deploy_files_check.sh BATCHGATE_BINARY SOURCE_DIR
# Needs python3 with PyYAML (Debian: python3-yaml) and promtool (Debian: prometheus).
set -euo pipefail
bin=${1:?usage: $0 BATCHGATE_BINARY SOURCE_DIR}
src=$(cd "${2:?usage: $0 BATCHGATE_BINARY SOURCE_DIR}" && pwd)
# Debian's python3 has python3-yaml; a python3 earlier on PATH (pyenv, venv) may not.
py=/usr/bin/python3
[[ -x $py ]] && "$py" -c 'import yaml' 2>/dev/null || py=python3
command -v promtool >/dev/null || { echo "FAIL promtool not found (apt-get install prometheus)"; exit 1; }

rc=0
echo "== promtool check rules deploy/prometheus/rules.yaml"
promtool check rules "$src/deploy/prometheus/rules.yaml" || { echo "FAIL promtool check rules"; rc=1; }
echo "== promtool test rules deploy/prometheus/rules_test.yaml"
promtool test rules "$src/deploy/prometheus/rules_test.yaml" || { echo "FAIL promtool test rules"; rc=1; }
echo "== promtool check config deploy/prometheus.yml (rule_files resolved against deploy/prometheus/)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/rules"
cp "$src/deploy/prometheus/rules.yaml" "$tmp/rules/batchgate.yaml"
sed "s#/etc/prometheus/rules/#$tmp/rules/#" "$src/deploy/prometheus.yml" >"$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml" || { echo "FAIL promtool check config"; rc=1; }
echo "== deploy_files_check.py"
"$py" "$src/tests/e2e/deploy_files_check.py" "$bin" "$src" || rc=1
exit $rc
