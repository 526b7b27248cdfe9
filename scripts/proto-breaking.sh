#!/usr/bin/env bash
# Guards the API's stability: `buf breaking` (FILE rules, proto/buf.yaml) between
# proto/ as it is now and proto/ at a base commit, so that no change breaks a
# client generated from the protos in a platform team's repository.
#
# The base, in order:
#   - PROTO_BREAKING_AGAINST=<git ref>, when set (e.g. the main branch a change
#     is merged into);
#   - HEAD, when proto/ has uncommitted changes (what is about to be committed);
#   - HEAD~1 otherwise (the commit under test against its parent, as CI sees it).
#
# An intended break is marked, never silenced: a commit between the base and HEAD
# whose message carries a `Proto-Breaking: <why>` trailer, or, for uncommitted
# changes, PROTO_BREAKING_ALLOWED=<why>. The check then prints the breaks and the
# reason, and passes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

buf=(npx --yes "@bufbuild/buf@${BUF_VERSION:?BUF_VERSION is not set (run through make lint)}")

if [[ -n ${PROTO_BREAKING_AGAINST:-} ]]; then
  base=$PROTO_BREAKING_AGAINST
elif ! git diff --quiet HEAD -- proto || [[ -n $(git ls-files --others --exclude-standard proto) ]]; then
  base=HEAD
else
  base=HEAD~1
fi
if ! base_commit=$(git rev-parse --verify --quiet "$base^{commit}"); then
  echo "proto-breaking: no commit $base in this clone (a shallow or one-commit history); nothing to compare against" >&2
  exit 0
fi

reason=${PROTO_BREAKING_ALLOWED:-}
if [[ -z $reason ]]; then
  reason=$(git log --format='%H %(trailers:key=Proto-Breaking,valueonly,separator=%x20)' "$base_commit..HEAD" |
    awk 'NF > 1 { print substr($1, 1, 12) ": " substr($0, index($0, " ") + 1) }')
fi

against=$(mktemp -d)
trap 'rm -rf "$against"' EXIT
git archive "$base_commit" proto | tar -x -C "$against"

echo "proto-breaking: proto/ against $base ($(git rev-parse --short "$base_commit"))"
if out=$(cd proto && "${buf[@]}" breaking --against "$against/proto" 2>&1); then
  exit 0
fi
echo "$out"
if [[ -n $reason ]]; then
  echo "proto-breaking: the breaks above are marked as intended:"
  echo "$reason" | sed 's/^/  /'
  exit 0
fi
cat >&2 <<'MSG'
proto-breaking: the change above breaks clients generated from the previous protos.
Add a field or a method instead of changing one; if the break is intended, say why in
the commit message with a trailer line `Proto-Breaking: <why>` (or, before committing,
PROTO_BREAKING_ALLOWED='<why>' make lint).
MSG
exit 1
