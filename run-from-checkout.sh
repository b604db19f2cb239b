#!/bin/sh
# How this folder's host.json starts the handler, for `func start` and the suite's stand-in for the host:
# with the Python of the checkout's .venv (./scripts/demo makes it), else with a python3 on PATH that has
# the handler's packages (the project installed into a virtualenv of one's own). The folder to deploy is
# dist/functionapp, which has its own host.json and Python. Published here by mistake, the upload has no
# .venv (.funcignore) nor such a python3; the host then logs what follows as errors, quotes it at each exit,
# and stops after the third, instead of failing to find a .venv/bin/python nobody can see.
here=$(CDPATH='' cd -P -- "$(dirname -- "$0")" && pwd -P)
python="$here/.venv/bin/python"
if [ ! -x "$python" ]; then
    python=$(command -v python3 || true)
    if [ -z "$python" ] || ! (cd "$here" && "$python" -c 'import fastapi, redis, uvicorn, handler') 2>/dev/null; then
        echo "tweets-monitor: no $here/.venv/bin/python, and no python3 on PATH with the handler's" \
            "packages: this is the repository, whose host.json runs the checkout's .venv (./scripts/demo" \
            "makes it). To deploy, publish dist/functionapp, built by ./scripts/build-artifact" \
            "(docs/deploy.md), not the repository." >&2
        exit 1
    fi
fi
exec "$python" -m handler "$@"
