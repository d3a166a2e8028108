# Sourced by scripts/demo and scripts/test: make .venv and install bcfl into it.
# Needs nothing but python3 >= 3.11 on PATH. Re-running is cheap: pip skips
# what is already installed, and the stamp file skips pip when pyproject.toml
# has not changed.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
python_bin="${PYTHON:-python3}"
"$python_bin" - <<'PY' || { echo "bcfl needs Python >= 3.11 (found $("$python_bin" --version 2>&1))" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$python_bin" -m venv .venv
fi
extras="${BCFL_EXTRAS:-test}"
stamp=".venv/.bcfl-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "==> installing bcfl[$extras] into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]" 2>&1 \
        | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import node, consensus, fl" 
    touch "$stamp"
fi
export PATH="$repo_root/.venv/bin:$PATH"
