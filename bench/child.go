package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// childSpec tells a child process what to measure: work off the runs
// already inserted in Target with a fresh runner.
type childSpec struct {
	Target     target        `json:"target"`
	Workflow   string        `json:"workflow"`
	Runs       int           `json:"runs"`
	Timeout    time.Duration `json:"timeout"`
	CPUProfile string        `json:"cpu_profile,omitempty"`
	Verbose    bool          `json:"verbose,omitempty"`
}

// childResult is what a child reports on stdout.
type childResult struct {
	Units      int     `json:"units"`
	ElapsedSec float64 `json:"elapsed_sec"`
	// BaseRSSKB is the RSS after opening the runner, before starting it.
	BaseRSSKB int64 `json:"base_rss_kb"`
	// PeakRSSKB is the process's peak RSS (VmHWM) at the end.
	PeakRSSKB int64  `json:"peak_rss_kb"`
	Err       string `json:"error,omitempty"`
}

// spawnChild runs this program again with -child and decodes its result.
func (h *harness) spawnChild(ctx context.Context, spec childSpec) (*childResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe, "-child", string(b))
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	runErr := cmd.Run()
	var res childResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return nil, fmt.Errorf("child process: %v (output %q)", runErr, out.String())
	}
	if res.Err != "" {
		return nil, fmt.Errorf("child process: %s", res.Err)
	}
	if runErr != nil {
		return nil, fmt.Errorf("child process: %w", runErr)
	}
	return &res, nil
}

// runChild is the child side: it prints one JSON childResult.
func runChild(ctx context.Context, raw string, stdout, stderr io.Writer) int {
	res, err := childMain(ctx, raw, stderr)
	if err != nil {
		res = &childResult{Err: err.Error()}
	}
	_ = json.NewEncoder(stdout).Encode(res)
	if err != nil {
		return 1
	}
	return 0
}

func childMain(ctx context.Context, raw string, stderr io.Writer) (*childResult, error) {
	var spec childSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		return nil, fmt.Errorf("decode spec: %w", err)
	}
	level := slog.Level(100)
	if spec.Verbose {
		level = slog.LevelWarn
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	t := spec.Target
	if t.Backend == "postgres" {
		pool, err := pgxpool.New(ctx, t.BaseURL)
		if err != nil {
			return nil, err
		}
		defer pool.Close()
		t.admin = pool
	}
	defer func() {
		if t.ro != nil {
			_ = t.ro.Close()
		}
	}()
	steps := stepsOf[spec.Workflow]
	p := newProbe(spec.Runs, steps, false)
	r, err := openOurs(ctx, t.oursURL(), spec.Workflow, p, logger)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	base := rssKB("VmRSS")
	var prof *phaseProfiler
	if spec.CPUProfile != "" {
		prof = &phaseProfiler{dir: filepath.Dir(spec.CPUProfile), name: filepath.Base(spec.CPUProfile)}
	}
	elapsed, err := workOurs(ctx, r, &t, p, spec.Timeout, prof)
	if err != nil {
		return nil, err
	}
	if err := r.Close(); err != nil {
		return nil, fmt.Errorf("close runner: %w", err)
	}
	if err := p.verify(); err != nil {
		return nil, err
	}
	return &childResult{Units: spec.Runs * steps, ElapsedSec: elapsed.Seconds(), BaseRSSKB: base, PeakRSSKB: rssKB("VmHWM")}, nil
}

// pgHostPort returns the host:port of a PostgreSQL URL.
func pgHostPort(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "127.0.0.1:5432"
	}
	if u.Port() == "" {
		return u.Host + ":5432"
	}
	return u.Host
}
