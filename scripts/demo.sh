#!/usr/bin/env bash
# `make demo`: one order told as a story, against a running `make run`, through the
# real grpcurl. A buyer orders mugs from a verified supplier and pays a deposit; the
# pre-shipment inspection fails once; the goods ship after the deadline; the buyer
# claims; an arbiter decides a partial refund. Every call is printed as it could be
# typed, then what it answered, then the timelines and the money.
#
# Reads the running platform's addresses and term day from .data/platform.env
# (written by scripts/run-platform.sh); tokens come from the mint-token binary that
# `make run` built, signed with the same dev secret.
#
# Environment (all optional):
#   AUTH_JWT_HS256_SECRET   default dev-only-secret-change-me (make run's)
#   CARGO_TARGET_DIR        default ~/.cache/trade-assurance/target
#   GRPCURL                 default .venv/bin/grpcurl, else grpcurl on PATH
#   DEMO_QUIET=1            print the narration and answers, not the request bodies
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
STATE_FILE="$REPO_ROOT/.data/platform.env"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/trade-assurance/target}"
MINT="$CARGO_TARGET_DIR/debug/mint-token"
export AUTH_JWT_HS256_SECRET="${AUTH_JWT_HS256_SECRET:-dev-only-secret-change-me}"
# mint-token refuses that published secret unless told it runs for development.
export AUTH_DEV_MODE="${AUTH_DEV_MODE:-true}"

die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

[[ -f $STATE_FILE ]] || die "no running platform ($STATE_FILE is missing): start it with 'make run' in another terminal"
# shellcheck disable=SC1090
source "$STATE_FILE"
command -v jq >/dev/null 2>&1 || die "jq not found (Debian: apt-get install jq)"
[[ -x $MINT ]] || die "$MINT not found: 'make run' builds it"
if [[ -z ${GRPCURL:-} ]]; then
  if [[ -x $REPO_ROOT/.venv/bin/grpcurl ]]; then GRPCURL="$REPO_ROOT/.venv/bin/grpcurl"
  elif command -v grpcurl >/dev/null 2>&1; then GRPCURL="$(command -v grpcurl)"
  else die "grpcurl not found: run 'make tools'"; fi
fi

# A term day in seconds: the demo waits for a shipment deadline, so it needs the
# short day `make run` uses by default.
seconds_of() { # 10s, 2m, 1h, 1d
  local v=$1 n=${1%%[a-z]*} unit=${1##*[0-9]}
  case $unit in
    s | "") echo "$n" ;; m | min) echo $((n * 60)) ;; h) echo $((n * 3600)) ;; d) echo $((n * 86400)) ;;
    *) die "cannot read the term day '$v'" ;;
  esac
}
DAY=$(seconds_of "$CONTRACT_TERM_DAY")
((DAY <= 60)) || die "the platform runs with a term day of $CONTRACT_TERM_DAY; the story waits for a
  shipment deadline 7 working days away, so restart it with a short day: make run TERM_DAY=10s"

# ---- telling ---------------------------------------------------------------------------

BOLD=$'\e[1m' DIM=$'\e[2m' RESET=$'\e[0m'
[[ -t 1 ]] || BOLD="" DIM="" RESET=""
STEP=0
chapter() { STEP=$((STEP + 1)); printf '\n%s%d. %s%s\n' "$BOLD" "$STEP" "$1" "$RESET"; }
say() { printf '%s\n' "$*" | fold -s -w 100 | sed 's/^/   /'; }
show() { sed 's/^/      /'; }

declare -A ADDR=([registry]=$SUPPLIER_REGISTRY_ADDR [contract]=$CONTRACT_ADDR [escrow]=$ESCROW_ADDR [dispute]=$DISPUTE_ADDR)
declare -A SVC=([registry]=tradeassurance.supplier.v1.SupplierRegistryService
  [contract]=tradeassurance.contract.v1.ContractService
  [escrow]=tradeassurance.escrow.v1.EscrowService
  [dispute]=tradeassurance.dispute.v1.DisputeService)

