# Shared by the scripts: a virtualenv in .venv with the project, installed at the exact pins (and hashes) of
# requirements/dev.lock, or requirements/app.lock when the argument is empty (what the deployed app carries),
# with pip and setuptools at requirements/installer.lock's. Needs only Python 3.11+ and the package
# registries. ./scripts/lock writes the lock files.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "tweets-monitor needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
lock=requirements/dev.lock
if [ -z "${1:-}" ]; then
    lock=requirements/app.lock
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# First pip itself and setuptools (the build backend), at requirements/installer.lock's pins.
"${pip[@]}" --require-hashes --only-binary=:all: -r requirements/installer.lock
"${pip[@]}" --require-hashes --only-binary=:all: -r "$lock"
# Built with that setuptools, not with whichever one an isolated build would fetch.
"${pip[@]}" --no-deps --no-build-isolation -e .
