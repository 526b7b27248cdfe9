#!/usr/bin/env bash
# Run the four services locally, in the foreground, until Ctrl-C or SIGTERM.
# Normally started by `make run`, which builds them and provides DATABASE_URL.
#
# Starts the sandbox payment gateway (payment-gateway-sandbox, HTTP), then
# supplier-registry, escrow, contract and dispute from $BIN_DIR, waits until the
# gateway answers GET /healthz and each service answers grpc.health.v1.Health/Check
# with SERVING, prints how to call them, then waits. On Ctrl-C / SIGTERM it sends
# SIGTERM to all of them, waits (up to $SHUTDOWN_TIMEOUT s, then SIGKILL) and exits
# 0. If any process dies, or one is not ready within $READY_TIMEOUT s, the others
# are stopped and it exits 1.
#
# Escrow pays through the sandbox gateway (ESCROW_GATEWAY_URL) and receives its
# signed webhooks on ESCROW_WEBHOOK_ADDR (POST /v1/gateway-webhooks), both signing
# with ESCROW_WEBHOOK_SECRET.
#
# Environment (all optional except DATABASE_URL):
#   DATABASE_URL              shared Postgres database (scripts/dev-postgres.sh)
#   SUPPLIER_REGISTRY_ADDR    default 127.0.0.1:50051
#   CONTRACT_ADDR             default 127.0.0.1:50052
#   ESCROW_ADDR               default 127.0.0.1:50053
#   DISPUTE_ADDR              default 127.0.0.1:50054
#       Each becomes that service's GRPC_LISTEN_ADDR. All four, and the same
#       addresses as http:// URLs (SUPPLIER_REGISTRY_URL, ...), are exported to
#       every service, for the ones that call others.
#   GATEWAY_SANDBOX_ADDR      default 127.0.0.1:50060: the sandbox gateway's HTTP API
#                             (ESCROW_GATEWAY_URL=http://<it>)
#   ESCROW_WEBHOOK_ADDR       default 127.0.0.1:50063: escrow's webhook endpoint
#                             (ESCROW_WEBHOOK_LISTEN_ADDR; the sandbox's
#                             GATEWAY_SANDBOX_WEBHOOK_URL points there)
#   GATEWAY_SANDBOX_AUTO_CREDIT_AFTER  default 5s: bank transfers are credited in
#                             full and Pay Later disbursed after it, so a hand
#                             walk-through completes (the sandbox's control API,
#                             POST /sandbox/bank_transfers/<id>/credit, credits
#                             another amount sooner)
#   AUTH_JWT_HS256_SECRET     default dev-only-secret-change-me
#   ESCROW_WEBHOOK_SECRET     default dev-only-webhook-secret-change-me-0123 (gateway webhooks)
#   TERM_DAY                  default 10s: how long one day of contract and dispute
#                             terms lasts (payment due days, the inspection period,
#                             the claim window, negotiation). Compressed locally so
#                             timers are seen firing and `make demo` can play a late
#                             shipment; TERM_DAY=1d runs on real days.
#                             CONTRACT_TERM_DAY / DISPUTE_TERM_DAY override it.
#   GATEWAY_SANDBOX_*         passed through (faults, settlement delay: see
#                             payment-gateway-sandbox --help)
#   AUTH_JWT_ISSUER           passed through when set (AUTH_JWT_AUDIENCE is not:
#                             each service's audience is its own name)
#   BIN_DIR                   default $CARGO_TARGET_DIR/debug
#   CARGO_TARGET_DIR          default ~/.cache/trade-assurance/target (as the Makefile)
#   GRPCURL                   default .venv/bin/grpcurl, else grpcurl on PATH
#   TA_LOG_DIR                service logs, default .data/logs
#   READY_TIMEOUT             seconds, default 120
#   SHUTDOWN_TIMEOUT          seconds, default 20
set -euo pipefail

log() { printf 'run-platform: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

: "${DATABASE_URL:?DATABASE_URL must be set (export DATABASE_URL=\$(scripts/dev-postgres.sh), or use make run)}"
export DATABASE_URL
export AUTH_JWT_HS256_SECRET="${AUTH_JWT_HS256_SECRET:-dev-only-secret-change-me}"
# The services refuse that published secret unless told they run for development.
export AUTH_DEV_MODE="${AUTH_DEV_MODE:-true}"
# Signs the sandbox gateway's webhooks; the README's escrow examples sign with it.
export ESCROW_WEBHOOK_SECRET="${ESCROW_WEBHOOK_SECRET:-dev-only-webhook-secret-change-me-0123}"
# One audience for all four would let a token meant for one service work on all.
unset AUTH_JWT_AUDIENCE
TERM_DAY="${TERM_DAY:-10s}"
export CONTRACT_TERM_DAY="${CONTRACT_TERM_DAY:-$TERM_DAY}"
export DISPUTE_TERM_DAY="${DISPUTE_TERM_DAY:-$TERM_DAY}"

CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trade-assurance/target}"
BIN_DIR="${BIN_DIR:-$CARGO_TARGET_DIR/debug}"
LOG_DIR="${TA_LOG_DIR:-$REPO_ROOT/.data/logs}"
# What a running platform tells the tools beside it (scripts/demo.sh): where the
# services listen and how long a term day lasts. Removed when it stops.
STATE_FILE="$REPO_ROOT/.data/platform.env"
READY_TIMEOUT="${READY_TIMEOUT:-120}"
SHUTDOWN_TIMEOUT="${SHUTDOWN_TIMEOUT:-20}"

