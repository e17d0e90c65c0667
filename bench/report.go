package main

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

var nan = math.NaN()

// report is the JSON summary of a benchmark run; BENCHMARKS.md is
// rendered from it.
type report struct {
	Command    string            `json:"command"`
	StartedAt  time.Time         `json:"started_at"`
	FinishedAt time.Time         `json:"finished_at"`
	Env        envInfo           `json:"env"`
	Config     config            `json:"config"`
	Settings   map[string]string `json:"settings"`
	Rows       []*row            `json:"rows"`
	Trips      []*tripReport     `json:"trips,omitempty"`
	Failures   []string          `json:"failures,omitempty"`
}

// row is one metric of one scenario on one backend, one value per round.
type row struct {
	Scenario string `json:"scenario"`
	Backend  string `json:"backend"`
	Metric   string `json:"metric"`
	Unit     string `json:"unit"`
	// Better is "higher" or "lower".
	Better string    `json:"better"`
	Ours   []float64 `json:"ours"`
	River  []float64 `json:"river,omitempty"`
	// Compare says whether the ours/River ratio is meaningful.
	Compare bool `json:"compare"`
}

// jsonFloat keeps NaN out of JSON.
func clean(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return -1
	}
	return v
}

// record appends one round's values to the row for (scenario, backend,
// metric), creating it on first use. A NaN river value means River does
// not take part.
func (r *report) record(scenario, backend, metric, unit, better string, ours, river float64, compare bool) {
	var rw *row
	for _, x := range r.Rows {
		if x.Scenario == scenario && x.Backend == backend && x.Metric == metric {
			rw = x
			break
		}
	}
	if rw == nil {
		rw = &row{Scenario: scenario, Backend: backend, Metric: metric, Unit: unit, Better: better, Compare: compare}
		r.Rows = append(r.Rows, rw)
	}
	rw.Ours = append(rw.Ours, clean(ours))
	if !math.IsNaN(river) {
		rw.River = append(rw.River, clean(river))
	}
}

func (r *report) find(scenario, backend, metricPrefix string) *row {
	for _, x := range r.Rows {
		if x.Scenario == scenario && x.Backend == backend && strings.HasPrefix(x.Metric, metricPrefix) {
			return x
		}
	}
	return nil
}

// settingsFor lists the engine settings a report was made with.
func settingsFor(c config) map[string]string {
	return map[string]string{
		"River client":           fmt.Sprintf("one client, queue %q MaxWorkers %d, FetchCooldown %s, FetchPollInterval %s, other settings default", "default", riverMaxWorkers, riverFetchCooldown, riverFetchPollInterval),
		"River on PostgreSQL":    "riverpgxv5 on a pgxpool with pgx defaults (max(4, cores) connections), migrated with rivermigrate into the round's fresh schema",
		"River on SQLite":        "riversqlite on database/sql + modernc.org/sqlite, fresh file per round, journal_mode=WAL, synchronous=NORMAL, busy_timeout=10s, SetMaxOpenConns(1) as River's docs advise",
		"River chain step":       "each job inserts the next step with InsertTx and completes itself with JobCompleteTx in one transaction of its own",
		"Cloacina runner":        fmt.Sprintf("MaxConcurrentTasks %d, ClaimBatchSize default (= %d), PollInterval default (1s), opened from a URL (its own pool/connections)", riverMaxWorkers, riverMaxWorkers),
		"Cloacina on PostgreSQL": "fresh schema per round (created and migrated on Open), pgxpool with pgx defaults",
		"Cloacina on SQLite":     "fresh file per round: one writer connection (BEGIN IMMEDIATE) + reader pool, WAL, synchronous=NORMAL",
		"Sizes": fmt.Sprintf("burn-down %d (PostgreSQL) / %d (SQLite) runs; chain %d runs × 3; latency %d runs/s (and %d runs/s) for %s; fan-out %d runs × 22 tasks; idle %s after %s warm-up; RSS %v pending runs; census %d runs",
			c.BurnPG, c.BurnSQLite, c.ChainRuns, c.LatencyRate, c.LatencyLowRate, c.LatencyFor, c.FanRuns, c.IdleWindow, c.IdleWarmup, c.RSSSizes, c.TripsRuns),
		"Rounds": fmt.Sprintf("%d per scenario (RSS: %d); ours and River alternate who goes first", c.Rounds, c.RSSRounds),
	}
}

