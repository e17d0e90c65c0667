//go:build race

package soak

// raceEnabled reports a build with the race detector, which slows the
// SQLite backend (transpiled C, instrumented too) about eightfold.
const raceEnabled = true
