#!/bin/sh
# Create .venv and install the project, every extra and the dev tools, at the versions of
# requirements/constraints.txt. Safe to run again: it does nothing when pyproject.toml, the
# constraints and EXTRAS have not changed since the last successful install. Plain POSIX sh and
# tools every Mac and Linux box ships; Python 3.11 or newer is found on PATH.
#   --test   also install the system programs the test suite drives (Debian/Ubuntu, as root):
#            redis-server (tests start their own on free ports), Chromium + chromedriver
#            (the dashboard's browser test) and exiftool (reads the images' XMP marking back).
# Environment:
#   PYTHON=/path/to/python3.12   the interpreter to build the venv with [first 3.11+ on PATH]
#   VENV=DIR                     where to install [.venv]
#   EXTRAS=diffusers,parquet     which extras [all,dev]; EXTRAS= installs the control plane only
set -eu
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--test" ]; then
  need=""
  command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
  command -v chromium >/dev/null 2>&1 || need="$need chromium"
  command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
  command -v exiftool >/dev/null 2>&1 || need="$need libimage-exiftool-perl"
  if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq
      # shellcheck disable=SC2086  # one word per package
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
    else
      echo "the tests need:$need (e.g. sudo apt-get install$need)" >&2
      exit 1
    fi
  fi
fi

VENV=${VENV:-.venv}
EXTRAS=${EXTRAS-all,dev}
CONSTRAINTS=requirements/constraints.txt
NEW_ENOUGH='import sys; sys.exit(sys.version_info < (3, 11))'

if [ ! -x "$VENV/bin/python" ]; then
  if [ -n "${PYTHON:-}" ]; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
      echo "error: PYTHON=$PYTHON: no such program" >&2
      exit 1
    elif ! "$PYTHON" -c "$NEW_ENOUGH" 2>/dev/null; then
      echo "error: PYTHON=$PYTHON is not Python 3.11 or newer" >&2
      exit 1
    fi
    python=$PYTHON
  else
    python=""
    for candidate in python3.13 python3.12 python3.11 python3; do
      if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "$NEW_ENOUGH" 2>/dev/null; then
        python=$candidate
        break
      fi
    done
    if [ -z "$python" ]; then
      echo "error: no Python 3.11 or newer on PATH: install one (macOS: brew install python@3.12;" \
        "Linux: your distribution's python3.12; or python.org, or uv python install 3.12), then" \
        "run again (PYTHON=/path/to/python3.12 names one that is not on PATH)" >&2
      exit 1
    fi
  fi
  "$python" -m venv "$VENV"
fi
py=$VENV/bin/python
if ! "$py" -c "$NEW_ENOUGH"; then
  echo "error: $VENV holds Python $("$py" -c 'import platform; print(platform.python_version())'), older than 3.11: remove it and run again" >&2
  exit 1
fi

# The stamp names what was installed: these files and these extras (hashed by Python itself,
# which every platform has; sha256sum is GNU's and shasum is not on every Linux).
hash=$("$py" -c '
import hashlib, sys
h = hashlib.sha256(sys.argv[1].encode())
for name in sys.argv[2:]:
    with open(name, "rb") as f:
        h.update(f.read())
print(h.hexdigest()[:16])
' "$EXTRAS" pyproject.toml "$CONSTRAINTS")
stamp="$VENV/.installed-$hash"
if [ -f "$stamp" ]; then
  exit 0
fi
pip() { "$py" -m pip --quiet "$@"; }
pip install -c "$CONSTRAINTS" --upgrade pip
case ",$EXTRAS," in
  *,all,* | *,diffusers,* | *,coreml,*)
    # torch first, pinned: an unpinned torch (or one pulled in by diffusers) is a multi-GB CUDA build.
    pip install -c "$CONSTRAINTS" "torch==2.13.0"
    ;;
esac
if [ -n "$EXTRAS" ]; then
  pip install -c "$CONSTRAINTS" -e ".[$EXTRAS]"
else
  pip install -c "$CONSTRAINTS" -e .
fi
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "installed into $VENV${EXTRAS:+ (extras: $EXTRAS)}" >&2
