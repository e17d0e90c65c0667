#!/usr/bin/env bash
# Puts the library's own `go test -bench` figures into BENCHMARKS.md.
#
#   bench/paste-gotest.sh          run the benchmarks in the repository root
#   bench/paste-gotest.sh FILE     paste an existing `go test -bench` output
#
# The output is kept as bench/gotest-bench.txt (the harness includes it on
# its next full run) and only the delimited go-test-bench section of
# BENCHMARKS.md is replaced.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$here/gotest-bench.txt"
if [[ $# -ge 1 ]]; then
	cp "$1" "$out"
else
	# Only the packages that have benchmarks, so the output is just theirs.
	pkgs=$(cd "$root" && grep -rl --include='*_test.go' '^func Benchmark' . | grep -v '^./bench/' | xargs -n1 dirname | sort -u)
	(cd "$root" && go test -run '^$' -bench . -benchmem $pkgs) | tee "$out"
fi
cd "$here" && go run . -paste-gotest "$out"
