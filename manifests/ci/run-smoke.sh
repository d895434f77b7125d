#!/usr/bin/env sh
# Run the kubectl-driven CI smoke test: replace the last advpatch-smoke Job (a finished Job is
# immutable, and `kubectl apply` of an unchanged one does nothing), wait until it completes or
# fails (`kubectl wait` waits on one condition only, and would sit out its timeout on a failure),
# print its log, and exit 0 only if it completed.
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
while :; do
  state=$($kubectl -n "$namespace" get job advpatch-smoke \
    -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}')
  case " $state " in
    *" Complete "*) result=0; break ;;
    *" Failed "*) result=1; break ;;
  esac
  if [ "$waited" -ge "$timeout" ]; then
    echo "advpatch-smoke neither completed nor failed within ${timeout}s" >&2
    result=1
    break
  fi
  sleep "${POLL:-10}"
  waited=$((waited + ${POLL:-10}))
done
$kubectl -n "$namespace" logs job/advpatch-smoke --tail=50 || true
[ "$result" -eq 0 ] && echo "advpatch-smoke completed" || echo "advpatch-smoke failed" >&2
exit "$result"
