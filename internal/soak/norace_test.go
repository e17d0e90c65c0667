//go:build !race

package soak

// raceEnabled reports a build with the race detector.
const raceEnabled = false