# rpc TOKEN_VAR SERVICE METHOD JSON [JQ_FILTER]: prints the call as typed (the token
# by its variable's name), runs it, prints the answer through the filter; the raw
# answer is left in $ANSWER. A refusal ends the demo.
rpc() {
  local token_var=$1 service=$2 method=$3 body=$4 filter=${5:-.} raw=${6:-}
  print_call "$@"
  if ! ANSWER="$("$GRPCURL" -plaintext -max-time 20 -H "authorization: Bearer ${!token_var}" \
      -d "$body" "${ADDR[$service]}" "${SVC[$service]}/$method" 2>&1)"; then
    printf '%s\n' "$ANSWER" | show
    die "$method was refused; the story cannot go on"
  fi
  jq ${raw:+-r} "$filter" <<<"$ANSWER" | show
}

# refused TOKEN_VAR SERVICE METHOD JSON: a call the story expects to be refused; prints
# the status the platform answered with.
refused() {
  local token_var=$1 service=$2 method=$3 body=$4
  print_call "$@"
  if ANSWER="$("$GRPCURL" -plaintext -max-time 20 -H "authorization: Bearer ${!token_var}" \
      -d "$body" "${ADDR[$service]}" "${SVC[$service]}/$method" 2>&1)"; then
    printf '%s\n' "$ANSWER" | show
    die "$method was expected to be refused"
  fi
  grep -E '^  (Code|Message):' <<<"$ANSWER" | show
}

print_call() {
  local token_var=$1 service=$2 method=$3 body=$4
  printf '   %s$ grpcurl -plaintext -H "authorization: Bearer $%s" \\\n' "$DIM" "$token_var"
  if [[ -z ${DEMO_QUIET:-} ]]; then
    printf "       -d '%s' \\\\\n" "$(jq -c . <<<"$body")"
  fi
  printf '       %s %s/%s%s\n' "${ADDR[$service]}" "${SVC[$service]}" "$method" "$RESET"
}

# until_answer WHAT SECONDS TOKEN_VAR SERVICE METHOD JSON JQ_CONDITION: polls a read
# until the condition holds on its answer (outbox calls and feeds take a moment).
until_answer() {
  local what=$1 timeout=$2 token_var=$3 service=$4 method=$5 body=$6 condition=$7
  local deadline=$((SECONDS + timeout))
  while :; do
    ANSWER="$("$GRPCURL" -plaintext -max-time 10 -H "authorization: Bearer ${!token_var}" \
      -d "$body" "${ADDR[$service]}" "${SVC[$service]}/$method" 2>&1)" || true
    jq -e "$condition" <<<"$ANSWER" >/dev/null 2>&1 && return 0
    ((SECONDS < deadline)) || { printf '%s\n' "$ANSWER" | show; die "waited ${timeout}s for $what"; }
    sleep 0.5
  done
}

wait_until_epoch() { # epoch seconds, what
  local left=$(($1 - $(date +%s)))
  if ((left > 0)); then
    say "${DIM}(waiting ${left}s for $2)${RESET}"
    sleep "$left"
  fi
}

token() { "$MINT" --subject "$1" --role "$2" --ttl 1h --audience trade-assurance; }
iso() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }
epoch() { date -u -d "$1" +%s; }
usd() { printf '{"currency_code": "USD", "amount_minor": %d}' "$1"; }
money='def money: if . == null then "0.00" else ((.amountMinor // "0") | tonumber) as $m | "\($m / 100 | floor).\(($m % 100) | tostring | if length < 2 then "0" + . else . end) \(.currencyCode // "USD")" end;'
timeline='.entries[] | "\(.occurredAt[0:19])  \(.actor.role | sub("ROLE_"; "") | ascii_downcase)  \(.action): \(.detail)"'

RUN="$(date +%s)-$RANDOM"
ANNA=$(token buyer-anna-$RUN buyer)
ZHANG=$(token supplier-zhang-$RUN supplier)
SGS=$(token agency-sgs-$RUN inspector)
# Staff act in one duty at a time, each with its own token.
TRUST=$(token ts-mei trust_safety)
ARBITER=$(token arbiter-olu arbiter)
FINANCE=$(token finance-ines finance)

