#!/usr/bin/env bash
# Every check CI runs, stopping at the first failure. Arguments go to pytest:
#   scripts/test.sh -x            stop at the first failing test
#   scripts/test.sh -m chaos      only the failure-injection tests
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The same prerequisites as ./parley: uv, the locked dependencies, redis-server.
# shellcheck source=../parley
source "$ROOT/parley"
parley_bootstrap

# uv.lock is the source of truth: `uv run` must never re-lock or upgrade.
export UV_FROZEN=1

step() {
    printf '\n==> %s\n' "$*" >&2
    "${PARLEY_UV[@]}" run "$@"
}

step ruff check .
step ruff format --check .
step mypy
step lint-imports
# The chart tests run the real helm: fetch it now (once; cached in .cache/k8s-tools/)
# so a slow download is not charged to a test's timeout.
step python scripts/fetch_k8s_tools.py

printf '\n==> pytest %s\n' "$*" >&2
status=0
"${PARLEY_UV[@]}" run pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "scripts/test.sh: pytest collected no tests (exit code 5); that counts as a failure." >&2
fi
exit "$status"
