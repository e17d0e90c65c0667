// Command bench measures Cloacina side by side with River
// (github.com/riverqueue/river) on PostgreSQL and SQLite, as issue 5 asks:
// burn-down throughput, a 3-step chain, step latency, a fan-out/fan-in DAG,
// idle database traffic and memory growth with pending runs. Each scenario
// runs both engines alternately for several rounds on fresh databases, and
// counts completed work from what the task functions actually did.
//
// Run it from this directory:
//
//	go run . -scenarios all -rounds 3
//
// It prints one line per scenario and round, writes results/latest.json and
// regenerates ../BENCHMARKS.md. See README.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// allScenarios lists the scenarios in the order they run.
var allScenarios = []string{"burndown", "chain", "latency", "fanout", "idle", "rss", "trips"}

// config holds the command-line settings.
type config struct {
	Scenarios      []string      `json:"scenarios"`
	Backends       []string      `json:"backends"`
	Rounds         int           `json:"rounds"`
	PostgresURL    string        `json:"postgres_url"`
	BurnPG         int           `json:"burndown_postgres_runs"`
	BurnSQLite     int           `json:"burndown_sqlite_runs"`
	ChainRuns      int           `json:"chain_runs"`
	LatencyRate    int           `json:"latency_rate_per_s"`
	LatencyFor     time.Duration `json:"latency_duration"`
	LatencyLowRate int           `json:"latency_low_rate_per_s"`
	FanRuns        int           `json:"fanout_runs"`
	IdleWarmup     time.Duration `json:"idle_warmup"`
	IdleWindow     time.Duration `json:"idle_window"`
	RSSSizes       []int         `json:"rss_pending_runs"`
	RSSRounds      int           `json:"rss_rounds"`
	TripsRuns      int           `json:"trips_runs"`
	Timeout        time.Duration `json:"round_timeout"`
	CPUProfileDir  string        `json:"cpu_profile_dir,omitempty"`
	ProfileEngine  string        `json:"profile_engine,omitempty"`
	Out            string        `json:"-"`
	Markdown       string        `json:"-"`
	Verbose        bool          `json:"-"`
}

