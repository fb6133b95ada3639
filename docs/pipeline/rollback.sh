#!/usr/bin/env bash
# rollback.sh SERVICE ENVIRONMENT [REASON]: the brief's manual rollback, at
# the traffic layer. Instead of reverting the image tag in Git and waiting
# for an ArgoCD sync (3-5 minutes), it sends every request back to stable in
# one weight change that every Envoy worker confirms within seconds; the
# GitOps revert can follow after the incident.
#
#   CANARY_SRE_TOKEN=... ./rollback.sh payment-service production "p95 doubled"
#
# The analyzer is CANARY_ADDR, or by convention
# http://canary-analyzer.SERVICE.ENVIRONMENT:9190.
set -euo pipefail

service=${1:?usage: rollback.sh SERVICE ENVIRONMENT [REASON]}
environment=${2:?usage: rollback.sh SERVICE ENVIRONMENT [REASON]}
reason=${3:-manual rollback}
export CANARY_ADDR=${CANARY_ADDR:-http://canary-analyzer.$service.$environment:9190}
export CANARY_ACTOR=${CANARY_ACTOR:-${USER:-rollback.sh}}

# 1. Canary to 0% at once. --wait answers once every live worker applied it;
#    after 10 s it fails and lists the workers that did not. A rollout the
#    analyzer already rolled back answers 409: the canary is at 0% already.
canaryctl rollback --wait --wait-timeout 10s --reason "$reason ($service/$environment)"

# 2. Watch for 5 minutes: the canary's request rate falls to zero.
for _ in $(seq "${MONITOR_ROUNDS:-10}"); do
  sleep "${MONITOR_INTERVAL_SECONDS:-30}"
  canaryctl status --decisions 0 | grep -E '^(weight|canary) '
done