if [[ -z ${GRPCURL:-} ]]; then
  if [[ -x $REPO_ROOT/.venv/bin/grpcurl ]]; then
    GRPCURL="$REPO_ROOT/.venv/bin/grpcurl"
  elif command -v grpcurl >/dev/null 2>&1; then
    GRPCURL="$(command -v grpcurl)"
  else
    die "grpcurl not found: run scripts/install-tools.sh"
  fi
fi

export SUPPLIER_REGISTRY_ADDR="${SUPPLIER_REGISTRY_ADDR:-127.0.0.1:50051}"
export CONTRACT_ADDR="${CONTRACT_ADDR:-127.0.0.1:50052}"
export ESCROW_ADDR="${ESCROW_ADDR:-127.0.0.1:50053}"
export DISPUTE_ADDR="${DISPUTE_ADDR:-127.0.0.1:50054}"
export SUPPLIER_REGISTRY_URL="${SUPPLIER_REGISTRY_URL:-http://$SUPPLIER_REGISTRY_ADDR}"
export CONTRACT_URL="${CONTRACT_URL:-http://$CONTRACT_ADDR}"
export ESCROW_URL="${ESCROW_URL:-http://$ESCROW_ADDR}"
export DISPUTE_URL="${DISPUTE_URL:-http://$DISPUTE_ADDR}"

# The sandbox payment gateway and escrow's webhook endpoint: one secret signs
# on one side and checks on the other.
GATEWAY_SANDBOX_ADDR="${GATEWAY_SANDBOX_ADDR:-127.0.0.1:50060}"
ESCROW_WEBHOOK_ADDR="${ESCROW_WEBHOOK_ADDR:-127.0.0.1:50063}"
export ESCROW_GATEWAY_URL="${ESCROW_GATEWAY_URL:-http://$GATEWAY_SANDBOX_ADDR}"
export ESCROW_WEBHOOK_LISTEN_ADDR="$ESCROW_WEBHOOK_ADDR"
export GATEWAY_SANDBOX_WEBHOOK_URL="${GATEWAY_SANDBOX_WEBHOOK_URL:-http://$ESCROW_WEBHOOK_ADDR/v1/gateway-webhooks}"
export GATEWAY_SANDBOX_WEBHOOK_SECRET="$ESCROW_WEBHOOK_SECRET"
export GATEWAY_SANDBOX_AUTO_CREDIT_AFTER="${GATEWAY_SANDBOX_AUTO_CREDIT_AFTER:-5s}"

# Leaves first: the gateway, then supplier-registry and escrow, which call no
# other service.
NAMES=(payment-gateway-sandbox supplier-registry escrow contract dispute)
ADDRS=("$GATEWAY_SANDBOX_ADDR" "$SUPPLIER_REGISTRY_ADDR" "$ESCROW_ADDR" "$CONTRACT_ADDR" "$DISPUTE_ADDR")
# How each says it is ready: GET /healthz, or the gRPC health check.
PROBES=(http grpc grpc grpc grpc)
PIDS=()

# --- helpers ---------------------------------------------------------------------

# host and port of "host:port" / "[v6]:port"
addr_host() { local h="${1%:*}"; h="${h#[}"; printf '%s' "${h%]}"; }
addr_port() { printf '%s' "${1##*:}"; }

port_in_use() {
  (exec 3<>"/dev/tcp/$(addr_host "$1")/$(addr_port "$1")") 2>/dev/null
}

alive() { # pid; a reaped or zombie child counts as dead
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || echo Z)"
  [[ $state != Z ]]
}

LAST_HEALTH_OUTPUT=""
healthy() { # addr [probe: grpc (default) or http]
  if [[ ${2:-grpc} == http ]]; then
    LAST_HEALTH_OUTPUT="$(http_get "$1" /healthz)" || return 1
    [[ $LAST_HEALTH_OUTPUT == *'"serving"'* ]]
    return
  fi
  LAST_HEALTH_OUTPUT="$("$GRPCURL" -plaintext -connect-timeout 2 -max-time 5 \
    "$1" grpc.health.v1.Health/Check 2>&1)" || return 1
  [[ $LAST_HEALTH_OUTPUT == *'"status": "SERVING"'* ]]
}

