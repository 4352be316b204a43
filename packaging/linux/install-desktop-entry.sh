#!/usr/bin/env bash
# Add ATL Desktop to your desktop's application menu (for you only; no root needed).
# Run it from the unpacked atl-desktop folder, or give the folder: install-desktop-entry.sh [FOLDER]
set -euo pipefail
folder=$(realpath "${1:-$(dirname "$0")}")
[ -x "$folder/atl-desktop" ] || { echo "no atl-desktop program in $folder" >&2; exit 1; }
data=${XDG_DATA_HOME:-$HOME/.local/share}
icons="$folder/_internal/atl_desktop/resources/icons"
for size in 16 24 32 48 64 128 256 512; do
  mkdir -p "$data/icons/hicolor/${size}x${size}/apps"
  cp "$icons/atl-desktop-$size.png" "$data/icons/hicolor/${size}x${size}/apps/atl-desktop.png"
done
mkdir -p "$data/icons/hicolor/scalable/apps" "$data/applications"
cp "$icons/atl-desktop.svg" "$data/icons/hicolor/scalable/apps/atl-desktop.svg"
sed "s|^Exec=atl-desktop|Exec=\"$folder/atl-desktop\"|" "$folder/atl-desktop.desktop" \
  > "$data/applications/atl-desktop.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database "$data/applications" || true
echo "ATL Desktop is in your application menu (desktop entry: $data/applications/atl-desktop.desktop)"
