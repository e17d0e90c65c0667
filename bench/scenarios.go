package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/driver/sqlite"
)

// insertWorkers is how many goroutines insert runs before a burn-down.
func insertWorkers(backend string) int {
	if backend == "postgres" {
		return 8
	}
	return 4
}

// throughput runs one round of the burn-down or chain scenario: N runs
// inserted first, then worked; units (tasks or jobs) per second of the
// work phase.
func (h *harness) throughput(ctx context.Context, scenario, backend string, round int) (string, error) {
	wf, runs, unit := wfBurn, h.cfg.BurnPG, "tasks/s"
	cpu := map[string]cpuSample{}
	if backend == "sqlite" {
		runs = h.cfg.BurnSQLite
	}
	if scenario == "chain" {
		wf, runs, unit = wfChain, h.cfg.ChainRuns, "steps/s"
	}
	steps := stepsOf[wf]
	res := map[string]float64{}
	for _, eng := range engineOrder(round) {
		v, c, err := h.throughputOne(ctx, scenario, backend, eng, wf, runs, steps, round)
		if err != nil {
			return "", fmt.Errorf("%s: %w", eng, err)
		}
		res[eng] = v
		cpu[eng] = c
	}
	h.report.record(scenario, backend, "throughput", unit, "higher", res["ours"], res["river"], true)
	perK := func(d time.Duration) float64 { return d.Seconds() * 1000 / float64(runs*steps) * 1000 }
	h.report.record(scenario, backend, "CPU of the harness process per 1000 steps", "ms", "lower",
		perK(cpu["ours"].self), perK(cpu["river"].self), true)
	if backend == "postgres" {
		h.report.record(scenario, backend, "CPU of the PostgreSQL server per 1000 steps (whole server)", "ms", "lower",
			perK(cpu["ours"].postgres), perK(cpu["river"].postgres), true)
	}
	return fmt.Sprintf("%d runs × %d steps: ours %.0f %s, river %.0f %s, ours/river %.2f",
		runs, steps, res["ours"], unit, res["river"], unit, res["ours"]/res["river"]), nil
}

func (h *harness) throughputOne(ctx context.Context, scenario, backend, engine, wf string, runs, steps, round int) (_ float64, cpu cpuSample, _ error) {
	t, err := h.newTarget(ctx, backend, engine, scenario)
	if err != nil {
		return 0, cpu, err
	}
	defer func() { _ = t.drop(ctx) }()
	p := newProbe(runs, steps, false)
	prof := h.profilerFor(engine, scenario, backend, round)
	var elapsed time.Duration
	if engine == "ours" {
		r, err := openOurs(ctx, t.oursURL(), wf, p, h.logger)
		if err != nil {
			return 0, cpu, err
		}
		defer r.Close()
		if err := insertOurs(ctx, r, wf, runs, insertWorkers(backend)); err != nil {
			return 0, cpu, err
		}
		c0 := sampleCPU()
		elapsed, err = workOurs(ctx, r, t, p, h.cfg.Timeout, prof)
		cpu = sampleCPU().sub(c0)
		if err != nil {
			return 0, cpu, err
		}
		if err := r.Close(); err != nil {
			return 0, cpu, fmt.Errorf("close runner: %w", err)
		}
		if err := p.verify(); err != nil {
			return 0, cpu, err
		}
		if err := verifyOurs(ctx, t, runs, steps); err != nil {
			return 0, cpu, err
		}
	} else {
		rh, err := openRiver(ctx, t, p, h.logger, "", "")
		if err != nil {
			return 0, cpu, err
		}
		defer rh.close()
		if err := rh.insert(ctx, runs, steps-1); err != nil {
			return 0, cpu, err
		}
		c0 := sampleCPU()
		elapsed, err = workRiver(ctx, rh, t, p, h.cfg.Timeout, prof)
		cpu = sampleCPU().sub(c0)
		if err != nil {
			return 0, cpu, err
		}
		if err := p.verify(); err != nil {
			return 0, cpu, err
		}
		if err := verifyRiver(ctx, t, runs*steps); err != nil {
			return 0, cpu, err
		}
	}
	return float64(runs*steps) / elapsed.Seconds(), cpu, nil
}

