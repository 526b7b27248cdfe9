#!/usr/bin/env bash
# Project-local PostgreSQL for development and tests.
#
#   scripts/dev-postgres.sh [start]   ensure it runs; print its DATABASE_URL on stdout
#   scripts/dev-postgres.sh stop      stop it (no-op when it is not running)
#   scripts/dev-postgres.sh status    say whether it runs (exit 0) or not (exit 3)
#   scripts/dev-postgres.sh destroy   stop it and delete its data directory
#
# stdout carries only the URL, so `export DATABASE_URL="$(scripts/dev-postgres.sh)"`
# works; every diagnostic goes to stderr.
#
# If DATABASE_URL is already set, `start` prints it and does nothing else.
#
# The cluster never touches the system one (the Debian `main` cluster on 5432):
# its own data directory, its own port (TA_PG_PORT, default 54329), listening on
# 127.0.0.1 only, its unix socket inside its data directory, trust auth (it is a
# throwaway dev cluster reachable only from this machine), fsync off.
#
# Data directory: <repo>/.data/postgres. initdb refuses to run as root, so as root
# the server runs as the `postgres` user; if that user cannot reach <repo>/.data
# (a clone under /root, say) the data directory falls back to
# /tmp/trade-assurance-pg-<hash of the repo path>.
#
# Environment:
#   TA_PG_PORT   port to listen on (default 54329). A new cluster takes it, or,
#                when it is not set and 54329 is taken by something else (another
#                clone's cluster), the next free port up to 54349. The port is
#                recorded with the cluster and kept on every later start, so
#                services started against it keep finding it; if it is taken
#                by then, start fails and says so (it never moves silently).
#                Setting TA_PG_PORT to another port moves the cluster there.
#   TA_PG_DB     database to create and print (default trade_assurance)
#   TA_PG_DATA_DIR  data directory of a separate cluster (tests that stop and
#                start their own Postgres); default as below
set -euo pipefail