func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case v < 0 || math.IsNaN(v):
		return "n/a"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func summary(xs []float64) string {
	if len(xs) == 0 {
		return "—"
	}
	lo, hi := minMax(xs)
	if len(xs) == 1 {
		return fmtNum(xs[0])
	}
	return fmt.Sprintf("%s (%s–%s)", fmtNum(median(xs)), fmtNum(lo), fmtNum(hi))
}

var backendTitle = map[string]string{"postgres": "PostgreSQL", "sqlite": "SQLite"}

// target is one of issue 5's targets, evaluated on a report.
type goal struct {
	text    string
	backend string
	check   func(r *report) (measured string, met, ok bool)
}

func ratioGoal(scenario, backend string, want float64) func(r *report) (string, bool, bool) {
	return func(r *report) (string, bool, bool) {
		rw := r.find(scenario, backend, "throughput")
		if rw == nil || len(rw.River) == 0 {
			return "", false, false
		}
		m := median(ratios(rw.Ours, rw.River))
		return fmt.Sprintf("%.2f× (median of rounds)", m), m >= want, true
	}
}

func maxGoal(scenario, backend, metric string, limit float64, unit string) func(r *report) (string, bool, bool) {
	return func(r *report) (string, bool, bool) {
		rw := r.find(scenario, backend, metric)
		if rw == nil || len(rw.Ours) == 0 {
			return "", false, false
		}
		m := median(rw.Ours)
		return fmt.Sprintf("%s %s (median; worst round %s)", fmtNum(m), unit, fmtNum(maxOf(rw.Ours))), m <= limit, true
	}
}

func maxOf(xs []float64) float64 { _, hi := minMax(xs); return hi }

func goals(rate int) []goal {
	step := func(pc float64) string { return latencyMetric(stepMetric, pc, rate) }
	var g []goal
	g = append(g,
		goal{"Burn-down throughput ≥ 1.0× River", "postgres", ratioGoal("burndown", "postgres", 1.0)},
		goal{"Burn-down throughput ≥ 1.5× River", "sqlite", ratioGoal("burndown", "sqlite", 1.5)},
		goal{"Chain steps/s ≥ 2× River", "postgres", ratioGoal("chain", "postgres", 2.0)},
		goal{"Step latency p50 ≤ 5 ms", "postgres", maxGoal("latency", "postgres", step(50), 5, "ms")},
		goal{"Step latency p50 ≤ 2 ms", "sqlite", maxGoal("latency", "sqlite", step(50), 2, "ms")},
		goal{"Step latency p99 ≤ 25 ms", "postgres", maxGoal("latency", "postgres", step(99), 25, "ms")},
		goal{"Step latency p99 ≤ 25 ms", "sqlite", maxGoal("latency", "sqlite", step(99), 25, "ms")},
		goal{"Idle runner ≤ 2 statements/s", "postgres", maxGoal("idle", "postgres", "statements per second", 2, "stmts/s")},
		goal{"Idle runner ≤ 2 statements/s", "sqlite", maxGoal("idle", "sqlite", "statements per second", 2, "stmts/s")},
		goal{"Peak RSS grows < 2× from 10,000 to 100,000 pending runs", "postgres", maxGoal("rss", "postgres", "peak RSS growth", 1.999, "×")},
		goal{"Peak RSS grows < 2× from 10,000 to 100,000 pending runs", "sqlite", maxGoal("rss", "sqlite", "peak RSS growth", 1.999, "×")},
	)
	return g
}

