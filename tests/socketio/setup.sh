#!/usr/bin/env bash
# Installs what tests/socketio/run.sh needs besides the system tools and the harness's own
# packages (tests/apps/setup.sh): socket.io-client (npm, locked) and python-socketio
# (PyPI, pinned). Idempotent.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
(cd "$HERE" && npm ci --silent --no-audit --no-fund)
if ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("python-socketio") != "5.16.0")' 2>/dev/null; then
  python3 -m pip install --quiet 'python-socketio[client]==5.16.0' ||
    python3 -m pip install --quiet --break-system-packages 'python-socketio[client]==5.16.0'
fi
