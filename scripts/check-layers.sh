#!/usr/bin/env bash
# Checks the source layering (README: Source layout): a file may include files of its own folder
# and of the folders below it in the order here, never of one above. A core/ subfolder (the pure
# logic of batchgate_core) also includes nothing of its parent folder outside core/.
#
#   scripts/check-layers.sh [REPO_DIR]      exit 1 and one line per upward include when it fails
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"

# Lowest first. Read backwards it is the way a request goes: gateway/ takes it, routes/ matches
# its route, fanout/ or coalescer/ serves it, net/ calls the upstream; config/, metrics/ and
# text/ serve them all.
layers=(text metrics config net coalescer fanout routes gateway)

declare -A rank
for i in "${!layers[@]}"; do rank[${layers[$i]}]=$i; done
bad=0

# Every top-level folder with C++ sources must have a place in the order.
for d in $(find . -mindepth 2 -maxdepth 2 \( -name '*.cpp' -o -name '*.hpp' \) -printf '%h\n' | sort -u); do
  d=${d#./}
  case $d in tests | bench | build*) continue ;; esac
  if [[ -z ${rank[$d]+x} ]]; then
    echo "$d/: not in the layer order of $0"
    bad=1
  fi
done

for dir in "${layers[@]}"; do
  while IFS=: read -r file line text; do
    inc=${text#*\"}
    inc=${inc%%\"*}
    [[ $inc == */* ]] || continue  # a file next to the includer
    target=${inc%%/*}
    if [[ -z ${rank[$target]+x} ]]; then
      echo "$file:$line: includes $inc: $target/ is not in the layer order"
      bad=1
    elif ((rank[$target] > rank[$dir])); then
      echo "$file:$line: includes $inc: $target/ is above $dir/"
      bad=1
    elif [[ $file == $dir/core/* && $target == "$dir" && $inc != $dir/core/* ]]; then
      echo "$file:$line: includes $inc: $dir/core/ is the pure logic and must not use the rest of $dir/"
      bad=1
    fi
  done < <(grep -rn --include='*.cpp' --include='*.hpp' -E '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$dir" || true)
done

if ((bad)); then
  echo "layering broken; the order, lowest first: ${layers[*]}"
  exit 1
fi
echo "layering ok: ${layers[*]}"