// latencyResult holds one engine's latencies of one round, in ms.
type latencyResult struct {
	start, step []float64
	rate        float64
}

// latency runs one round of the latency scenario: runs of a two-step
// chain started one by one at a fixed rate while the engine runs; then
// the same at the low rate, if set, to show the latency of an engine that
// is not saturated.
func (h *harness) latency(ctx context.Context, backend string, round int) (string, error) {
	rates := []int{h.cfg.LatencyRate}
	if h.cfg.LatencyLowRate > 0 {
		rates = append(rates, h.cfg.LatencyLowRate)
	}
	var lines []string
	for _, rate := range rates {
		res := map[string]*latencyResult{}
		for _, eng := range engineOrder(round) {
			lr, err := h.latencyOne(ctx, backend, eng, rate)
			if err != nil {
				return "", fmt.Errorf("%s at %d/s: %w", eng, rate, err)
			}
			res[eng] = lr
		}
		o, r := res["ours"], res["river"]
		for _, pc := range []float64{50, 95, 99} {
			h.report.record("latency", backend, latencyMetric("start → first task running", pc, rate), "ms", "lower",
				percentile(o.start, pc), percentile(r.start, pc), true)
		}
		for _, pc := range []float64{50, 95, 99} {
			h.report.record("latency", backend, latencyMetric(stepMetric, pc, rate), "ms", "lower",
				percentile(o.step, pc), percentile(r.step, pc), true)
		}
		h.report.record("latency", backend, fmt.Sprintf("achieved start rate @ %d/s", rate), "runs/s", "higher", o.rate, r.rate, false)
		lines = append(lines, fmt.Sprintf("%d runs at %.0f/s: start p50/p99 ours %.1f/%.1f ms, river %.1f/%.1f ms; step p50/p99 ours %.1f/%.1f ms, river %.1f/%.1f ms",
			len(o.start), o.rate,
			percentile(o.start, 50), percentile(o.start, 99), percentile(r.start, 50), percentile(r.start, 99),
			percentile(o.step, 50), percentile(o.step, 99), percentile(r.step, 50), percentile(r.step, 99)))
	}
	return strings.Join(lines, " | "), nil
}

// stepMetric names the step latency.
const stepMetric = "step: task done → next task running"

// latencyMetric names a latency percentile at a start rate.
func latencyMetric(what string, pc float64, rate int) string {
	return fmt.Sprintf("%s p%.0f @ %d/s", what, pc, rate)
}