printf '%sTrade Assurance, one order from the first call to the arbiter'"'"'s decision%s\n' "$BOLD" "$RESET"
say "Against the platform of 'make run' (contract $CONTRACT_ADDR, escrow $ESCROW_ADDR, dispute $DISPUTE_ADDR, supplier-registry $SUPPLIER_REGISTRY_ADDR). One day of the contract's terms lasts $CONTRACT_TERM_DAY here, so the weeks of this story pass in minutes. The tokens: \$ANNA (the buyer, a shop in Hamburg), \$ZHANG (the supplier's owner, a ceramics factory in Jingdezhen), \$SGS (the inspection agency), and the platform's staff, each in one duty: \$TRUST (trust and safety), \$ARBITER (an arbiter), \$FINANCE (finance). Every change staff make carries a reason, kept in the service's audit trail. Make your own with: make token ROLE=buyer SUBJECT=anna"

# ---- 1. the supplier --------------------------------------------------------------------

chapter "The supplier earns the Trade Assurance badge"
say "The factory registers itself; trust and safety checks its business licence and enrols it in Trade Assurance with a limit of 50,000.00 USD: the most it may have under protection at once."
rpc ZHANG registry RegisterSupplier '{"idempotency_key": "register-'$RUN'",
  "legal_name": "Jingdezhen Example Ceramics Co.", "country_code": "CN",
  "business_licence_number": "DEMO'"${RUN//-/}"'",
  "contacts": [{"name": "Zhang Min", "email": "zhang.min@example.com"}]}' \
  '.supplier | {supplierId, verificationStatus, tradeAssuranceBadge: (.tradeAssuranceBadge // false)}'
SUPPLIER_ID=$(jq -r .supplier.supplierId <<<"$ANSWER")
rpc ZHANG registry SubmitVerification '{"idempotency_key": "submit-'$RUN'", "supplier_id": "'$SUPPLIER_ID'"}' \
  '.supplier.verificationStatus'
rpc TRUST registry VerifySupplier '{"idempotency_key": "verify-'$RUN'", "supplier_id": "'$SUPPLIER_ID'",
  "reason": "business licence checked against the national enterprise registry"}' \
  '.supplier.verificationStatus'
rpc TRUST registry EnrollTradeAssurance '{"idempotency_key": "enrol-'$RUN'", "supplier_id": "'$SUPPLIER_ID'",
  "ta_limit": '"$(usd 5000000)"', "reason": "factory audit passed; limit sized to its export volume"}' "$money"' .supplier | {tradeAssuranceBadge, taLimit: (.taLimit | money)}'

# ---- 2. the contract --------------------------------------------------------------------

chapter "Buyer and supplier agree on a written contract"
# The shipment deadline: the nearest that leaves the 7 working days an inspection
# needs to be booked, counted on the terms' calendar (one term day per calendar day
# from today), plus half a day.
days=0 working=0
while ((working < 7)); do
  days=$((days + 1))
  (($(date -u -d "+$days days" +%u) <= 5)) && working=$((working + 1))
done
NOW=$(date +%s)
SHIP_BY=$((NOW + days * DAY + DAY / 2))
DELIVER_BY=$((SHIP_BY + 20 * DAY))
say "Anna orders 1,000 stoneware mugs at 3.00 USD. The contract says what 'good' means (wall thickness 4.0 mm within 0.3 mm, measured by SGS before shipment), when the goods ship ($days term days from now: $(iso $SHIP_BY)), and how she pays: a 30 % deposit after signing, the balance before the shipment deadline. The server computes the totals and the schedule."
TERMS='{"title": "Stoneware mugs, spring collection", "protection": "PROTECTION_TRADE_ASSURANCE",
  "line_items": [{"sku": "MUG-350", "description": "350 ml stoneware mug, matte glaze", "quantity": 1000,
                  "unit": "pcs", "unit_price": '"$(usd 300)"'}],
  "quality_criteria": [{"criterion_id": "QC-1", "name": "Wall thickness", "metric": "wall thickness",
    "method": "micrometer, 5 points per mug, AQL 2.5", "comparator": "COMPARATOR_WITHIN_TOLERANCE",
    "target_value": "4.0", "tolerance": "0.3", "unit": "mm"}],
  "shipment_deadline": "'$(iso $SHIP_BY)'", "delivery_deadline": "'$(iso $DELIVER_BY)'",
  "delivery_terms": {"incoterm": "INCOTERM_FOB", "named_place": "Shanghai port", "destination_country_code": "DE"},
  "inspection": {"kind": "INSPECTION_KIND_PRE_SHIPMENT_THIRD_PARTY", "agency_name": "SGS",
                 "agency_principal_id": "agency-sgs-'$RUN'"},
  "payment_terms": {"scheme": "PAYMENT_SCHEME_DEPOSIT_AND_BALANCE", "milestones": [
    {"milestone_id": "deposit", "share_basis_points": 3000, "trigger": "PAYMENT_TRIGGER_AFTER_SIGNING", "due_days": 3},
    {"milestone_id": "balance", "share_basis_points": 7000, "trigger": "PAYMENT_TRIGGER_BEFORE_SHIPMENT_DEADLINE", "due_days": 1}]},
  "inspection_period_days": 5}'
