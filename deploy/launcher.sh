#!/bin/sh
# Starts the handler with the Python and C library bundled beside this script (deploy/build_artifact.py).
# host.json has the image's /bin/sh run it, so no exec bit in this folder is needed: a package published
# from Windows, unpacked from a zip or mounted from squashfs without its modes still starts.
# This script's own folder, followed through any links to it (a link on PATH, relative, or to a link).
self="$0"
while [ -L "$self" ]; do
    target=$(readlink "$self")
    case "$target" in
        /*) self="$target" ;;
        *) self="$(dirname "$self")/$target" ;;
    esac
done
here=$(CDPATH= cd -P -- "$(dirname -- "$self")" && pwd -P)
runtime="$here/runtime"
python="$runtime/bin/@PYTHON@"
loader="$runtime/lib/@LOADER@"
export PYTHONHOME="$runtime" PYTHONPATH="$here/app" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
# `run` reads monitor/function.json from the app root: this folder, unless the Functions host names one.
export TWEETS_MONITOR_APP_ROOT="$here"
# TLS: the image's CA bundle (kept current by the platform), else the one certifi ships in app/.
if [ -z "${SSL_CERT_FILE:-}" ]; then
    for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt \
            "$here/app/certifi/cacert.pem"; do
        if [ -f "$bundle" ]; then export SSL_CERT_FILE="$bundle"; break; fi
    done
fi
# The loader is the one file the kernel is asked to execute; the interpreter and the libraries are only
# read and mapped by it. When it cannot run here (no exec bit, or a noexec mount), a private copy runs
# instead, from the first of $TMPDIR, /tmp, /dev/shm and $HOME where a copy can run. Copies this user left
# in a local folder more than a minute ago go first (a running process keeps the file it started from);
# none are removed from $HOME, which instances may share.
runs() { "$1" --version >/dev/null 2>&1; }
if ! runs "$loader"; then
    bundled="$loader"
    loader=
    for dir in "${TMPDIR:-/tmp}" /tmp /dev/shm "${HOME:-}"; do
        [ -n "$dir" ] && [ -d "$dir" ] && [ -w "$dir" ] || continue
        if [ "$dir" != "${HOME:-}" ]; then
            find "$dir" -maxdepth 1 -name '@LOADER_COPIES@*' -user "$(id -u)" -mmin +1 \
                -exec rm -rf {} + 2>/dev/null
        fi
        folder=$(mktemp -d "$dir/@LOADER_COPIES@XXXXXXXX" 2>/dev/null) || continue
        copy="$folder/@LOADER@"
        if cp "$bundled" "$copy" 2>/dev/null && chmod 700 "$copy" && runs "$copy"; then
            loader="$copy"
            break
        fi
        rm -rf "$folder"
    done
    if [ -z "$loader" ]; then
        echo "tweets-monitor: cannot execute $bundled (no exec bit, or a noexec mount), nor a copy of it:" \
            "no writable folder among \$TMPDIR, /tmp, /dev/shm and \$HOME allows executing (noexec)" >&2
        exit 126
    fi
    if ! problem=$("$loader" --library-path "$runtime/lib" --list "$python" 2>&1 >/dev/null); then
        rm -rf "${loader%/*}"
        echo "tweets-monitor: a copy of the loader runs, but the bundled Python does not load from $here" \
            "(is it a noexec mount? the kernel maps no code from one): $problem" >&2
        exit 126
    fi
    echo "tweets-monitor: $bundled cannot be executed in place (exec bits lost); running a copy, $loader" >&2
fi
# -P (safe path): `-m` would put the working directory first on the import path, so a handler/ or a
# redis.py there would replace the bundled code; only app/ and the standard library are searched.
exec "$loader" --library-path "$runtime/lib" "$python" -P -m handler "$@"
