package main

import (
	"math"
	"slices"
)

// median returns the median of xs (NaN when empty).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// minMax returns the smallest and largest of xs.
func minMax(xs []float64) (lo, hi float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN()
	}
	return slices.Min(xs), slices.Max(xs)
}

// percentile returns the p-th percentile (0–100) of xs by the
// nearest-rank method.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// ratios divides ours by theirs round by round.
func ratios(ours, theirs []float64) []float64 {
	n := min(len(ours), len(theirs))
	out := make([]float64, 0, n)
	for i := 0; i < n; i++ {
		if theirs[i] == 0 {
			out = append(out, math.Inf(1))
			continue
		}
		out = append(out, ours[i]/theirs[i])
	}
	return out
}