rpc ANNA contract CreateContractDraft '{"idempotency_key": "draft-'$RUN'", "supplier_id": "'$SUPPLIER_ID'",
  "terms": '"$TERMS"'}' "$money"' {contractId: .contract.contractId, status: .contract.status, total: (.contract.total | money),
      schedule: [.version.terms.paymentTerms.milestones[] | "\(.milestoneId): \(.amount | money)"]}'
CONTRACT_ID=$(jq -r .contract.contractId <<<"$ANSWER")
say "Both sign the same version. The second signature makes it ACTIVATING: contract reserves the cover at supplier-registry and opens the escrow account, both through its outbox."
rpc ZHANG contract SignContract '{"idempotency_key": "sign-s-'$RUN'", "contract_id": "'$CONTRACT_ID'", "version": 1}' \
  '.contract.status'
rpc ANNA contract SignContract '{"idempotency_key": "sign-b-'$RUN'", "contract_id": "'$CONTRACT_ID'", "version": 1}' \
  '.contract.status'
until_answer "the escrow account" 30 ANNA contract GetContract '{"contract_id": "'$CONTRACT_ID'"}' \
  '.contract.status == "CONTRACT_STATUS_AWAITING_PAYMENT"'
ACCOUNT_ID=$(jq -r .contract.escrowAccountId <<<"$ANSWER")
rpc ANNA contract GetContract '{"contract_id": "'$CONTRACT_ID'"}' \
  '.contract | {status, escrowAccountId, milestones: [.milestones[] | "\(.kind | sub("MILESTONE_KIND_"; "")) due \(.dueAt // "-")"]}'
rpc ZHANG registry GetCover '{"supplier_id": "'$SUPPLIER_ID'"}' "$money"' {taLimit: (.taLimit | money), reserved: (.coverReserved | money), remaining: (.coverRemaining | money)}'

# ---- 3. the money -----------------------------------------------------------------------

chapter "Anna pays into escrow, not to the factory"
say "The deposit, by card (the sandbox gateway settles tok_visa within the call). The money is held by escrow; the contract follows escrow's event feed."
rpc ANNA escrow FundEscrow '{"idempotency_key": "pay-deposit-'$RUN'", "escrow_account_id": "'$ACCOUNT_ID'",
  "milestone_id": "deposit", "amount": '"$(usd 90000)"', "card": {"card_token": "tok_visa"}}' \
  '.fundingAttempt | {method, status}'
until_answer "the deposit to reach the contract" 30 ANNA contract GetContract '{"contract_id": "'$CONTRACT_ID'"}' \
  '.contract.status == "CONTRACT_STATUS_PARTIALLY_FUNDED"'
jq -r '.contract.status' <<<"$ANSWER" | show
say "And the balance, before the shipment deadline."
rpc ANNA escrow FundEscrow '{"idempotency_key": "pay-balance-'$RUN'", "escrow_account_id": "'$ACCOUNT_ID'",
  "milestone_id": "balance", "amount": '"$(usd 210000)"', "card": {"card_token": "tok_visa"}}' \
  '.fundingAttempt | {method, status}'
until_answer "the balance to reach the contract" 30 ANNA contract GetContract '{"contract_id": "'$CONTRACT_ID'"}' \
  '.contract.status == "CONTRACT_STATUS_FUNDED"'
rpc ANNA escrow GetEscrowAccount '{"escrow_account_id": "'$ACCOUNT_ID'"}' "$money"' .account | {status, held: (.held | money)}'

