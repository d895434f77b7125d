#!/usr/bin/env sh
# Run the kubectl-driven CI smoke test: replace the last advpatch-smoke Job (a finished Job is
# immutable, and `kubectl apply` of an unchanged one does nothing), wait until it completes or
# fails (`kubectl wait` waits on one condition only, and would sit out its timeout on a failure),
# print its log, and exit 0 only if it completed. Past the timeout it deletes the Job, whose
# `advpatch submit --wait` then terminates the KFP run it started.
#
#   manifests/ci/run-smoke.sh manifests/overlays/single-user/cpu [timeout-seconds]
set -eu
overlay=${1:?usage: run-smoke.sh OVERLAY [TIMEOUT_SECONDS]}
timeout=${2:-5400}
kubectl=${KUBECTL:-kubectl}
namespace=$($kubectl kustomize "$overlay" | sed -n 's/^  namespace: //p' | head -n 1)
$kubectl -n "$namespace" delete job advpatch-smoke --ignore-not-found --wait=true
$kubectl apply -k "$overlay"
waited=0
errors=0
while :; do
  # a failed `kubectl get` (an API server restarting) is waited out, up to 5 in a row
  if state=$($kubectl -n "$namespace" get job advpatch-smoke \
      -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}'); then
    errors=0
  else
    errors=$((errors + 1))
    [ "$errors" -le 5 ] || { echo "kubectl get job advpatch-smoke failed $errors times in a row" >&2; exit 1; }
  fi
  case " $state " in
    *" Complete "*) result=0; break ;;
    *" Failed "*) result=1; break ;;
  esac
  if [ "$waited" -ge "$timeout" ]; then
    echo "advpatch-smoke neither completed nor failed within ${timeout}s: deleting it (its advpatch submit" \
      "then terminates the KFP run)" >&2
    $kubectl -n "$namespace" logs job/advpatch-smoke --tail=50 || true
    $kubectl -n "$namespace" delete job advpatch-smoke --wait=true || true
    exit 1
  fi
  sleep "${POLL:-10}"
  waited=$((waited + ${POLL:-10}))
done
$kubectl -n "$namespace" logs job/advpatch-smoke --tail=50 || true
[ "$result" -eq 0 ] && echo "advpatch-smoke completed" || echo "advpatch-smoke failed" >&2
exit "$result"
