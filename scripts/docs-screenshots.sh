#!/usr/bin/env bash
# Build the docs site, serve it on 127.0.0.1:8765 and screenshot pages with headless Chromium
# (Debian's chromium package: apt-get install -y chromium).
#
#   scripts/docs-screenshots.sh [OUT_DIR] [PAGE ...]
#
# OUT_DIR defaults to /tmp/docs-shots; PAGEs are site paths (default: the home page and the
# reference pages). Each becomes OUT_DIR/<page>.png, 1400 px wide, 1800 px tall, unless
# SHOT_HEIGHT says otherwise (a taller window shows more of a long page).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-/tmp/docs-shots}
shift || true
pages=("$@")
if [ ${#pages[@]} -eq 0 ]; then
  pages=("" reference/configuration/ reference/api/ reference/cli/ reference/errors/ reference/metrics/)
fi
port=${SHOT_PORT:-8765}
height=${SHOT_HEIGHT:-1800}

site=$(mktemp -d)
profile=$(mktemp -d)
if ! .venv/bin/mkdocs build --strict -q -d "$site" 2>"$profile/build.log"; then
  cat "$profile/build.log" >&2
  exit 1
fi
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$site" "$profile"' EXIT
for _ in $(seq 1 50); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
  sleep 0.1
done

mkdir -p "$out"
for page in "${pages[@]}"; do
  name=${page%/}
  name=${name//\//-}
  name=${name:-index}
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size="1400,$height" \
    --screenshot="$out/$name.png" "http://127.0.0.1:$port/$page" >/dev/null 2>&1
  echo "$out/$name.png"
done
