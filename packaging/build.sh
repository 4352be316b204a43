#!/usr/bin/env bash
# One-folder desktop build: dist/atl-desktop/ holds the atl-desktop program, the CPU build of
# torch, Qt, the demo projects and the icons, and runs on a machine without Python.
# Usage: bash packaging/build.sh [--torch-wheel FILE]
#   --torch-wheel FILE  a CPU torch wheel to build with (default: one found in pip's
#                       find-links folders, else the CPU index of download.pytorch.org)
# Environment: PYTHON (default python3) makes the build environment build/package-venv.
# Ends by running the built program's --self-test; prints the folder's size.
set -euo pipefail
cd "$(dirname "$0")/.."

torch_wheel=""
while [ $# -gt 0 ]; do
  case $1 in
    --torch-wheel) torch_wheel=$2; shift 2 ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

venv=build/package-venv
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q)
pyver=$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')

if [ -z "$torch_wheel" ]; then
  for folder in ${PIP_FIND_LINKS:-} $("$venv/bin/python" -m pip config get global.find-links 2>/dev/null || true); do
    found=$(ls "$folder"/torch-*+cpu-"$pyver"-*linux*_x86_64.whl 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$found" ] && torch_wheel=$found
  done
fi

if [ -n "$torch_wheel" ]; then
  echo "torch: CPU wheel $torch_wheel"
  "${pip[@]}" "$torch_wheel"
  # torchvision M.N pairs with torch 2.(N-15); PyPI's wheel is built against CUDA torch, so its
  # C++ operators (detection only) stay unloaded and packaging/rthook_torchvision_cpu.py lets it
  # import. --no-deps: its pin on torch would otherwise pull the CUDA build.
  minor=$("$venv/bin/python" -c 'import torch; print(int(torch.__version__.split(".")[1]) + 15)')
  "${pip[@]}" --no-deps "torchvision==0.${minor}.*"
else
  echo "torch: CPU build from download.pytorch.org"
  "${pip[@]}" --index-url https://download.pytorch.org/whl/cpu torch torchvision
fi
# The app (not editable: the build takes the installed package) and PyInstaller.
"${pip[@]}" . "pyinstaller>=6.10"
if "$venv/bin/python" -c 'import nvidia' 2>/dev/null; then
  echo "build.sh: CUDA libraries got into the build environment; expected the CPU build only" >&2
  exit 1
fi

"$venv/bin/pyinstaller" --noconfirm --clean --log-level WARN --distpath dist \
  --workpath build/pyinstaller packaging/atl-desktop.spec
cp packaging/linux/atl-desktop.desktop packaging/linux/install-desktop-entry.sh dist/atl-desktop/

du -sh dist/atl-desktop
QT_QPA_PLATFORM=offscreen dist/atl-desktop/atl-desktop --self-test