# ---- 4. the inspection ------------------------------------------------------------------

chapter "The inspection fails once"
say "SGS sees the order in its assignments and measures the walls: 4.6 mm, too thick. The report is kept; the factory cannot ship on it."
rpc SGS contract ListInspectionAssignments '{}' '[.contracts[] | {contractId, status}]'
rpc SGS contract SubmitInspectionReport '{"idempotency_key": "inspect-1-'$RUN'", "contract_id": "'$CONTRACT_ID'",
  "agency_reference": "SGS-'$RUN'-1", "inspected_at": "'$(iso "$(date +%s)")'", "summary": "walls too thick",
  "results": [{"criterion_id": "QC-1", "outcome": "CRITERION_OUTCOME_FAIL", "measured_value": "4.6"}]}' \
  '.report | {passed: (.passed // false), results: [.results[] | "\(.criterionId) \(.outcome) \(.measuredValue)"]}'
refused ZHANG contract RecordShipment '{"idempotency_key": "ship-early-'$RUN'", "contract_id": "'$CONTRACT_ID'",
  "carrier": "Maersk", "tracking_number": "MAEU'"${RUN%%-*}"'", "final": true}'

chapter "The factory re-fires the batch and misses the deadline"
wait_until_epoch $((SHIP_BY + 2)) "the shipment deadline, $(iso $SHIP_BY)"
rpc SGS contract SubmitInspectionReport '{"idempotency_key": "inspect-2-'$RUN'", "contract_id": "'$CONTRACT_ID'",
  "agency_reference": "SGS-'$RUN'-2", "inspected_at": "'$(iso "$(date +%s)")'", "summary": "re-fired batch within tolerance",
  "results": [{"criterion_id": "QC-1", "outcome": "CRITERION_OUTCOME_PASS", "measured_value": "4.1"}]}' \
  '.report | {passed: (.passed // false), results: [.results[] | "\(.criterionId) \(.outcome) \(.measuredValue)"]}'
say "The second report passes, and the mugs ship: after the deadline, so the shipment is recorded as late."
rpc ZHANG contract RecordShipment '{"idempotency_key": "ship-'$RUN'", "contract_id": "'$CONTRACT_ID'",
  "carrier": "Maersk", "tracking_number": "MAEU'"${RUN%%-*}"'", "final": true}' \
  '.contract | {status, shipments: [.shipments[] | {carrier, shippedAt, late}]}'
rpc ANNA contract ConfirmReceipt '{"idempotency_key": "receipt-'$RUN'", "contract_id": "'$CONTRACT_ID'"}' \
  '.contract.status'

# ---- 5. the claim -----------------------------------------------------------------------

chapter "Anna claims for the late shipment"
say "She missed the spring trade fair and asks for 600.00 USD back. Contract decides whether the claim may open (a claim and an acceptance never both win); escrow freezes the account."
rpc ANNA dispute FileClaim '{"idempotency_key": "claim-'$RUN'", "contract_id": "'$CONTRACT_ID'",
  "reason": "CLAIM_REASON_LATE_SHIPMENT", "remedy": "REMEDY_REFUND", "amount_claimed": '"$(usd 60000)"',
  "description": "shipped after the agreed deadline; the mugs missed the spring trade fair"}' \
  '.claim | {claimId, status}'
CLAIM_ID=$(jq -r .claim.claimId <<<"$ANSWER")
until_answer "the claim to open" 30 ANNA dispute GetClaim '{"claim_id": "'$CLAIM_ID'"}' \
  '.claim.status != "CLAIM_STATUS_OPENING"'
jq "$money"' .claim | {status, amountClaimed: (.amountClaimed | money), negotiationEndsAt, autoEscalateAt, refusalReason}' <<<"$ANSWER" | show
[[ $(jq -r .claim.status <<<"$ANSWER") == CLAIM_STATUS_NEGOTIATING ]] || die "the claim did not open"
NEGOTIATION_ENDS=$(epoch "$(jq -r .claim.negotiationEndsAt <<<"$ANSWER")")
rpc ANNA escrow GetEscrowAccount '{"escrow_account_id": "'$ACCOUNT_ID'"}' \
  '.account | {status, activeFreezes: [.activeFreezes[]? | .reason]}'

