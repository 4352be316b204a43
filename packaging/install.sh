#!/usr/bin/env bash
# Install ATL Desktop from this checkout into ./.venv, with the system libraries Qt needs.
# Usage: bash packaging/install.sh [--dev]
#   --dev  also install the test and lint tools (pytest, pytest-qt, ruff, import-linter, ...)
# Whole-slide reading (the `slides` extra: tiffslide, tifffile, imagecodecs) and ONNX export
# (the `onnx` extra) are always installed.
set -euo pipefail
cd "$(dirname "$0")/.."

extra="[slides,onnx]"
[ "${1:-}" = "--dev" ] && extra="[dev,slides,openslide,onnx]"  # tests cover the OpenSlide reader too

# Qt's shared libraries: offscreen needs the first group, a real window on X11 the xcb ones.
qt_libs=(
  "libEGL.so.1:libegl1" "libGL.so.1:libgl1" "libOpenGL.so.0:libopengl0"
  "libxkbcommon.so.0:libxkbcommon0" "libfontconfig.so.1:libfontconfig1"
  "libdbus-1.so.3:libdbus-1-3" "libglib-2.0.so.0:libglib2.0-0"
  "libxkbcommon-x11.so.0:libxkbcommon-x11-0" "libxcb-cursor.so.0:libxcb-cursor0"
  "libxcb-icccm.so.4:libxcb-icccm4" "libxcb-keysyms.so.1:libxcb-keysyms1"
  "libxcb-image.so.0:libxcb-image0" "libxcb-render-util.so.0:libxcb-render-util0"
  "libxcb-shape.so.0:libxcb-shape0" "libxcb-randr.so.0:libxcb-randr0"
  "libxcb-xkb.so.1:libxcb-xkb1"
)
# The cache is read once: `ldconfig -p | grep -q` under pipefail reports a present library
# missing whenever grep exits early and ldconfig dies of SIGPIPE.
cache=$(ldconfig -p 2>/dev/null || true)
missing=()
for entry in "${qt_libs[@]}"; do
  [[ $cache == *"${entry%%:*}"* ]] || missing+=("${entry##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "Installing Qt's system libraries: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-dejavu-core >/dev/null
  else
    echo "Warning: Qt may need these system libraries: ${missing[*]}" >&2
  fi
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision unpinned, together, so pip picks a matching pair.
.venv/bin/python -m pip install -q -e ".${extra}"
echo "Installed into $(pwd)/.venv"