// harness is one benchmark run.
type harness struct {
	cfg      config
	admin    *pgxpool.Pool
	workdir  string
	repoRoot string
	benchDir string
	logger   *slog.Logger
	report   *report
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg       config
		scenarios = fs.String("scenarios", "all", "comma-separated scenarios ("+strings.Join(allScenarios, ",")+") or all")
		backends  = fs.String("backends", "postgres,sqlite", "comma-separated backends")
		rss       = fs.String("rss-sizes", "10000,100000", "pending runs for the RSS-growth scenario")
		scale     = fs.Float64("scale", 1, "multiply every run count by this (e.g. 0.1 for a quick check)")
		render    = fs.Bool("render", false, "only regenerate the Markdown from the JSON results (-out), running nothing")
		gotest    = fs.String("paste-gotest", "", "replace the go-test-bench section of the Markdown with this file's contents and exit")
		child     = fs.String("child", "", "internal: run one measurement in this process (JSON spec) and print its result")
	)
	fs.IntVar(&cfg.Rounds, "rounds", 3, "rounds per scenario (each round runs ours and River, alternating who goes first)")
	fs.StringVar(&cfg.PostgresURL, "pg", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL URL (each round uses a fresh schema in it)")
	fs.IntVar(&cfg.BurnPG, "burndown-pg", 50000, "burn-down runs on PostgreSQL")
	fs.IntVar(&cfg.BurnSQLite, "burndown-sqlite", 20000, "burn-down runs on SQLite")
	fs.IntVar(&cfg.ChainRuns, "chain", 5000, "chain runs (3 steps each)")
	fs.IntVar(&cfg.LatencyRate, "latency-rate", 500, "runs started per second in the latency scenario")
	fs.IntVar(&cfg.LatencyLowRate, "latency-low-rate", 50, "a second, unsaturated start rate for the latency scenario (0: none)")
	fs.DurationVar(&cfg.LatencyFor, "latency-for", 10*time.Second, "how long the latency scenario starts runs")
	fs.IntVar(&cfg.FanRuns, "fanout", 1000, "fan-out/fan-in runs (1→20→1)")
	fs.DurationVar(&cfg.IdleWarmup, "idle-warmup", 3*time.Second, "time an idle runner runs before counting starts")
	fs.DurationVar(&cfg.IdleWindow, "idle-window", 15*time.Second, "time over which idle statements are counted")
	fs.IntVar(&cfg.RSSRounds, "rss-rounds", 1, "rounds of the RSS-growth scenario")
	fs.IntVar(&cfg.TripsRuns, "trips", 2000, "runs of the round-trip census (PostgreSQL, through the counting proxy)")
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Minute, "deadline of one engine's work phase")
	fs.StringVar(&cfg.CPUProfileDir, "cpuprofile-dir", "", "write a CPU profile of each timed work phase into this directory")
	fs.StringVar(&cfg.ProfileEngine, "profile-engine", "ours", "which engine's phases -cpuprofile-dir covers: ours, river or all")
	fs.StringVar(&cfg.Out, "out", "results/latest.json", "JSON results file")
	fs.StringVar(&cfg.Markdown, "md", "", "Markdown report (default: BENCHMARKS.md at the repository root; \"-\" for none)")
	fs.BoolVar(&cfg.Verbose, "v", false, "log the engines' warnings and errors to stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *child != "" {
		return runChild(ctx, *child, stdout, stderr)
	}

	h := &harness{cfg: cfg}
	if err := h.locate(); err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	if h.cfg.Markdown == "" {
		h.cfg.Markdown = filepath.Join(h.repoRoot, "BENCHMARKS.md")
	}
	if *gotest != "" {
		if err := pasteGoTest(h.cfg.Markdown, *gotest); err != nil {
			fmt.Fprintln(stderr, "bench:", err)
			return 1
		}
		return 0
	}
	if *render {
		rep, err := loadReport(h.cfg.Out)
		if err != nil {
			fmt.Fprintln(stderr, "bench:", err)
			return 1
		}
		if err := h.writeMarkdown(rep); err != nil {
			fmt.Fprintln(stderr, "bench:", err)
			return 1
		}
		return 0
	}

	h.cfg.Scenarios = splitList(*scenarios)
	if slices.Contains(h.cfg.Scenarios, "all") {
		h.cfg.Scenarios = allScenarios
	}
	for _, s := range h.cfg.Scenarios {
		if !slices.Contains(allScenarios, s) {
			fmt.Fprintf(stderr, "bench: unknown scenario %q (have %s)\n", s, strings.Join(allScenarios, ", "))
			return 2
		}
	}
	h.cfg.Backends = splitList(*backends)
	for _, b := range h.cfg.Backends {
		if b != "postgres" && b != "sqlite" {
			fmt.Fprintf(stderr, "bench: unknown backend %q (have postgres, sqlite)\n", b)
			return 2
		}
	}
	for _, s := range splitList(*rss) {
		var n int
		if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
			fmt.Fprintf(stderr, "bench: bad -rss-sizes entry %q\n", s)
			return 2
		}
		h.cfg.RSSSizes = append(h.cfg.RSSSizes, n)
	}
	if *scale != 1 {
		sc := func(n int) int { return max(1, int(float64(n)**scale)) }
		h.cfg.BurnPG, h.cfg.BurnSQLite, h.cfg.ChainRuns = sc(h.cfg.BurnPG), sc(h.cfg.BurnSQLite), sc(h.cfg.ChainRuns)
		h.cfg.FanRuns, h.cfg.TripsRuns = sc(h.cfg.FanRuns), sc(h.cfg.TripsRuns)
		h.cfg.LatencyFor = time.Duration(float64(h.cfg.LatencyFor) * *scale)
		for i := range h.cfg.RSSSizes {
			h.cfg.RSSSizes[i] = sc(h.cfg.RSSSizes[i])
		}
	}
	if h.cfg.Rounds < 1 {
		fmt.Fprintln(stderr, "bench: -rounds must be at least 1")
		return 2
	}
	level := slog.Level(100) // silent
	if h.cfg.Verbose {
		level = slog.LevelWarn
	}
	h.logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	baseline := runtime.NumGoroutine()
	code := h.runAll(ctx, args, stdout, stderr)
	if err := checkGoroutines(baseline); err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	return code
}

