#!/bin/sh
# How this folder's host.json starts the handler: with the Python of the checkout's .venv (./scripts/demo
# makes it), for `func start` and the suite's stand-in for the host. The folder to deploy is
# dist/functionapp, which has its own host.json and Python. Published here by mistake, the upload has no
# .venv (.funcignore); the host then logs what follows as errors, quotes it at each exit, and stops after
# the third, instead of failing to find a .venv/bin/python nobody can see.
here=$(CDPATH='' cd -P -- "$(dirname -- "$0")" && pwd -P)
python="$here/.venv/bin/python"
if [ ! -x "$python" ]; then
    echo "tweets-monitor: $python is missing: this is the repository, whose host.json runs the checkout's" \
        ".venv (./scripts/demo makes it). To deploy, publish dist/functionapp, built by" \
        "./scripts/build-artifact (docs/deploy.md), not the repository." >&2
    exit 1
fi
exec "$python" -m handler "$@"
