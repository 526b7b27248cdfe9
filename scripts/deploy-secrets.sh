#!/usr/bin/env bash
# Prints the Namespace and the Secrets the Helm chart references, made from the
# files in one directory, for `kubectl apply`:
#
#   scripts/deploy-secrets.sh <dir> [namespace] | kubectl apply -f -
#
# <dir> holds (names as in deploy/helm/trade-assurance/values.yaml):
#   jwks.json                      JWK set: the public keys (RS256, each with its
#                                  kid) of the issuer of people's tokens and of
#                                  contract and dispute (kid = signingKey.keyId),
#                                  each of these two bound to its service by the
#                                  member "ta_service": "contract" / "dispute"
#                                  (without it a key signs people's tokens only)
#   <service>.database-url         one per service: postgres://<its role>:<password>@<host>:5432/<db>
#                                  (roles and schemas: deploy/postgres/roles.sql)
#   contract.pem, dispute.pem      the RS256 private keys those two sign their calls with
#   escrow.webhook-secret          the payment gateway's webhook signing secret (32+ bytes)
#   evidence-s3.credentials        optional: an AWS shared credentials file ([default]
#                                  profile) for the evidence store's bucket, when
#                                  evidence.s3.credentialsSecret names
#                                  trade-assurance-evidence-s3 (values-staging.yaml)
#   gateway-sandbox.database-url   optional: the sandbox payment gateway's DATABASE_URL,
#                                  with gatewaySandbox.enabled (values-staging.yaml);
#                                  its role: deploy/postgres/service-role.sql with
#                                  role gateway_sandbox
#
# Nothing is written to disk; the output holds the secrets, so pipe it straight
# into kubectl. Secret names follow the chart's defaults (prefix trade-assurance-).
set -euo pipefail

die() { printf 'deploy-secrets: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 <dir> [namespace]"
dir=$1
namespace=${2:-trade-assurance}
[[ -d $dir ]] || die "$dir is not a directory"

b64() { base64 -w0 <"$1"; }
need() { [[ -s $1 ]] || die "missing or empty: $1"; }

secret() { # name key file
  need "$3"
  cat <<EOF
---
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: $namespace
  labels:
    app.kubernetes.io/part-of: trade-assurance
type: Opaque
data:
  $2: $(b64 "$3")
EOF
}

cat <<EOF
---
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
  labels:
    app.kubernetes.io/part-of: trade-assurance
    pod-security.kubernetes.io/enforce: restricted
EOF
secret trade-assurance-jwks jwks.json "$dir/jwks.json"
for service in supplier-registry contract escrow dispute; do
  # The URL without its trailing newline.
  url_file=$(mktemp)
  trap 'rm -f "$url_file"' EXIT
  need "$dir/$service.database-url"
  tr -d '\n' <"$dir/$service.database-url" >"$url_file"
  secret "trade-assurance-$service-database" url "$url_file"
  rm -f "$url_file"
done
for service in contract dispute; do
  secret "trade-assurance-$service-signing-key" private.pem "$dir/$service.pem"
done
# The payment gateway's webhook signing secret, as the gateway was given it.
need "$dir/escrow.webhook-secret"
secret trade-assurance-escrow-webhook secret "$dir/escrow.webhook-secret"
# The evidence store's S3 keys, only when given (otherwise the pods use their
# own AWS identity).
if [[ -e $dir/evidence-s3.credentials ]]; then
  secret trade-assurance-evidence-s3 credentials "$dir/evidence-s3.credentials"
fi
# The sandbox payment gateway's database, only when given (gatewaySandbox.enabled).
if [[ -e $dir/gateway-sandbox.database-url ]]; then
  url_file=$(mktemp)
  trap 'rm -f "$url_file"' EXIT
  tr -d '\n' <"$dir/gateway-sandbox.database-url" >"$url_file"
  secret trade-assurance-gateway-sandbox-database url "$url_file"
  rm -f "$url_file"
fi