// checkGoroutines fails when goroutines started during the run outlive
// it: every runner, River client, pool and proxy must have been stopped.
func checkGoroutines(baseline int) error {
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			var b strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
			return fmt.Errorf("goroutine leak: %d goroutines left, %d at start:\n%s", runtime.NumGoroutine(), baseline, b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// locate finds the repository root and the bench directory.
func (h *harness) locate() error {
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return fmt.Errorf("find the repository root (run from inside the repository): %w", err)
	}
	h.repoRoot = strings.TrimSpace(string(out))
	h.benchDir = filepath.Join(h.repoRoot, "bench")
	if !filepath.IsAbs(h.cfg.Out) {
		h.cfg.Out = filepath.Join(h.benchDir, h.cfg.Out)
	}
	return nil
}

func (h *harness) runAll(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	needPG := slices.Contains(h.cfg.Backends, "postgres")
	if needPG {
		pool, err := pgxpool.New(ctx, h.cfg.PostgresURL)
		if err == nil {
			err = pool.Ping(ctx)
		}
		if err != nil {
			fmt.Fprintf(stderr, "bench: PostgreSQL at %s: %v\n", h.cfg.PostgresURL, err)
			return 1
		}
		h.admin = pool
		defer pool.Close()
	}
	dir, err := os.MkdirTemp("", "cloacina-bench-")
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	h.workdir = dir
	defer os.RemoveAll(dir)

	h.report = &report{
		Command:   "cd bench && go run . " + strings.Join(args, " "),
		StartedAt: time.Now().UTC(),
		Env:       h.collectEnv(ctx),
		Config:    h.cfg,
		Settings:  settingsFor(h.cfg),
	}
	fmt.Fprintf(stdout, "cloacina %s vs river %s · %s · %d cores · %s\n", h.report.Env.commitLabel(), h.report.Env.River,
		h.report.Env.CPUModel, h.report.Env.Cores, runtime.Version())

	for _, sc := range h.cfg.Scenarios {
		for _, be := range h.cfg.Backends {
			if ctx.Err() != nil {
				break
			}
			h.runScenario(ctx, sc, be, stdout)
		}
	}
	h.report.FinishedAt = time.Now().UTC()
	if ctx.Err() != nil {
		h.report.Failures = append(h.report.Failures, "interrupted: "+ctx.Err().Error())
	}
	if err := h.saveReport(); err != nil {
		fmt.Fprintln(stderr, "bench: save results:", err)
		return 1
	}
	if h.cfg.Markdown != "-" {
		if err := h.writeMarkdown(h.report); err != nil {
			fmt.Fprintln(stderr, "bench: write markdown:", err)
			return 1
		}
	}
	fmt.Fprintf(stdout, "results: %s\n", h.cfg.Out)
	if h.cfg.Markdown != "-" {
		fmt.Fprintf(stdout, "report:  %s\n", h.cfg.Markdown)
	}
	if len(h.report.Failures) > 0 {
		fmt.Fprintf(stdout, "FAILED: %d scenario round(s) failed:\n", len(h.report.Failures))
		for _, f := range h.report.Failures {
			fmt.Fprintln(stdout, "  -", f)
		}
		return 1
	}
	return 0
}

// runScenario runs every round of one scenario on one backend, recording
// a failure (and going on with the next round) when a round fails.
func (h *harness) runScenario(ctx context.Context, scenario, backend string, stdout io.Writer) {
	rounds := h.cfg.Rounds
	switch scenario {
	case "fanout", "rss":
		if scenario == "rss" {
			rounds = h.cfg.RSSRounds
		}
	case "trips":
		if backend != "postgres" {
			return
		}
		rounds = 1
	}
	for round := 1; round <= rounds; round++ {
		if ctx.Err() != nil {
			return
		}
		runtime.GC()
		var line string
		var err error
		switch scenario {
		case "burndown":
			line, err = h.throughput(ctx, "burndown", backend, round)
		case "chain":
			line, err = h.throughput(ctx, "chain", backend, round)
		case "latency":
			line, err = h.latency(ctx, backend, round)
		case "fanout":
			line, err = h.fanout(ctx, backend, round)
		case "idle":
			line, err = h.idle(ctx, backend, round)
		case "rss":
			line, err = h.rssGrowth(ctx, backend, round)
		case "trips":
			line, err = h.trips(ctx, round)
		}
		prefix := fmt.Sprintf("%-8s %-8s round %d/%d", scenario, backend, round, rounds)
		if err != nil {
			msg := fmt.Sprintf("%s: %v", prefix, err)
			h.report.Failures = append(h.report.Failures, msg)
			fmt.Fprintf(stdout, "%s  FAIL: %v\n", prefix, err)
			continue
		}
		fmt.Fprintf(stdout, "%s  %s\n", prefix, line)
	}
}

// engineOrder alternates which engine goes first, round by round.
func engineOrder(round int) []string {
	if round%2 == 1 {
		return []string{"ours", "river"}
	}
	return []string{"river", "ours"}
}

func (h *harness) saveReport() error {
	if err := os.MkdirAll(filepath.Dir(h.cfg.Out), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(h.report, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(h.cfg.Out, append(b, '\n'), 0o644)
}

func loadReport(path string) (*report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read results (run the benchmark first): %w", err)
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	return &r, nil
}
