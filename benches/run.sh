#!/usr/bin/env bash
# The one-command benchmark (issue 16): builds release, starts the real server on SQLite
# (its own temporary file) and on PostgreSQL (its own database, dropped after), runs the
# load generator's scenarios against each, measures the machine's own INSERT+COMMIT rate
# at the same concurrency and pg_test_fsync where present, and prints one table.
#
#   benches/run.sh            # a few minutes: every scenario once
#   benches/run.sh --quick    # under a minute: smaller counts, shorter windows
#   benches/run.sh --full     # every answer point 3 times (the table shows medians), 10 s windows
#
# Environment: BENCH_POSTGRES_URL (else DATABASE_TEST_URL, else
# postgres://postgres@127.0.0.1:5432/postgres) is the PostgreSQL server used to create the
# benchmark database; BENCH_BACKENDS=sqlite or postgres runs one store; CARGO_TARGET_DIR as
# cargo uses it. Every raw result is kept as JSON lines in the file named at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
MODE=default
case "${1:-}" in
  --quick) MODE=quick ;;
  --full) MODE=full ;;
  "") ;;
  *) echo "usage: $0 [--quick|--full]" >&2; exit 2 ;;
esac

# What each mode runs. Answer points use 1000 users; the scaling curve holds the total
# rate at SCALE_RATE and varies the number of users.
case $MODE in
  quick)
    IDLE=2000; CONNECTS=2000; CONNECT_RATE=2000; RATES="200 500"; USERS=200
    SCALE="10 100 1000"; SCALE_RATE=200; WINDOW=3; RUNS=1; COMMIT_SECS=2; FSYNC_SECS=1 ;;
  default)
    IDLE=19000; CONNECTS=5000; CONNECT_RATE=5000; RATES="500 1000 2000"; USERS=1000
    SCALE="10 100 1000 10000"; SCALE_RATE=500; WINDOW=5; RUNS=1; COMMIT_SECS=5; FSYNC_SECS=2 ;;
  full)
    IDLE=19000; CONNECTS=5000; CONNECT_RATE=5000; RATES="500 1000 2000"; USERS=1000
    SCALE="10 100 1000 10000"; SCALE_RATE=500; WINDOW=10; RUNS=3; COMMIT_SECS=5; FSYNC_SECS=2 ;;