http_get() { # addr path: the body of a 2xx answer
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --connect-timeout 2 --max-time 5 "http://$1$2" 2>&1
    return
  fi
  # No curl: HTTP/1.0 by hand over bash's /dev/tcp.
  local answer
  if ! answer="$({ exec 3<>"/dev/tcp/$(addr_host "$1")/$(addr_port "$1")" &&
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" >&3 &&
    timeout 5 cat <&3; } 2>&1)"; then
    printf '%s' "$answer"
    return 1
  fi
  printf '%s' "$answer"
  [[ $answer == "HTTP/1."?" 2"* ]]
}

stop_all() {
  local i pid any=0
  for pid in "${PIDS[@]}"; do
    if alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      any=1
    fi
  done
  ((any)) || return 0
  log "sent SIGTERM to the services and the gateway; waiting up to ${SHUTDOWN_TIMEOUT}s"
  local deadline=$((SECONDS + SHUTDOWN_TIMEOUT))
  while ((SECONDS < deadline)); do
    any=0
    for pid in "${PIDS[@]}"; do alive "$pid" && any=1; done
    ((any)) || break
    sleep 0.2
  done
  for i in "${!PIDS[@]}"; do
    if alive "${PIDS[$i]}"; then
      log "${NAMES[$i]} (pid ${PIDS[$i]}) still running after ${SHUTDOWN_TIMEOUT}s: SIGKILL"
      kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    fi
  done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

report_death() { # index
  local i=$1 status=0
  wait "${PIDS[$i]}" 2>/dev/null || status=$?
  log "${NAMES[$i]} (pid ${PIDS[$i]}) exited with status $status; last lines of $LOG_DIR/${NAMES[$i]}.log:"
  tail -n 30 "$LOG_DIR/${NAMES[$i]}.log" >&2 2>/dev/null || true
}

# Index of a dead service, or return 1.
find_dead() {
  local i
  for i in "${!PIDS[@]}"; do
    if ! alive "${PIDS[$i]}"; then
      printf '%s' "$i"
      return 0
    fi
  done
  return 1
}

on_signal() {
  trap - INT TERM
  log "stopping"
  stop_all
  log "stopped"
  exit 0
}
trap on_signal INT TERM
trap 'stop_all; rm -f -- "$STATE_FILE"' EXIT

# --- start -----------------------------------------------------------------------

for i in "${!NAMES[@]}"; do
  [[ -x $BIN_DIR/${NAMES[$i]} ]] || die "$BIN_DIR/${NAMES[$i]} not found: build first (make build, or make run)"
  port_in_use "${ADDRS[$i]}" && die "${ADDRS[$i]} (${NAMES[$i]}) is already in use: another make run? (or set its *_ADDR)"
done
port_in_use "$ESCROW_WEBHOOK_ADDR" && die "$ESCROW_WEBHOOK_ADDR (escrow's webhooks) is already in use: another make run? (or set ESCROW_WEBHOOK_ADDR)"

mkdir -p "$LOG_DIR"
for i in "${!NAMES[@]}"; do
  name=${NAMES[$i]}
  if [[ ${PROBES[$i]} == http ]]; then
    GATEWAY_SANDBOX_LISTEN_ADDR="${ADDRS[$i]}" "$BIN_DIR/$name" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
  else
    GRPC_LISTEN_ADDR="${ADDRS[$i]}" "$BIN_DIR/$name" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
  fi
  PIDS+=("$!")
  log "started $name (pid $!) on ${ADDRS[$i]}, log $LOG_DIR/$name.log"
done

deadline=$((SECONDS + READY_TIMEOUT))
for i in "${!NAMES[@]}"; do
  until healthy "${ADDRS[$i]}" "${PROBES[$i]}"; do
    if dead="$(find_dead)"; then
      report_death "$dead"
      stop_all
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "${NAMES[$i]} not ready on ${ADDRS[$i]} after ${READY_TIMEOUT}s; last health check said:"
      printf '%s\n' "$LAST_HEALTH_OUTPUT" >&2
      log "last lines of $LOG_DIR/${NAMES[$i]}.log:"
      tail -n 30 "$LOG_DIR/${NAMES[$i]}.log" >&2 2>/dev/null || true
      stop_all
      exit 1
    fi
    sleep 0.5
  done
  log "${NAMES[$i]} ready on ${ADDRS[$i]}"
done

mkdir -p "$(dirname "$STATE_FILE")"
cat >"$STATE_FILE" <<STATE
# Written by scripts/run-platform.sh (pid $$) while the platform runs.
SUPPLIER_REGISTRY_ADDR=$SUPPLIER_REGISTRY_ADDR
CONTRACT_ADDR=$CONTRACT_ADDR
ESCROW_ADDR=$ESCROW_ADDR
DISPUTE_ADDR=$DISPUTE_ADDR
GATEWAY_SANDBOX_ADDR=$GATEWAY_SANDBOX_ADDR
ESCROW_WEBHOOK_ADDR=$ESCROW_WEBHOOK_ADDR
CONTRACT_TERM_DAY=$CONTRACT_TERM_DAY
DISPUTE_TERM_DAY=$DISPUTE_TERM_DAY
STATE

# --- how to call ---------------------------------------------------------------------

rel_log_dir="${LOG_DIR#"$REPO_ROOT"/}"
idem_key="$(cat /proc/sys/kernel/random/uuid 2>/dev/null || echo "demo-$RANDOM-$RANDOM")"
# A licence number of its own, so the README's walk-through (which registers
# another) can follow the banner's example.
demo_licence="DEMO-$(printf '%s' "${idem_key//-/}" | cut -c1-12 | tr 'a-z' 'A-Z')"
cat <<EOF

Trade Assurance platform is running (Ctrl-C stops it):
  supplier-registry  $SUPPLIER_REGISTRY_ADDR
  contract           $CONTRACT_ADDR
  escrow             $ESCROW_ADDR
  dispute            $DISPUTE_ADDR
  payment gateway    http://$GATEWAY_SANDBOX_ADDR  (the sandbox; escrow's webhooks at http://$ESCROW_WEBHOOK_ADDR/v1/gateway-webhooks;
                     bank transfers and Pay Later settle after $GATEWAY_SANDBOX_AUTO_CREDIT_AFTER)
  database           $DATABASE_URL
  term day           contract $CONTRACT_TERM_DAY, dispute $DISPUTE_TERM_DAY (one day of the terms; TERM_DAY=1d for real days)
  logs               $rel_log_dir/<service>.log  (tail -f $rel_log_dir/*.log)

In another terminal, from $REPO_ROOT:

  export PATH="\$PWD/.venv/bin:\$PATH"        # grpcurl 1.8.6

  # a token (roles: buyer, supplier, inspector; staff duties trust_safety, arbiter,
  # finance, support; platform (a back end reading views and feeds); service.
  # TTL=1h by default; a service's token names the service it calls: AUDIENCE=supplier-registry)
  TOKEN=\$(make token ROLE=trust_safety SUBJECT=ts-1)

  # what is there (reflection)
  grpcurl -plaintext $SUPPLIER_REGISTRY_ADDR list
  grpcurl -plaintext $SUPPLIER_REGISTRY_ADDR describe tradeassurance.supplier.v1.SupplierRegistryService
  grpcurl -plaintext $SUPPLIER_REGISTRY_ADDR describe tradeassurance.supplier.v1.RegisterSupplierRequest

  # health of all four
  for a in $SUPPLIER_REGISTRY_ADDR $CONTRACT_ADDR $ESCROW_ADDR $DISPUTE_ADDR; do
    grpcurl -plaintext "\$a" grpc.health.v1.Health/Check
  done

  # the sandbox gateway: its books (money in and out per currency), the webhooks
  # it sent with their delivery attempts, and the faults it injects
  curl -s http://$GATEWAY_SANDBOX_ADDR/sandbox/books
  curl -s http://$GATEWAY_SANDBOX_ADDR/sandbox/events
  curl -s -X PUT -d '{"latency_ms": 300}' http://$GATEWAY_SANDBOX_ADDR/sandbox/faults

  # register a supplier (as trust and safety, on behalf of supplier principal supplier-1;
  # every change staff make says why: the reason goes to the audit trail)
  grpcurl -plaintext -H "authorization: Bearer \$TOKEN" -d '{
    "idempotency_key": "$idem_key",
    "legal_name": "Shenzhen Example Electronics Co., Ltd.",
    "country_code": "CN",
    "business_licence_number": "$demo_licence",
    "contacts": [{"name": "Li Wei", "email": "li.wei@example.com"}],
    "owner_principal_id": "supplier-1",
    "reason": "onboarding call with the supplier, licence seen"
  }' $SUPPLIER_REGISTRY_ADDR tradeassurance.supplier.v1.SupplierRegistryService/RegisterSupplier

EOF

# --- wait ------------------------------------------------------------------------------

while :; do
  if dead="$(find_dead)"; then
    report_death "$dead"
    log "stopping the others"
    stop_all
    exit 1
  fi
  # Sleep in the background so a signal is handled at once.
  sleep 1 &
  wait $! || true
done