func (h *harness) latencyOne(ctx context.Context, backend, engine string, rate int) (*latencyResult, error) {
	n := int(float64(rate) * h.cfg.LatencyFor.Seconds())
	if n < 1 {
		return nil, errors.New("latency scenario starts no runs: raise -latency-rate or -latency-for")
	}
	interval := time.Second / time.Duration(rate)
	t, err := h.newTarget(ctx, backend, engine, "latency")
	if err != nil {
		return nil, err
	}
	defer func() { _ = t.drop(ctx) }()
	p := newProbe(n, 2, true)
	calls := make([]int64, n)

	var startOne func(ctx context.Context, i int) error
	var work func() error
	var stopEngine func() error
	pending := ""
	if engine == "ours" {
		r, err := openOurs(ctx, t.oursURL(), wfLat, p, h.logger)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		if err := r.Start(ctx); err != nil {
			return nil, err
		}
		startOne = func(ctx context.Context, i int) error {
			in, err := cloacina.ContextFrom(map[string]any{"i": i})
			if err != nil {
				return err
			}
			_, err = r.ExecuteAsync(ctx, wfLat, in)
			return err
		}
		stopEngine = func() error {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			return r.Stop(sctx)
		}
		pending = oursPending(t)
		work = func() error { return verifyOurs(ctx, t, n, 2) }
	} else {
		rh, err := openRiver(ctx, t, p, h.logger, "", "")
		if err != nil {
			return nil, err
		}
		defer rh.close()
		if err := rh.start(ctx); err != nil {
			return nil, err
		}
		startOne = func(ctx context.Context, i int) error { return rh.insertOne(ctx, i, 1) }
		stopEngine = func() error {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			return rh.stop(sctx)
		}
		pending = riverPending(t)
		work = func() error { return verifyRiver(ctx, t, 2*n) }
	}
	// Let the engine settle (first claims, River's leader election).
	time.Sleep(500 * time.Millisecond)

	// Open loop: run i is started at its scheduled time whatever the
	// previous starts cost, each from its own goroutine.
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	stopProfile := h.profilerFor(engine, fmt.Sprintf("latency%d", rate), backend, 0).start()
	t0 := time.Now()
	for i := range n {
		if d := time.Until(t0.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			calls[i] = p.now()
			if err := startOne(ctx, i); err != nil {
				errMu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("start run %d: %w", i, err)
				}
				errMu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	achieved := float64(n) / time.Since(t0).Seconds()
	stopProfile()
	if firstErr != nil {
		_ = stopEngine()
		return nil, firstErr
	}
	_, err = waitDone(ctx, p, h.cfg.Timeout, t0, func() error { return t.waitZero(ctx, pending, h.cfg.Timeout) })
	if serr := stopEngine(); serr != nil && err == nil {
		err = fmt.Errorf("stop: %w", serr)
	}
	if err != nil {
		return nil, err
	}
	if err := p.verify(); err != nil {
		return nil, err
	}
	if err := work(); err != nil {
		return nil, err
	}
	lr := &latencyResult{rate: achieved, start: make([]float64, n), step: make([]float64, n)}
	for i := range n {
		lr.start[i] = float64(p.startNs[2*i].Load()-calls[i]) / 1e6
		lr.step[i] = float64(p.startNs[2*i+1].Load()-p.endNs[2*i].Load()) / 1e6
	}
	return lr, nil
}

// fanout runs one round of the fan-out/fan-in scenario (ours only) in a
// child process, so its peak RSS is that of the work alone.
func (h *harness) fanout(ctx context.Context, backend string, round int) (string, error) {
	res, err := h.childWork(ctx, backend, "fanout", wfFan, h.cfg.FanRuns, round)
	if err != nil {
		return "", err
	}
	tps := float64(res.Units) / res.ElapsedSec
	h.report.record("fanout", backend, "throughput (1→20→1)", "tasks/s", "higher", tps, nan, false)
	h.report.record("fanout", backend, "peak RSS", "MiB", "lower", float64(res.PeakRSSKB)/1024, nan, false)
	return fmt.Sprintf("%d runs × %d tasks: ours %.0f tasks/s, peak RSS %.1f MiB", h.cfg.FanRuns, stepsOf[wfFan], tps,
		float64(res.PeakRSSKB)/1024), nil
}

// rssGrowth measures the peak RSS of a runner working off N pending
// single-task runs, for each configured N, in a child process each.
func (h *harness) rssGrowth(ctx context.Context, backend string, round int) (string, error) {
	var parts []string
	peaks := make([]float64, 0, len(h.cfg.RSSSizes))
	for _, n := range h.cfg.RSSSizes {
		res, err := h.childWork(ctx, backend, "rss", wfBurn, n, round)
		if err != nil {
			return "", fmt.Errorf("%d pending runs: %w", n, err)
		}
		mb := float64(res.PeakRSSKB) / 1024
		peaks = append(peaks, mb)
		h.report.record("rss", backend, fmt.Sprintf("peak RSS working off %d pending runs", n), "MiB", "lower", mb, nan, false)
		parts = append(parts, fmt.Sprintf("%d pending: peak %.1f MiB (base %.1f MiB, %.0f tasks/s)", n, mb,
			float64(res.BaseRSSKB)/1024, float64(res.Units)/res.ElapsedSec))
	}
	if len(peaks) >= 2 {
		g := peaks[len(peaks)-1] / peaks[0]
		h.report.record("rss", backend, fmt.Sprintf("peak RSS growth %d → %d", h.cfg.RSSSizes[0], h.cfg.RSSSizes[len(peaks)-1]), "×", "lower", g, nan, false)
		parts = append(parts, fmt.Sprintf("growth %.2f×", g))
	}
	return strings.Join(parts, "; "), nil
}

// childWork inserts runs of wf into a fresh database (ours), then has a
// child process open a runner, work them all off and report its peak RSS;
// the parent then checks the database.
func (h *harness) childWork(ctx context.Context, backend, scenario, wf string, runs, round int) (*childResult, error) {
	t, err := h.newTarget(ctx, backend, "ours", scenario)
	if err != nil {
		return nil, err
	}
	defer func() { _ = t.drop(ctx) }()
	r, err := openOurs(ctx, t.oursURL(), wf, newProbe(0, 1, false), h.logger)
	if err != nil {
		return nil, err
	}
	err = insertOurs(ctx, r, wf, runs, insertWorkers(backend))
	if cerr := r.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	spec := childSpec{Target: *t, Workflow: wf, Runs: runs, Timeout: h.cfg.Timeout, Verbose: h.cfg.Verbose}
	if prof := h.profilerFor("ours", scenario, backend, round); prof != nil {
		spec.CPUProfile = filepath.Join(prof.dir, prof.name)
	}
	res, err := h.spawnChild(ctx, spec)
	if err != nil {
		return nil, err
	}
	if err := verifyOurs(ctx, t, runs, stepsOf[wf]); err != nil {
		return nil, err
	}
	return res, nil
}

// idle counts the database statements of one started, idle runner (ours)
// and one started, idle River client, over the idle window after a
// warm-up.
func (h *harness) idle(ctx context.Context, backend string, round int) (string, error) {
	res := map[string][2]float64{}
	for _, eng := range engineOrder(round) {
		stmts, trips, err := h.idleOne(ctx, backend, eng, round == 1)
		if err != nil {
			return "", fmt.Errorf("%s: %w", eng, err)
		}
		res[eng] = [2]float64{stmts, trips}
	}
	h.report.record("idle", backend, "statements per second, idle", "stmts/s", "lower", res["ours"][0], res["river"][0], true)
	line := fmt.Sprintf("ours %.2f stmts/s, river %.2f stmts/s", res["ours"][0], res["river"][0])
	if backend == "postgres" {
		h.report.record("idle", backend, "round trips per second, idle", "trips/s", "lower", res["ours"][1], res["river"][1], true)
		line += fmt.Sprintf(" (round trips: ours %.2f/s, river %.2f/s)", res["ours"][1], res["river"][1])
	}
	return line, nil
}

func (h *harness) idleOne(ctx context.Context, backend, engine string, record bool) (stmts, trips float64, err error) {
	t, err := h.newTarget(ctx, backend, engine, "idle")
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = t.drop(ctx) }()
	p := newProbe(0, 1, false)

	var count func() (int64, int64)
	var proxy *pgProxy
	hostport := ""
	if backend == "postgres" {
		proxy, err = startProxy(pgHostPort(h.cfg.PostgresURL))
		if err != nil {
			return 0, 0, err
		}
		defer proxy.close()
		hostport = proxy.addr()
		count = func() (int64, int64) {
			s := proxy.snapshot()
			return s.Statements, s.RoundTrips
		}
	} else {
		registerCountingDriver()
		count = func() (int64, int64) { return sqliteStatements.Load(), 0 }
	}

	var stop func() error
	if engine == "ours" {
		wf, err := oursWorkflow(wfBurn, p)
		if err != nil {
			return 0, 0, err
		}
		var r *cloacina.Runner
		if backend == "postgres" {
			r, err = cloacina.Open(ctx, t.urlVia(hostport), oursConfig(wf, h.logger))
		} else {
			// The application's *sql.DB, through the counting driver, with
			// Cloacina's own DSN; one connection, like Cloacina's writer.
			var db *sql.DB
			db, err = sql.Open(countingDriverName, sqlite.DSN(t.Path))
			if err == nil {
				db.SetMaxOpenConns(1)
				defer db.Close()
				r, err = cloacina.OpenDB(ctx, db, oursConfig(wf, h.logger))
			}
		}
		if err != nil {
			return 0, 0, err
		}
		defer r.Close()
		if err := r.Start(ctx); err != nil {
			return 0, 0, err
		}
		stop = func() error {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			return r.Stop(sctx)
		}
	} else {
		drv := ""
		if backend == "sqlite" {
			drv = countingDriverName
		}
		rh, err := openRiver(ctx, t, p, h.logger, hostport, drv)
		if err != nil {
			return 0, 0, err
		}
		defer rh.close()
		if err := rh.start(ctx); err != nil {
			return 0, 0, err
		}
		stop = func() error {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			return rh.stop(sctx)
		}
	}
	sleepCtx(ctx, h.cfg.IdleWarmup)
	s0, t0 := count()
	var snap0 proxyStats
	if proxy != nil {
		snap0 = proxy.snapshot()
	}
	began := time.Now()
	sleepCtx(ctx, h.cfg.IdleWindow)
	s1, t1 := count()
	window := time.Since(began).Seconds()
	if proxy != nil && record {
		tr := census(proxy.snapshot().sub(snap0), max(1, int(window+0.5)), "second")
		tr.Scenario, tr.Engine, tr.Seconds = "idle", engine, window
		h.report.Trips = append(h.report.Trips, tr)
	}
	if err := stop(); err != nil {
		return 0, 0, err
	}
	if ctx.Err() != nil {
		return 0, 0, ctx.Err()
	}
	return float64(s1-s0) / window, float64(t1-t0) / window, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// tripReport is the round-trip census of one engine in one scenario.
type tripReport struct {
	Scenario string `json:"scenario"`
	Engine   string `json:"engine"`
	Units    int    `json:"units"`
	// Per names the unit: "step" for work, "second" for idle.
	Per        string     `json:"per"`
	Seconds    float64    `json:"seconds"`
	Statements int64      `json:"statements"`
	RoundTrips int64      `json:"round_trips"`
	DBSeconds  float64    `json:"db_seconds"`
	Top        []tripLine `json:"top"`
	// DB is the server's own view of the same work phase.
	DB *dbView `json:"db,omitempty"`
}

// tripLine is one kind of round trip in a census.
type tripLine struct {
	Label      string  `json:"label"`
	Statements int     `json:"statements_per_trip"`
	Count      int64   `json:"count"`
	PerUnit    float64 `json:"per_unit"`
	MeanMS     float64 `json:"mean_ms"`
	SharePct   float64 `json:"share_pct"`
}

// trips runs the burn-down and the chain through the counting proxy (ours
// and River) and records, per unit of work, the statements and round
// trips each engine made and where the database time went.
func (h *harness) trips(ctx context.Context, round int) (string, error) {
	var parts []string
	for _, sc := range []struct{ scenario, wf string }{{"burndown", wfBurn}, {"chain", wfChain}} {
		for _, eng := range engineOrder(round) {
			tr, err := h.tripsOne(ctx, sc.scenario, sc.wf, eng)
			if err != nil {
				return "", fmt.Errorf("%s %s: %w", sc.scenario, eng, err)
			}
			h.report.Trips = append(h.report.Trips, tr)
			parts = append(parts, fmt.Sprintf("%s/%s %.2f stmts, %.2f trips per step", sc.scenario, eng,
				float64(tr.Statements)/float64(tr.Units), float64(tr.RoundTrips)/float64(tr.Units)))
		}
	}
	return strings.Join(parts, "; "), nil
}

func (h *harness) tripsOne(ctx context.Context, scenario, wf, engine string) (*tripReport, error) {
	runs := h.cfg.TripsRuns
	steps := stepsOf[wf]
	t, err := h.newTarget(ctx, "postgres", engine, "trips")
	if err != nil {
		return nil, err
	}
	defer func() { _ = t.drop(ctx) }()
	proxy, err := startProxy(pgHostPort(h.cfg.PostgresURL))
	if err != nil {
		return nil, err
	}
	defer proxy.close()
	p := newProbe(runs, steps, false)
	var (
		before, after proxyStats
		elapsed       time.Duration
		note          string
		view          *dbView
	)
	if engine == "ours" {
		wfd, err := oursWorkflow(wf, p)
		if err != nil {
			return nil, err
		}
		r, err := cloacina.Open(ctx, t.urlVia(proxy.addr()), oursConfig(wfd, h.logger))
		if err != nil {
			return nil, err
		}
		defer r.Close()
		if err := insertOurs(ctx, r, wf, runs, insertWorkers("postgres")); err != nil {
			return nil, err
		}
		before, note = proxy.snapshot(), pgssReset(ctx, h.admin)
		if elapsed, err = workOurs(ctx, r, t, p, h.cfg.Timeout, nil); err != nil {
			return nil, err
		}
		after = proxy.snapshot()
		if view, err = h.dbView(ctx, note, t.Schema, runs*steps); err != nil {
			return nil, err
		}
		if err := verifyOurs(ctx, t, runs, steps); err != nil {
			return nil, err
		}
	} else {
		rh, err := openRiver(ctx, t, p, h.logger, proxy.addr(), "")
		if err != nil {
			return nil, err
		}
		defer rh.close()
		if err := rh.insert(ctx, runs, steps-1); err != nil {
			return nil, err
		}
		before, note = proxy.snapshot(), pgssReset(ctx, h.admin)
		if elapsed, err = workRiver(ctx, rh, t, p, h.cfg.Timeout, nil); err != nil {
			return nil, err
		}
		after = proxy.snapshot()
		if view, err = h.dbView(ctx, note, t.Schema, runs*steps); err != nil {
			return nil, err
		}
		if err := verifyRiver(ctx, t, runs*steps); err != nil {
			return nil, err
		}
	}
	if err := p.verify(); err != nil {
		return nil, err
	}
	tr := census(after.sub(before), runs*steps, "step")
	tr.Scenario, tr.Engine, tr.Seconds, tr.DB = scenario, engine, elapsed.Seconds(), view
	return tr, nil
}

// dbView reads pg_stat_statements after a work phase, or records note
// when pgssReset found it unavailable.
func (h *harness) dbView(ctx context.Context, note, schema string, units int) (*dbView, error) {
	if note != "" {
		return &dbView{Note: note}, nil
	}
	return pgssRead(ctx, h.admin, schema, units)
}

// census summarises proxy counters over units of work (or seconds).
func census(d proxyStats, units int, per string) *tripReport {
	tr := &tripReport{Units: units, Per: per, Statements: d.Statements, RoundTrips: d.RoundTrips}
	var total time.Duration
	for _, ts := range d.Trips {
		total += ts.Total
	}
	tr.DBSeconds = total.Seconds()
	for label, ts := range d.Trips {
		if ts.Count <= 0 {
			continue
		}
		tr.Top = append(tr.Top, tripLine{Label: label, Statements: ts.Statements, Count: ts.Count,
			PerUnit: float64(ts.Count) / float64(units), MeanMS: ts.Total.Seconds() * 1000 / float64(ts.Count),
			SharePct: 100 * ts.Total.Seconds() / total.Seconds()})
	}
	sort.Slice(tr.Top, func(i, j int) bool { return tr.Top[i].SharePct > tr.Top[j].SharePct })
	if len(tr.Top) > 12 {
		tr.Top = tr.Top[:12]
	}
	return tr
}