esac
POOL=16 # the server's ASSESSD_DB_POOL, and the raw commit probe's concurrency
BACKENDS=${BENCH_BACKENDS:-"sqlite postgres"}
PG_ADMIN=${BENCH_POSTGRES_URL:-${DATABASE_TEST_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
SECRET="bench-secret-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export ASSESSD_JWT_SECRET=$SECRET

echo "building release ..." >&2
cargo build --release -q -p assessd -p assessd-load
BIN=${CARGO_TARGET_DIR:-target}/release
LOAD=$BIN/assessd-load

# One process may hold at most the hard limit of descriptors; the idle scenario needs
# 19,000 in the server and as many in the generator.
ulimit -n "$(ulimit -Hn)" || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/assessd-bench.XXXXXX")
RESULTS=$WORK/results.tsv
: > "$RESULTS"
# Other work on the machine shows in every figure: the table prints the load average.
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
SERVER_PID=""
PG_DB=""

cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ -n "$PG_DB" ]; then psql "$PG_ADMIN" -qAtc "drop database if exists $PG_DB with (force)" >/dev/null 2>&1 || true; fi
  # The databases go; the raw results stay.
  rm -f "$WORK"/*.db "$WORK"/*.db-wal "$WORK"/*.db-shm "$WORK"/fsync.out "$WORK"/.assessd-dev-secret
}
trap cleanup EXIT

# start_server DATABASE_URL: starts assessd on a free port, sets SERVER_PID and SERVER_URL.
start_server() {
  local log=$WORK/server.log
  # Rate limit raised: the scaling curve's 10 users each answer 50 times a second, over
  # the default budget of 20 messages/s per user. Idle timeout raised so held sockets stay.
  ASSESSD_BIND=127.0.0.1:0 DATABASE_URL="$1" ASSESSD_MAX_CONNECTIONS=19500 \
    ASSESSD_IDLE_TIMEOUT_SECS=600 ASSESSD_RATE_PER_SEC=1000 ASSESSD_RATE_BURST=1000 \
    ASSESSD_DB_POOL=$POOL RUST_LOG=warn "$BIN/assessd" serve > "$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    SERVER_URL=$(sed -n 's/^assessd listening on \(http:[^ ]*\)$/\1/p' "$log" | head -1)
    [ -n "$SERVER_URL" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log" >&2; echo "assessd did not start" >&2; exit 1; }
    sleep 0.1
  done
  echo "assessd did not start in 30 s" >&2; cat "$log" >&2; exit 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

# settle: waits (up to 60 s) until the server uses under 10% of a core, so work queued by
# one scenario (connects the generator gave up on, say) is not measured in the next.
settle() {
  local ticks=$(( $(getconf CLK_TCK 2>/dev/null || echo 100) / 10 ))
  for _ in $(seq 1 60); do
    local before after
    before=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat" 2>/dev/null || echo 0)
    sleep 1
    after=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat" 2>/dev/null || echo 0)
    [ $((after - before)) -lt "$ticks" ] && return 0
  done
  echo "  (the server was still busy after 60 s)" >&2
}

# record STORE LABEL JSON: one line of the results file.
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RESULTS"; }

# load STORE LABEL ARGS...: runs the generator against the running server.
load() {
  local store=$1 label=$2; shift 2
  settle
  echo "  $store $label: assessd-load $*" >&2
  local out
  if out=$("$LOAD" "$@" --server "$SERVER_URL" --server-pid "$SERVER_PID" --json); then
    record "$store" "$label" "$out"
  else
    echo "  $store $label failed" >&2
  fi
}

bench_store() {
  local store=$1 url=$2
  echo "$store:" >&2
  # The machine's own limit first, on a database of its own kind beside the server's.
  for c in 1 $POOL; do
    local probe_url=$url
    [ "$store" = sqlite ] && probe_url="sqlite://$WORK/commit-probe-$c.db"
    echo "  $store commit@$c: assessd-load commit --concurrency $c" >&2
    record "$store" "commit@$c" "$("$LOAD" commit --database-url "$probe_url" --concurrency "$c" --duration-secs "$COMMIT_SECS" --json)"
  done
  start_server "$url"
  load "$store" idle idle --users "$IDLE" --connect-rate "$CONNECT_RATE" --hold-secs 2
  load "$store" connect connect --users "$CONNECTS" --connect-rate "$CONNECT_RATE"
  for run in $(seq 1 "$RUNS"); do
    for rate in $RATES; do
      load "$store" "answer@$rate" answer --users "$USERS" --rate "$rate" --duration-secs "$WINDOW" --connect-rate 2000
    done
  done
  for users in $SCALE; do
    load "$store" "scale@$users" answer --users "$users" --rate "$SCALE_RATE" --duration-secs "$WINDOW" --connect-rate 2000 --timeout-secs 60
  done
  stop_server
}

for store in $BACKENDS; do
  case $store in
    sqlite)
      bench_store sqlite "sqlite://$WORK/assessd.db"
      ;;
    postgres)
      if ! psql "$PG_ADMIN" -qAtc "select 1" >/dev/null 2>&1; then
        echo "postgres: no server at $PG_ADMIN, skipped" >&2
        continue
      fi
      PG_DB="assessd_bench_load_$$"
      psql "$PG_ADMIN" -qAtc "create database $PG_DB" >/dev/null
      bench_store postgres "${PG_ADMIN%/*}/$PG_DB"
      record postgres settings "$(psql "${PG_ADMIN%/*}/$PG_DB" -qAt -c "select json_build_object('synchronous_commit', current_setting('synchronous_commit'), 'wal_sync_method', current_setting('wal_sync_method'), 'fsync', current_setting('fsync'), 'ssl', current_setting('ssl'), 'version', current_setting('server_version'))")"
      psql "$PG_ADMIN" -qAtc "drop database if exists $PG_DB with (force)" >/dev/null
      PG_DB=""
      ;;
    *) echo "unknown store $store" >&2; exit 2 ;;
  esac
done

# The disk's flush rate, on the filesystem of the temporary directory (PostgreSQL's data
# directory is on the same one on this machine; the table says where it ran).
FSYNC=""
for dir in /usr/lib/postgresql/*/bin; do [ -x "$dir/pg_test_fsync" ] && FSYNC=$dir/pg_test_fsync; done
FSYNC=${FSYNC:-$(command -v pg_test_fsync || true)}
if [ -n "$FSYNC" ]; then
  echo "pg_test_fsync -s $FSYNC_SECS ..." >&2
  ops=$("$FSYNC" -s "$FSYNC_SECS" -f "$WORK/fsync.out" 2>/dev/null |
    awk '/one 8kB write/ {one=1} one && $1 == "fdatasync" && !done {print $2; done=1}') || true
  [ -n "$ops" ] && record machine fsync "{\"fdatasync_ops_per_sec\": $ops, \"dir\": \"$WORK\"}"
fi

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
echo >&2
"$LOAD" table "$RESULTS" --mode "$MODE" --pool "$POOL"
echo "load average (1/5/15 min): $LOAD_START at the start, $LOAD_END at the end"
echo
echo "raw results (JSON lines): $RESULTS"