chapter "They negotiate, and do not agree"
rpc ZHANG dispute MakeOffer '{"idempotency_key": "offer-'$RUN'", "claim_id": "'$CLAIM_ID'",
  "kind": "OFFER_KIND_PARTIAL_REFUND", "refund_amount": '"$(usd 15000)"',
  "message": "the port was congested; we offer 5 %"}' "$money"' .offer | {offerId, kind, refund: (.refundAmount | money)}'
OFFER_ID=$(jq -r .offer.offerId <<<"$ANSWER")
rpc ANNA dispute RejectOffer '{"idempotency_key": "reject-'$RUN'", "claim_id": "'$CLAIM_ID'", "offer_id": "'$OFFER_ID'",
  "reason": "the delay cost us the fair"}' '.claim.status // .'
say "The buyer may escalate once the negotiation window ($(iso "$NEGOTIATION_ENDS")) has passed."
wait_until_epoch $((NEGOTIATION_ENDS + 1)) "the negotiation window to close"
rpc ANNA dispute EscalateClaim '{"idempotency_key": "escalate-'$RUN'", "claim_id": "'$CLAIM_ID'",
  "reason": "no agreement on the amount"}' '.claim.status'

# ---- 6. the decision --------------------------------------------------------------------

chapter "The arbiter decides a partial refund"
say "An arbiter reads both sides and refunds 450.00 USD. Through dispute's outbox, in this order: escrow settles the claim in one transaction (the refund, the rest released to the factory since the goods arrived, the freeze lifted), contract closes the claim and completes, supplier-registry records the penalty points."
rpc ARBITER dispute DecideClaim '{"idempotency_key": "decide-'$RUN'", "claim_id": "'$CLAIM_ID'",
  "outcome": "CLAIM_OUTCOME_PARTIAL_REFUND", "refund_amount": '"$(usd 45000)"',
  "reason": "shipped after the deadline after a failed inspection; the buyer lost a sales window"}' \
  '.claim.status'
until_answer "the decision's effects" 60 ANNA dispute GetClaim '{"claim_id": "'$CLAIM_ID'"}' \
  '.claim.effectsCompletedAt != null and .claim.effectsCompletedAt != ""'
jq "$money"' .claim | {status, outcome: .resolution.outcome, refund: (.resolution.refundAmount | money), effectsCompletedAt}' <<<"$ANSWER" | show

# ---- 7. what is left --------------------------------------------------------------------

chapter "Where everything ended"
say "The claim's timeline, as buyer and supplier see it:"
rpc ANNA dispute GetClaimTimeline '{"claim_id": "'$CLAIM_ID'", "page": {"page_size": 50}}' "$timeline" raw
say "The contract's timeline:"
rpc ANNA contract GetContractTimeline '{"contract_id": "'$CONTRACT_ID'", "page": {"page_size": 100}}' "$timeline" raw
say "The money, as finance reads it: escrow's ledger for this account (every posting balanced; the balances sum to zero)."
rpc FINANCE escrow GetEscrowStatement '{"escrow_account_id": "'$ACCOUNT_ID'", "page": {"page_size": 100}}' \
  "$money"' {account: (.account | {status, funded: (.fundedTotal | money), released: (.releasedTotal | money), refunded: (.refundedTotal | money), held: (.held | money)}),
   balances: [.balances[] | "\(.account.kind | sub("LEDGER_ACCOUNT_KIND_"; "") | ascii_downcase): \(.posted | money)"]}'
say "The factory's standing: the penalty points of a partial refund, the cover freed."
rpc ZHANG registry GetSupplier '{"supplier_id": "'$SUPPLIER_ID'"}' \
  "$money"' .supplier | {status, tradeAssuranceBadge, penaltyPoints, taLimit: (.taLimit | money), coverReserved: (.coverReserved | money)}'
say "And finance's reconciliation of the whole ledger: no differences."
rpc FINANCE escrow ReconcileLedger '{}' '{differences: (.differences // [] | length), accountsChecked, postingsChecked}'

printf '\n%sThe story is over.%s Contract %s, claim %s. Every call above can be typed again as printed.\n' \
  "$BOLD" "$RESET" "$CONTRACT_ID" "$CLAIM_ID"
