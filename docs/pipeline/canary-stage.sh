#!/usr/bin/env bash
# A canary release stage for any CI that runs a shell: start the rollout,
# wait while the analyzer walks its steps, hold a manual approval before
# 100%, then wait for the promotion.
#
#   CANARY_ADDR=http://analyzer:9190 CANARY_SRE_TOKEN=... ./canary-stage.sh v1.5.0
#
# The spec is rollout.yaml beside this script (or ROLLOUT_SPEC), with
# ${VERSION} replaced by the first argument. The approval is
# CANARY_APPROVAL=yes|no, set by the CI's own approval step, or a prompt
# when run at a terminal.
#
# Exit codes are canaryctl's: 0 promoted; 1 rolled back, failed, refused or
# not approved; 2 timed out or left waiting at the gate; 3 analyzer
# unreachable.
set -euo pipefail

version=${1:?usage: canary-stage.sh VERSION}
spec=${ROLLOUT_SPEC:-$(dirname "$0")/rollout.yaml}
export CANARY_ACTOR=${CANARY_ACTOR:-pipeline}

sed "s|\${VERSION}|$version|g" "$spec" | canaryctl start -f - --reason "release $version"

# Through the analysis steps: 0 at the approval gate, 1 if the analyzer
# rolled the canary back.
canaryctl wait --until approval --timeout "${ANALYSIS_TIMEOUT:-2h}" || exit $?

approval=${CANARY_APPROVAL:-}
if [[ -z $approval && -t 0 ]]; then
  canaryctl status
  read -r -p "Promote $version to 100%? [yes/no] " approval
fi
case $approval in
  yes) canaryctl approve --reason "release $version approved" ;;
  no)
    canaryctl rollback --wait --reason "release $version not approved"
    exit 1
    ;;
  *)
    echo "the rollout waits at the approval gate: run canaryctl approve or canaryctl rollback" >&2
    exit 2
    ;;
esac

canaryctl wait --timeout "${PROMOTION_TIMEOUT:-30m}"