log() { printf 'dev-postgres: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DEFAULT_PORT=54329
REQUESTED_PORT="${TA_PG_PORT:-}"
DB_NAME="${TA_PG_DB:-trade_assurance}"
ACTION="${1:-start}"

IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1

REPO_DATA_DIR="$REPO_ROOT/.data/postgres"
REPO_HASH="$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-12)"
TMP_DATA_DIR="/tmp/trade-assurance-pg-$REPO_HASH/data"
LOCK_DIR="$REPO_ROOT/.data"
if [[ -n ${TA_PG_DATA_DIR:-} ]]; then
  # A cluster of its own, e.g. for a test: treated like the /tmp fallback
  # (its parent is created private to the cluster's owner).
  [[ $TA_PG_DATA_DIR == /* ]] || { printf 'dev-postgres: error: TA_PG_DATA_DIR must be absolute\n' >&2; exit 1; }
  REPO_DATA_DIR="$TA_PG_DATA_DIR"
  TMP_DATA_DIR="$TA_PG_DATA_DIR"
  REPO_HASH="$(printf '%s' "$TA_PG_DATA_DIR" | sha256sum | cut -c1-12)"
  LOCK_DIR="$(dirname "$TA_PG_DATA_DIR")"
fi

# Never let the caller's libpq settings redirect our client calls elsewhere.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGSERVICE PGSERVICEFILE PGOPTIONS \
  PGPASSFILE PGSSLMODE PGTARGETSESSIONATTRS 2>/dev/null || true
export PGCONNECT_TIMEOUT=5

# --- helpers -----------------------------------------------------------------

# Run a server-side command as the user owning the cluster: `postgres` when we are
# root (initdb/postgres refuse root), ourselves otherwise. cd / so the postgres
# user is not left in a directory it cannot read (e.g. /root).
as_owner() {
  if ((IS_ROOT)); then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

sudo_if_needed() {
  if ((IS_ROOT)); then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run: $* (no sudo available); install PostgreSQL's server package yourself"
  fi
}

# Echo a directory holding initdb, pg_ctl, postgres, psql, pg_isready.
# $1 (optional): major version wanted (an existing cluster's PG_VERSION).
find_bindir() {
  local want="${1:-}" d
  local -a candidates=()
  if [[ -n $want ]]; then
    candidates+=("/usr/lib/postgresql/$want/bin")
  fi
  if command -v pg_config >/dev/null 2>&1; then
    d="$(pg_config --bindir 2>/dev/null || true)"
    [[ -n $d ]] && candidates+=("$d")
  fi
  # Newest first.
  while IFS= read -r d; do
    candidates+=("$d")
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -V -r)
  for d in "${candidates[@]}"; do
    [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres && -x $d/psql ]] || continue
    if [[ -n $want ]]; then
      local v
      v="$("$d/postgres" --version 2>/dev/null | sed -E 's/^[^0-9]*([0-9]+).*/\1/')"
      [[ $v == "$want" ]] || continue
    fi
    printf '%s\n' "$d"
    return 0
  done
  return 1
}

install_postgres() {
  command -v apt-get >/dev/null 2>&1 || die "no PostgreSQL server binaries found and no apt-get to install them"
  log "PostgreSQL server binaries not found: installing Debian package 'postgresql' (a minute or so)"
  # Its post-install may create and start the system 'main' cluster; we do not use it.
  sudo_if_needed apt-get update -qq >&2
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
}

# Can the `postgres` user reach (search) directory $1?
postgres_can_traverse() {
  (cd / && runuser -u postgres -- test -x "$1" -a -r "$1") 2>/dev/null
}

# Echo the data directory to use (creating its parent as needed).
choose_data_dir() {
  if ((!IS_ROOT)); then
    printf '%s\n' "$REPO_DATA_DIR"
    return
  fi
  # An existing cluster wins, wherever it is.
  if [[ -f $REPO_DATA_DIR/PG_VERSION ]]; then
    printf '%s\n' "$REPO_DATA_DIR"
    return
  fi
  if [[ -f $TMP_DATA_DIR/PG_VERSION ]]; then
    printf '%s\n' "$TMP_DATA_DIR"
    return
  fi
  if [[ -n ${TA_PG_DATA_DIR:-} ]]; then
    printf '%s\n' "$TA_PG_DATA_DIR"
    return
  fi
  mkdir -p "$REPO_ROOT/.data"
  chmod 0755 "$REPO_ROOT/.data" 2>/dev/null || true
  if postgres_can_traverse "$REPO_ROOT/.data"; then
    printf '%s\n' "$REPO_DATA_DIR"
  else
    log "user 'postgres' cannot reach $REPO_ROOT/.data; using $TMP_DATA_DIR instead"
    printf '%s\n' "$TMP_DATA_DIR"
  fi
}

# The data directory of an existing cluster (for stop/status/destroy), or empty.
existing_data_dir() {
  local d
  for d in "$REPO_DATA_DIR" "$TMP_DATA_DIR"; do
    if [[ -f $d/PG_VERSION ]]; then
      printf '%s\n' "$d"
      return
    fi
  done
}

is_running() { # $1 bindir, $2 datadir
  as_owner "$1/pg_ctl" -D "$2" status >/dev/null 2>&1
}

# Port the running cluster listens on (4th line of postmaster.pid).
running_port() {
  sed -n 4p "$1/postmaster.pid" 2>/dev/null | tr -d '[:space:]'
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The port recorded with the cluster in $1 (empty for a new one).
recorded_port() {
  cat "$1/trade-assurance-port" 2>/dev/null | tr -d '[:space:]'
}

record_port() { # $1 datadir, $2 port
  printf '%s\n' "$2" >"$1/trade-assurance-port"
}

# The port to start the cluster in $1 on: TA_PG_PORT if set, else the one it
# always had, else a free one.
start_port() {
  local recorded
  recorded="$(recorded_port "$1")"
  if [[ -n $recorded && -z $REQUESTED_PORT ]]; then
    port_in_use "$recorded" && die "port $recorded, where this cluster ($1) listens, is in use by another process; \
free it, or move the cluster with TA_PG_PORT=<port> (then restart anything started against it), or make clean-data"
    printf '%s\n' "$recorded"
    return
  fi
  if [[ -n $recorded && $REQUESTED_PORT != "$recorded" ]]; then
    log "moving the cluster from port $recorded to TA_PG_PORT=$REQUESTED_PORT"
  fi
  pick_port
}

free_port_from() { # $1 the first port to try; the first free one up to the range's end
  local p
  for ((p = $1; p <= DEFAULT_PORT + 20; p++)); do
    if ! port_in_use "$p"; then
      printf '%s\n' "$p"
      return
    fi
  done
  die "no free port in $1..$((DEFAULT_PORT + 20)); set TA_PG_PORT"
}

pick_port() {
  if [[ -n $REQUESTED_PORT ]]; then
    [[ $REQUESTED_PORT =~ ^[0-9]+$ ]] || die "TA_PG_PORT must be a port number, got '$REQUESTED_PORT'"
    port_in_use "$REQUESTED_PORT" && die "port $REQUESTED_PORT (TA_PG_PORT) on 127.0.0.1 is already in use by another process"
    printf '%s\n' "$REQUESTED_PORT"
    return
  fi
  local p
  p="$(free_port_from "$DEFAULT_PORT")"
  ((p != DEFAULT_PORT)) && log "port $DEFAULT_PORT is in use by another process; using $p"
  printf '%s\n' "$p"
}

init_cluster() { # $1 bindir, $2 datadir
  local bindir=$1 dd=$2 parent
  parent="$(dirname "$dd")"
  if ((IS_ROOT)); then
    id -u postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user (Debian's postgresql package creates it)"
    if [[ $dd == "$TMP_DATA_DIR" ]]; then
      # Our own private parent in /tmp; refuse one someone else planted.
      if [[ -e $parent ]]; then
        [[ -d $parent && ! -L $parent && $(stat -c %U "$parent") == postgres ]] ||
          die "$parent exists but is not a directory owned by postgres; remove it"
      else
        install -d -o postgres -g postgres -m 0700 "$parent"
      fi
    else
      mkdir -p "$parent"
    fi
    if [[ ! -d $dd ]]; then
      install -d -o postgres -g postgres -m 0700 "$dd"
    fi
    chown postgres:postgres "$dd"
  else
    mkdir -p "$dd"
  fi
  chmod 0700 "$dd"

  log "initdb $dd"
  local out
  if ! out="$(as_owner "$bindir/initdb" -D "$dd" -U postgres --auth=trust \
    --encoding=UTF8 --locale=C --no-sync 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "initdb failed"
  fi

  # Socket inside the data dir, unless that path is too long for a unix socket
  # (108 bytes): then no unix socket at all; every client uses TCP anyway.
  local sockdir=$dd
  if ((${#dd} + 20 > 100)); then
    log "data dir path too long for a unix socket inside it; unix sockets disabled"
    sockdir=""
  fi
  as_owner tee -a "$dd/postgresql.conf" >/dev/null <<EOF

# --- trade-assurance dev cluster (scripts/dev-postgres.sh) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sockdir'
# Throwaway data: durability off for speed.
fsync = off
synchronous_commit = off
full_page_writes = off
# Tests create a database per test and four services each keep a pool.
max_connections = 300
shared_buffers = 128MB
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
EOF
}

start_cluster() { # $1 bindir, $2 datadir, $3 port; returns 2 when the port was taken
  local bindir=$1 dd=$2 port=$3
  log "starting PostgreSQL on 127.0.0.1:$port (data: $dd)"
  # 9>&-: the server must not inherit (and so hold forever) our lock.
  local out log_start
  log_start=1
  [[ -f $dd/server.log ]] && log_start=$(($(wc -l <"$dd/server.log") + 1))
  if ! out="$(as_owner "$bindir/pg_ctl" -D "$dd" -l "$dd/server.log" -w -t 60 \
    -o "-p $port" start 2>&1 9>&-)"; then
    if tail -n "+$log_start" "$dd/server.log" 2>/dev/null | grep -q 'could not bind'; then
      return 2
    fi
    printf '%s\n' "$out" >&2
    log "pg_ctl start failed; last lines of $dd/server.log:"
    tail -n 20 "$dd/server.log" >&2 2>/dev/null || true
    exit 1
  fi
}

psql_q() { # $1 bindir, $2 port, rest: psql args
  local bindir=$1 port=$2
  shift 2
  "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"
}

ensure_database() { # $1 bindir, $2 port
  local bindir=$1 port=$2 exists
  [[ $DB_NAME =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "TA_PG_DB must be a plain identifier, got '$DB_NAME'"
  exists="$(psql_q "$bindir" "$port" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")"
  if [[ $exists != 1 ]]; then
    log "creating database $DB_NAME"
    psql_q "$bindir" "$port" -d postgres -c "CREATE DATABASE \"$DB_NAME\""
  fi
}

lock() { # serialise concurrent invocations (make test in two terminals, say)
  local lockfile
  if ((IS_ROOT)); then
    lockfile="/tmp/trade-assurance-pg-$REPO_HASH.lock"
  else
    mkdir -p "$LOCK_DIR"
    lockfile="$LOCK_DIR/postgres.lock"
  fi
  exec 9>>"$lockfile"
  if command -v flock >/dev/null 2>&1; then
    flock -w 120 9 || die "timed out waiting for $lockfile"
  fi
}

# --- actions -------------------------------------------------------------------

cmd_start() {
  if [[ -n ${DATABASE_URL:-} ]]; then
    printf '%s\n' "$DATABASE_URL"
    return
  fi
  lock

  local dd bindir port version=""
  dd="$(choose_data_dir)"
  [[ -f $dd/PG_VERSION ]] && version="$(<"$dd/PG_VERSION")"

  if ! bindir="$(find_bindir "$version")"; then
    if [[ -n $version ]] && find_bindir >/dev/null; then
      die "$dd was made by PostgreSQL $version, whose server binaries are not installed; remove it (make clean-data)"
    fi
    install_postgres
    bindir="$(find_bindir "$version")" || die "PostgreSQL server binaries still not found after installing"
  fi

  if [[ -z $version ]]; then
    init_cluster "$bindir" "$dd"
  fi

  if is_running "$bindir" "$dd"; then
    port="$(running_port "$dd")"
    [[ -n $port ]] || die "cluster in $dd runs but its postmaster.pid names no port"
    if [[ -n $REQUESTED_PORT && $REQUESTED_PORT != "$port" ]]; then
      log "warning: the cluster already runs on port $port, not TA_PG_PORT=$REQUESTED_PORT; run '$0 stop' to move it"
    fi
    [[ -n $(recorded_port "$dd") ]] || record_port "$dd" "$port"
  else
    port="$(start_port "$dd")"
    local tries=0 started
    while :; do
      started=0
      start_cluster "$bindir" "$dd" "$port" || started=$?
      ((started == 0)) && break
      # Another process (a test's own cluster, another checkout) bound the
      # port between the check and the start: a port this script picked
      # itself moves on; a recorded or requested one is reported.
      if [[ -n $REQUESTED_PORT || -n $(recorded_port "$dd") ]] || ((++tries > 5)); then
        die "port $port on 127.0.0.1 was taken by another process while the cluster started"
      fi
      log "port $port was taken while the cluster started; picking another"
      port="$(free_port_from $((port + 1)))"
    done
    record_port "$dd" "$port"
  fi

  ensure_database "$bindir" "$port"
  printf 'postgres://postgres@127.0.0.1:%s/%s\n' "$port" "$DB_NAME"
}

cmd_stop() {
  lock
  local dd bindir
  dd="$(existing_data_dir)"
  if [[ -z $dd ]]; then
    log "no dev cluster (no data directory)"
    return 0
  fi
  bindir="$(find_bindir "$(<"$dd/PG_VERSION")")" || die "no PostgreSQL $(<"$dd/PG_VERSION") binaries to stop $dd with"
  if is_running "$bindir" "$dd"; then
    log "stopping PostgreSQL in $dd"
    as_owner "$bindir/pg_ctl" -D "$dd" -m fast -w -t 60 stop >/dev/null
  else
    log "not running ($dd)"
  fi
}

cmd_status() {
  local dd bindir
  dd="$(existing_data_dir)"
  if [[ -z $dd ]]; then
    log "no dev cluster (no data directory)"
    return 3
  fi
  bindir="$(find_bindir "$(<"$dd/PG_VERSION")")" || die "no PostgreSQL $(<"$dd/PG_VERSION") binaries"
  if is_running "$bindir" "$dd"; then
    log "running on 127.0.0.1:$(running_port "$dd") (data: $dd)"
    return 0
  fi
  log "stopped (data: $dd)"
  return 3
}

cmd_destroy() {
  cmd_stop
  local d
  local -a doomed=("$REPO_DATA_DIR" "$(dirname "$TMP_DATA_DIR")")
  # A cluster of its own: only its data directory, never what holds it.
  [[ -n ${TA_PG_DATA_DIR:-} ]] && doomed=("$TA_PG_DATA_DIR")
  for d in "${doomed[@]}"; do
    if [[ -e $d ]]; then
      log "removing $d"
      rm -rf -- "$d"
    fi
  done
  rm -f -- "/tmp/trade-assurance-pg-$REPO_HASH.lock" "$LOCK_DIR/postgres.lock"
}

case "$ACTION" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
destroy) cmd_destroy ;;
-h | --help | help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//' >&2 ;;
*) die "unknown action '$ACTION' (start|stop|status|destroy)" ;;
esac
