# Sourced by scripts/run and scripts/test: a project virtualenv with chatapp installed.
# Re-installs only when setup.py changed since the last install, so repeat runs start at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${CHATAPP_VENV:-.venv}
PYTHON=${PYTHON:-python3}
extras=$1
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.chatapp-installed-$extras"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[$extras]"
  touch "$stamp"
fi
