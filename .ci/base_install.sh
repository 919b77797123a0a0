#!/bin/sh
# CI: scripts/setup.sh with only tools that macOS and Linux both ship on PATH (no GNU-only
# sha256sum, readlink -f, realpath...) installs the base alone, from the lockfile, into a
# throwaway venv; from it the control plane runs with no torch, coremltools or pyarrow present:
# --help, submit, status, a coordinator that dispatches to a private Redis, the dashboard; and a
# command that needs an extra refuses in one line naming it. Then the same restricted set-up
# finds the full .venv already installed (the stamp).
set -eu
cd "$(dirname "$0")/.."
started=$(date +%s)

tmp=$(mktemp -d)
redis_pid=""
bg_pid=""
cleanup() {
  for pid in $bg_pid $redis_pid; do
    kill "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "base install: $*" >&2
  exit 1
}

# Tools a stock macOS and a stock Linux both have (BSD and GNU flavours alike), plus Python.
bin=$tmp/bin
mkdir "$bin"
for tool in sh env cat cut mkdir rm rmdir touch ls cp mv ln chmod grep sed awk head tail tr \
  sort uniq wc id uname dirname basename printf test expr date sleep true false find xargs tee; do
  found=$(command -v "$tool") || fail "$tool is not on this machine"
  case $found in /*) ln -s "$found" "$bin/$tool" ;; esac # shell builtins need no link
done
python=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
ln -s "$python" "$bin/python3"
for gnu in sha256sum shasum readlink realpath stat; do
  [ ! -e "$bin/$gnu" ] || fail "$gnu slipped onto the restricted PATH"
done

venv=$tmp/venv
PATH=$bin VENV=$venv EXTRAS="" "$bin/sh" scripts/setup.sh
installed=$(date +%s)
again=$(PATH=$bin VENV=$venv EXTRAS="" "$bin/sh" scripts/setup.sh 2>&1)
[ -z "$again" ] || fail "a second set-up was not a no-op: $again"
PATH=$bin "$bin/sh" scripts/setup.sh # the full .venv: already installed, nothing to do

"$venv/bin/python" - <<'EOF'
import importlib.util
import sys

heavy = ("torch", "diffusers", "transformers", "coremltools", "sklearn", "pyarrow", "numpy", "PIL")
present = [m for m in heavy if importlib.util.find_spec(m) is not None]
if present:
    sys.exit(f"base install: the base install holds {', '.join(present)}")
EOF
size=$(du -sk "$venv" | cut -f1)

export ORCHESTRATE_DB="$tmp/jobs.db" ORCHESTRATE_OUTPUT="$tmp/out"
orchestrate=$venv/bin/orchestrate
"$orchestrate" --help >/dev/null
"$orchestrate" submit jobs.example.csv
"$orchestrate" status >"$tmp/status.txt"
grep -q "jobs.example.csv" "$tmp/status.txt" || fail "status does not show the batch"

# A command that needs an extra: one line naming it, exit 2, nothing run.
code=0
"$orchestrate" run jobs.example.csv 2>"$tmp/run.err" || code=$?
[ "$code" = 2 ] || fail "run without torch exited $code, not 2: $(cat "$tmp/run.err")"
[ "$(wc -l <"$tmp/run.err")" -eq 1 ] || fail "run without torch said more than one line: $(cat "$tmp/run.err")"
grep -q "orchestrate-sd\[diffusers\]" "$tmp/run.err" || fail "run without torch: $(cat "$tmp/run.err")"
"$orchestrate" jobs list --status failed | grep -q failed && fail "run without torch failed jobs"

# Waits up to $2 seconds for the function $1 to succeed.
until_true() {
  tries=0
  until "$1"; do
    tries=$((tries + 1))
    [ "$tries" -lt "$(($2 * 5))" ] || fail "gave up after $2 s waiting for: $1"
    sleep 0.2
  done
}

# The coordinator against a private Redis: it takes the lease and dispatches jobs to RQ.
port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" >/dev/null &
redis_pid=$!
redis_up() { "$venv/bin/python" -c "import redis; redis.Redis(port=$port).ping()" 2>/dev/null; }
until_true redis_up 10
"$orchestrate" coordinator --redis "redis://127.0.0.1:$port/0" >"$tmp/coordinator.log" 2>&1 &
bg_pid=$!
dispatched() { "$orchestrate" jobs list --status queued | grep -q queued; }
until_true dispatched 60
kill -TERM "$bg_pid"
code=0
wait "$bg_pid" || code=$?
bg_pid=""
[ "$code" = 0 ] || fail "the coordinator exited $code on SIGTERM: $(cat "$tmp/coordinator.log")"
grep -q "holds the database" "$tmp/coordinator.log" || fail "no lease: $(cat "$tmp/coordinator.log")"

# The dashboard serves its page.
"$orchestrate" dashboard --port 0 >"$tmp/dashboard.log" 2>&1 &
bg_pid=$!
dashboard_up() { grep -q "dashboard on" "$tmp/dashboard.log"; }
until_true dashboard_up 30
url=$(sed -n 's/^dashboard on \([^ ]*\) .*/\1/p' "$tmp/dashboard.log")
"$venv/bin/python" -c '
import sys, urllib.request
page = urllib.request.urlopen(sys.argv[1], timeout=30).read().decode()
sys.exit(None if "jobs.example.csv" in page else "base install: the dashboard does not show the batch")
' "$url"

echo "base install: control plane ok without torch; set-up $((installed - started)) s," \
  "venv $((size / 1024)) MiB, whole check $(($(date +%s) - started)) s" >&2
