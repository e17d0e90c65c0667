package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
)

// phaseProfiler writes a CPU profile of the harness process for each timed
// work phase it is asked to cover, one file per phase, so that
// `go tool pprof -top FILES…` shows where that engine's time went. A nil
// *phaseProfiler profiles nothing.
type phaseProfiler struct {
	dir  string
	name string
}

// profilerFor returns a profiler for one engine's phase, or nil when
// profiling is off or targets the other engine.
func (h *harness) profilerFor(engine, scenario, backend string, round int) *phaseProfiler {
	if h.cfg.CPUProfileDir == "" || (h.cfg.ProfileEngine != "all" && h.cfg.ProfileEngine != engine) {
		return nil
	}
	return &phaseProfiler{dir: h.cfg.CPUProfileDir, name: fmt.Sprintf("%s-%s-%s-r%d.prof", scenario, backend, engine, round)}
}

// start begins profiling and returns the function that ends it.
func (p *phaseProfiler) start() func() {
	if p == nil {
		return func() {}
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "cpu profile:", err)
		return func() {}
	}
	f, err := os.Create(filepath.Join(p.dir, p.name))
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpu profile:", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, "cpu profile:", err)
		_ = f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}
}