const (
	goTestBegin = "<!-- BEGIN go-test-bench (replaced by bench/paste-gotest.sh; do not edit by hand) -->"
	goTestEnd   = "<!-- END go-test-bench -->"
)

// writeMarkdown renders BENCHMARKS.md from rep, keeping the pasted
// go-test-bench section from bench/gotest-bench.txt.
func (h *harness) writeMarkdown(rep *report) error {
	var b bytes.Buffer
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# Benchmarks: Cloacina vs River\n\n")
	w("<!-- Generated by the harness in bench/ — do not edit. Rerun it, or `cd bench && go run . -render` after editing bench/FINDINGS.md. -->\n\n")
	w("Generated %s (run took %s) by:\n\n    %s\n\n", rep.FinishedAt.Format("2006-01-02 15:04 UTC"),
		rep.FinishedAt.Sub(rep.StartedAt).Round(time.Second), rep.Command)
	w("Cloacina commit `%s` · River %s · %s · %d cores · %d MiB RAM.\n\n", rep.Env.commitLabel(), rep.Env.River,
		rep.Env.CPUModel, rep.Env.Cores, rep.Env.MemTotalMB)
	w("This machine is shared: other engineers run test suites on its 2 cores while the benchmark runs, so absolute figures move from round to round. " +
		"Each round runs both engines back to back (alternating who goes first) on fresh databases; **the per-round ratio ours/River is the figure to trust**. " +
		"Every figure is a median over rounds with the min–max range.\n\n")
	if len(rep.Failures) > 0 {
		w("**Failed rounds** (their figures are missing from the tables):\n\n")
		for _, f := range rep.Failures {
			w("- %s\n", f)
		}
		w("\n")
	}

	w("## Targets of issue 5\n\n| Target | Database | Measured | Met? |\n|---|---|---|---|\n")
	for _, g := range goals(rep.Config.LatencyRate) {
		measured, met, ok := g.check(rep)
		verdict := "not measured"
		switch {
		case ok && met:
			verdict = "met"
		case ok:
			verdict = "**not met**"
		default:
			measured = "—"
		}
		w("| %s | %s | %s | %s |\n", g.text, backendTitle[g.backend], measured, verdict)
	}
	w("\n")

	for _, be := range []string{"postgres", "sqlite"} {
		var rows []*row
		for _, rw := range rep.Rows {
			if rw.Backend == be {
				rows = append(rows, rw)
			}
		}
		if len(rows) == 0 {
			continue
		}
		w("## Results: %s\n\n", backendTitle[be])
		w("Ratios are ours/River: above 1 means more for ours (good for throughput, bad for latency, statements and memory).\n\n")
		w("| Scenario | Metric | Ours | River | Ours/River per round | Ours/River median |\n|---|---|---|---|---|---|\n")
		for _, rw := range rows {
			river, per, med := "—", "—", "—"
			if len(rw.River) > 0 {
				river = summary(rw.River) + " " + rw.Unit
			}
			if rw.Compare && len(rw.River) > 0 {
				rs := ratios(rw.Ours, rw.River)
				parts := make([]string, len(rs))
				for i, x := range rs {
					parts[i] = fmt.Sprintf("%.2f", x)
				}
				per = strings.Join(parts, ", ")
				med = fmt.Sprintf("**%.2f×**", median(rs))
			}
			w("| %s | %s | %s %s | %s | %s | %s |\n", rw.Scenario, rw.Metric, summary(rw.Ours), rw.Unit, river, per, med)
		}
		w("\n")
	}

	if len(rep.Trips) > 0 {
		w("## Round-trip census (PostgreSQL)\n\n")
		w("The same burn-down and chain, smaller (work phase only), and the idle window of the first idle round, with each engine's connections routed through a protocol-reading proxy in the harness " +
			"(`pgproxy.go`). A statement is an Execute or a simple Query; a round trip is a Sync or a simple Query, each answered by one ReadyForQuery. " +
			"Time is from the request to its ReadyForQuery, summed over all connections (\"share\" is of that sum). Through the proxy the engines run slower than in the tables above; the counts are exact.\n\n")
		w("| Scenario | Engine | Units | Statements per unit | Round trips per unit | Wall time | Summed round-trip time |\n|---|---|---|---|---|---|---|\n")
		for _, tr := range rep.Trips {
			w("| %s | %s | %d %ss | %.3f | %.3f | %.1f s | %.2f s |\n", tr.Scenario, tr.Engine, tr.Units, tr.Per,
				float64(tr.Statements)/float64(tr.Units), float64(tr.RoundTrips)/float64(tr.Units), tr.Seconds, tr.DBSeconds)
		}
		w("\n")
		for _, tr := range rep.Trips {
			w("<details><summary>%s / %s: round trips by kind (top %d by time)</summary>\n\n", tr.Scenario, tr.Engine, len(tr.Top))
			w("| Round trip (statements it carries) | Per %s | Mean ms | Share of time |\n|---|---|---|---|\n", tr.Per)
			for _, l := range tr.Top {
				w("| `%s` | %.3f | %.2f | %.1f%% |\n", strings.ReplaceAll(l.Label, "|", "\\|"), l.PerUnit, l.MeanMS, l.SharePct)
			}
			w("\n</details>\n\n")
		}
		renderDBViews(w, rep.Trips)
	}

	w("## Method\n\n")
	w("- **Counting.** Work is counted by the task functions (ours) and job workers (River) themselves: each records its (run, step) in an array. " +
		"A round passes only if every unit ran exactly once, and the database then shows every run completed (ours: plus the exact execution-event count per type, " +
		"5 per task and 2 per run; River: every job `completed`). A fast wrong result fails the round and the harness exits non-zero.\n")
	w("- **Throughput** (burn-down, chain, fan-out): runs are inserted first with the engine stopped; the clock runs from `Start` until the probe has seen every unit *and* the database shows no run/job left incomplete (polled every 2 ms once the probe is full).\n")
	w("- **Latency**: runs of a two-step chain are started open-loop at a fixed rate, each from its own goroutine at its scheduled time. Start latency: call to `ExecuteAsync` / River `Insert` → first step's function running. Step latency: first step's function returning (River: its work done, before its hand-off transaction) → second step's function running. "+
		"The issue's rate (%d/s, i.e. %d steps/s plus %d run inserts/s) is above what either engine sustains on this machine in this configuration, so its percentiles mostly measure queueing; the same scenario at %d/s shows the latency of an engine that keeps up. The targets are judged at %d/s.\n",
		rep.Config.LatencyRate, 2*rep.Config.LatencyRate, rep.Config.LatencyRate, rep.Config.LatencyLowRate, rep.Config.LatencyRate)
	w("- **CPU per 1000 steps** (throughput scenarios): user+system CPU from /proc over the work phase, of the harness process (engine, driver and the trivial task functions) and of every PostgreSQL server process. The server figure includes whatever else the shared server did meanwhile.\n")
	w("- **Fan-out/fan-in and RSS**: runs are inserted by the harness, then a child process (the same binary with `-child`) opens a runner, works them off and reports its peak RSS (`VmHWM` from /proc/self/status), so the figure is that of the runner alone.\n")
	w("- **Idle**: one started runner (ours) and one started River client with nothing to do; statements are counted over the window after a warm-up. ")
	w("PostgreSQL: each engine's connections go through the counting proxy and every Execute/simple Query counts (BEGIN and COMMIT included, and the pool's health-check pings, which `pg_stat_statements` does not see); the proxy sees only the engine under test, whatever else the server does. ")
	w("SQLite: both engines get a `*sql.DB` whose database/sql driver wraps modernc's and counts every Exec/Query plus BEGIN/COMMIT/ROLLBACK (Cloacina through `OpenDB` with its own `sqlite.DSN`, River through `riversqlite.New`).\n\n")

	w("## Settings\n\n| What | Setting |\n|---|---|\n")
	for _, k := range []string{"Cloacina runner", "Cloacina on PostgreSQL", "Cloacina on SQLite", "River client", "River on PostgreSQL", "River on SQLite", "River chain step", "Sizes", "Rounds"} {
		if v, ok := rep.Settings[k]; ok {
			w("| %s | %s |\n", k, v)
		}
	}
	w("\n## Machine and versions\n\n| What | Version |\n|---|---|\n")
	e := rep.Env
	for _, kv := range [][2]string{
		{"CPU", fmt.Sprintf("%s, %d cores", e.CPUModel, e.Cores)}, {"RAM", fmt.Sprintf("%d MiB", e.MemTotalMB)}, {"Kernel", e.Kernel},
		{"Go", e.GoVersion}, {"PostgreSQL", e.Postgres}, {"SQLite", e.SQLite + " (" + e.SQLiteDriver + ")"},
		{"River", fmt.Sprintf("river %s, riverpgxv5 %s, riversqlite %s", e.River, e.RiverPGX, e.RiverSQLite)}, {"pgx", e.PGX},
		{"Cloacina", "commit " + e.commitLabel()},
	} {
		w("| %s | %s |\n", kv[0], kv[1])
	}
	w("\n")

	findings, err := os.ReadFile(filepath.Join(h.benchDir, "FINDINGS.md"))
	if err == nil {
		w("<!-- The section below is bench/FINDINGS.md, included verbatim. -->\n\n")
		b.Write(bytes.TrimSpace(findings))
		w("\n\n")
	}

	w("## Library micro-benchmarks (`go test -bench`)\n\n")
	w("The library's own benchmarks (`bench_test.go`), pasted by `bench/paste-gotest.sh` on the machine above: "+
		"one runner with MaxConcurrentTasks 100 and otherwise default settings; the runs (10,000 single-task runs; "+
		"1,000 runs of a 10-task chain) are created first from 16 goroutines, then the timer covers the runner working them off "+
		"with every event written. The chain's hand-off (one task's function returning → the next task's function starting) "+
		"is measured during that burn-down, so it includes the wait behind the other runs' queued steps; "+
		"the unloaded hand-off is the latency scenario's rate-50/s step figure above. "+
		"`DeleteEventsBefore` times one retention pass (`Runner.DeleteEventsBefore`, batches of 1,000) over 200,000 old events "+
		"of a finished run recorded after none or 20,000 old events of a run still going, which the pass keeps; "+
		"on PostgreSQL the table is analyzed first, as autovacuum would have.\n\n%s\n", goTestBegin)
	b.WriteString(goTestSection(filepath.Join(h.benchDir, "gotest-bench.txt")))
	w("%s\n", goTestEnd)
	return os.WriteFile(h.cfg.Markdown, b.Bytes(), 0o644)
}

func goTestSection(path string) string {
	raw, err := os.ReadFile(path)
	if err != nil || len(bytes.TrimSpace(raw)) == 0 {
		return "\nNone pasted yet: run `bench/paste-gotest.sh` to add the library's own `go test -bench` figures here.\n\n"
	}
	return "\n```\n" + strings.TrimSpace(string(raw)) + "\n```\n\n"
}

// pasteGoTest replaces the go-test-bench section of the Markdown file at
// md with the contents of src (and copies src to bench/gotest-bench.txt's
// place only through the script).
func pasteGoTest(md, src string) error {
	doc, err := os.ReadFile(md)
	if err != nil {
		return err
	}
	s := string(doc)
	i := strings.Index(s, goTestBegin)
	j := strings.Index(s, goTestEnd)
	if i < 0 || j < i {
		return errors.New("the go-test-bench markers are missing from " + md + ": regenerate it with the harness")
	}
	s = s[:i+len(goTestBegin)] + "\n" + goTestSection(src) + s[j:]
	return os.WriteFile(md, []byte(s), 0o644)
}
