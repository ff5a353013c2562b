#!/usr/bin/env bash
# Installs the OHIF 3 viewer build (npm package @ohif/app, its prebuilt dist/) into a cache folder,
# where `pacsnode serve` finds it for /viewer and the OHIF browser test serves it.
# Usage: scripts/install-ohif.sh [FOLDER]   (default: $PACSNODE_OHIF_DIR, else
# ${XDG_CACHE_HOME:-~/.cache}/pacsnode/ohif-VERSION). Skips, exit 0, when the folder has it already;
# exits 0 with a message when npm or the npm registry cannot be reached (the viewer stays off).
set -euo pipefail
VERSION="3.13.2"   # keep equal to node/ui/viewer.py OHIF_VERSION
DEST="${1:-${PACSNODE_OHIF_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pacsnode/ohif-$VERSION}}"
if [ -f "$DEST/index.html" ] && [ -f "$DEST/.pacsnode-ohif-$VERSION" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "OHIF viewer not installed: npm is missing (Debian package npm); /viewer stays off" >&2
  exit 0
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "installing OHIF viewer @ohif/app@$VERSION into $DEST"
if ! (cd "$WORK" && timeout 600 npm pack --silent "@ohif/app@$VERSION" >/dev/null 2>"$WORK/npm.log"); then
  echo "OHIF viewer not installed: npm could not fetch @ohif/app@$VERSION ($(tail -1 "$WORK/npm.log")); /viewer stays off" >&2
  exit 0
fi
tar -xzf "$WORK"/ohif-app-"$VERSION".tgz -C "$WORK" package/dist
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp" && mv "$WORK/package/dist" "$DEST.tmp"
touch "$DEST.tmp/.pacsnode-ohif-$VERSION"
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
