#!/usr/bin/env sh
# Makes (once) a Python virtual environment in $1 with the packages of requirements.txt.
# Used by tests/standard_clients.rs and by .ci/run; safe to run again.
set -eu
venv="$1"
here="$(cd "$(dirname "$0")" && pwd)"
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && cmp -s "$here/requirements.txt" "$stamp"; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
cp "$here/requirements.txt" "$stamp"
