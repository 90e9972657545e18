#!/usr/bin/env bash
# Here (where PyPI is reachable), once: build what docs/gpu/policy_compare.sh carries to a GPU host,
# small enough to travel in one device call (64 MiB with the working tree):
#   .device/pack/site.tar.xz  the offline SGLang 0.5.14 bundle installed for Python 3.12 into site/
#                             (install-sglang-offline.sh, run here with a Python 3.12: the same files
#                             and patches as on the host) and the Llama-3-8B-shaped model/ folder;
#                             xz of the installed tree is ~36 MB against ~56 MB of wheels
#   .device/pack/smg.tar.xz   smg (SGLang's model gateway, PyPI `smg`) installed into smg/, its Rust
#                             library stripped (debug info and symbol table; 107 -> 75 MB, ~21 MB as xz), plus
#                             setproctitle, the one dependency the host image lacks
# Usage: bash docs/gpu/pack_device.sh [BUNDLE_DIR] [OUT_DIR]
#   (defaults .device/sglang, .device/pack; env PY312: a Python 3.12, SMG_VERSION: default 1.13.0)
set -euo pipefail
bundle=${1:-.device/sglang}
out=${2:-.device/pack}
install=${INSTALL:-.device/install-sglang-offline.sh}
smg_version=${SMG_VERSION:-1.13.0}
py=
for c in ${PY312:-} python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3; do
  if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py=$(command -v "$c"); break; fi
done
[ -n "$py" ] || { echo "need a Python 3.12 (set PY312)" >&2; exit 1; }
[ -f "$install" ] || { echo "no $install (cp ../shared/gpu/install-sglang-offline.sh .device/)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin" "$out"
ln -s "$py" "$work/bin/python3"

# site/ and model/: the host's install script, run with Python 3.12 first on PATH.
PATH="$work/bin:$PATH" bash "$install" "$bundle" "$work/site" "$work/model"
# The router's own runtime dependencies that the SGLang bundle lacks (pyproject's dependencies).
"$py" -m pip install -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --target "$work/site" httptools uvloop prometheus_client tqdm
rm -rf "$work/site/bin"
tar -C "$work" -cf - site model | xz -T0 -9e > "$out/site.tar.xz"

# smg/: the wheel unpacked (pure Python + one abi3 library), library stripped; setproctitle beside it.
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$work/wheels" "smg==$smg_version"
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/smg" \
  "$work"/wheels/smg-*.whl "$bundle"/setproctitle-*.whl
strip "$work/smg/smg/smg_rs.abi3.so"
rm -rf "$work/smg/bin"
tar -C "$work" -cf - smg | xz -T0 -9e > "$out/smg.tar.xz"
ls -l "$out"
du -cb "$out"/*.tar.xz | tail -1
