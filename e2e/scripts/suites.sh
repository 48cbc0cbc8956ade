#!/usr/bin/env bash
# The end-to-end suite's test binaries (e2e/tests/*.rs), built once, then run in two lanes side by
# side against the one control plane of with-cluster.sh, and last the floods, each alone:
#
#   lane aggregator  the binaries that register the cluster's one external metrics APIService
#                    (v1beta1.external.metrics.k8s.io): they take turns, one after another;
#   lane cluster     the others, one after another, beside the first lane (every test works in
#                    namespaces of its own; the suites mostly wait on the API server and levee);
#   alone            the floods (thousands of TLS clients, tens of thousands of tokens), which
#                    load both cores on purpose: nothing runs beside them, so that the timings
#                    other suites judge (a failover within its lease, a tick within its interval)
#                    are not judged under a load a flood makes.
#
# A binary not named below runs in the cluster lane. Each binary's output goes to
# .cache/e2e/<name>.log and is printed whole when it ends; a failure does not stop the others;
# at the end a table says how long each took, and the exit status is 1 when any failed.
#   e2e/scripts/with-cluster.sh e2e/scripts/suites.sh      (make e2e, make test)
#   E2E_SUITES="chart nats" e2e/scripts/with-cluster.sh e2e/scripts/suites.sh   only those
set -euo pipefail
cd "$(dirname "$0")/../.."

aggregator=(chart metrics_api with_keda)
alone=(metrics_api_flood token_flood)

logs="$PWD/.cache/e2e"
rm -rf "$logs"
mkdir -p "$logs"

# Build every test binary first; cargo prints where each one is.
cargo test -p levee-e2e --no-run --message-format=json-render-diagnostics >"$logs/build.json"
declare -A binary
while IFS=$'\t' read -r name path; do
  binary[$name]="$path"
done < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"], sep="\t")
' "$logs/build.json")
((${#binary[@]} > 0)) || { echo "e2e: cargo built no test binary" >&2; exit 1; }

wanted=(${E2E_SUITES:-$(printf '%s\n' "${!binary[@]}" | sort)})
for name in "${wanted[@]}"; do
  [[ -n "${binary[$name]:-}" ]] || { echo "e2e: no test binary '$name' (e2e/tests/$name.rs)" >&2; exit 2; }
done
member() { local x="$1"; shift; printf '%s\n' "$@" | grep -qx -- "$x"; }
lane_aggregator=() lane_cluster=() lane_alone=()
for name in "${wanted[@]}"; do
  if member "$name" "${aggregator[@]}"; then
    lane_aggregator+=("$name")
  elif member "$name" "${alone[@]}"; then
    lane_alone+=("$name")
  else
    lane_cluster+=("$name")
  fi
done

# suite LANE NAME: runs one binary as `cargo test` would (from the crate's directory), its output
# to its log, printed whole at its end; its time and result to the table.
suite() {
  local lane="$1" name="$2" start=$SECONDS status=0
  (cd e2e && "${binary[$name]}") >"$logs/$name.log" 2>&1 || status=$?
  {
    echo "e2e: ---- $name ($lane lane): $([[ $status == 0 ]] && echo passed || echo "FAILED ($status)") in $((SECONDS - start))s"
    cat "$logs/$name.log"
  } | flock "$logs/print.lock" cat >&2
  printf '%s\t%s\t%s\t%s\n' "$lane" "$name" "$((SECONDS - start))" "$status" >>"$logs/times.tsv"
  return "$status"
}

# lane NAME SUITE...: the suites one after another; fails when any failed, after all ran
lane() {
  local lane="$1" name failed=0
  shift
  for name in "$@"; do
    suite "$lane" "$name" || failed=1
  done
  return "$failed"
}

start=$SECONDS
status=0
lane aggregator "${lane_aggregator[@]}" &
aggregator_pid=$!
lane cluster "${lane_cluster[@]}" || status=1
wait "$aggregator_pid" || status=1
lane alone "${lane_alone[@]}" || status=1

{
  echo
  echo "e2e: the suites' times (seconds), $((SECONDS - start)) in all"
  sort -t $'\t' -k1,1 -k3,3nr "$logs/times.tsv" |
    awk -F '\t' '{ printf "  %-11s %-20s %5d  %s\n", $1, $2, $3, ($4 == 0 ? "ok" : "FAILED (" $4 ")") }'
} >&2
exit "$status"
