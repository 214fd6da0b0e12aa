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
  echo "Installing chatapp[$extras] into $VENV (first run, or setup.py changed)..." >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip 2>/dev/null
  # pip talks a lot on stderr; keep it in a log, show it only when the install fails.
  if ! "$VENV/bin/python" -m pip install --quiet -e ".[$extras]" 2>"$VENV/pip.log"; then
    cat "$VENV/pip.log" >&2; exit 1
  fi
  touch "$stamp"
fi
