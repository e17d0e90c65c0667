package main

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
)

// envInfo describes the machine and software a report was made with.
type envInfo struct {
	CPUModel       string `json:"cpu_model"`
	Cores          int    `json:"cores"`
	MemTotalMB     int64  `json:"mem_total_mb"`
	Kernel         string `json:"kernel"`
	GoVersion      string `json:"go_version"`
	Postgres       string `json:"postgres"`
	SQLite         string `json:"sqlite"`
	SQLiteDriver   string `json:"sqlite_driver"`
	River          string `json:"river"`
	RiverPGX       string `json:"river_pgxv5"`
	RiverSQLite    string `json:"river_sqlite"`
	PGX            string `json:"pgx"`
	Commit         string `json:"commit"`
	CommitDirty    bool   `json:"commit_dirty"`
	PgStatementsOK bool   `json:"pg_stat_statements"`
}

// collectEnv reads the machine from /proc and the versions from the
// build, the databases and git.
func (h *harness) collectEnv(ctx context.Context) envInfo {
	e := envInfo{Cores: runtime.NumCPU(), GoVersion: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		_ = f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if fields := strings.Fields(s.Text()); len(fields) >= 2 && fields[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(fields[1], 10, 64)
				e.MemTotalMB = kb / 1024
			}
		}
		_ = f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	if h.admin != nil {
		_ = h.admin.QueryRow(ctx, "SHOW server_version").Scan(&e.Postgres)
		_ = h.admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements') AND current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'").Scan(&e.PgStatementsOK)
	}
	if db, err := sql.Open("sqlite", ":memory:"); err == nil {
		_ = db.QueryRowContext(ctx, "SELECT sqlite_version()").Scan(&e.SQLite)
		_ = db.Close()
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			v := d.Version
			if d.Replace != nil {
				v = d.Replace.Version
			}
			switch d.Path {
			case "github.com/riverqueue/river":
				e.River = v
			case "github.com/riverqueue/river/riverdriver/riverpgxv5":
				e.RiverPGX = v
			case "github.com/riverqueue/river/riverdriver/riversqlite":
				e.RiverSQLite = v
			case "github.com/jackc/pgx/v5":
				e.PGX = v
			case "modernc.org/sqlite":
				e.SQLiteDriver = "modernc.org/sqlite " + v
			}
		}
	}
	// The engine measured is the library as of its last commit; commits
	// that touch only bench/ or BENCHMARKS.md do not change it.
	if out, err := exec.CommandContext(ctx, "git", "-C", h.repoRoot, "log", "-1", "--format=%H", "--", ".", ":!bench", ":!BENCHMARKS.md").Output(); err == nil {
		e.Commit = strings.TrimSpace(string(out))
	}
	// Only the library's own files count: bench/ changes do not make the
	// measured engine dirty.
	if out, err := exec.CommandContext(ctx, "git", "-C", h.repoRoot, "status", "--porcelain", "--", ".", ":!bench", ":!BENCHMARKS.md").Output(); err == nil {
		e.CommitDirty = len(strings.TrimSpace(string(out))) > 0
	}
	return e
}

// rssKB reads a field (VmRSS, VmHWM) of /proc/self/status in KiB.
func rssKB(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

func (e envInfo) commitLabel() string {
	c := e.Commit
	if len(c) > 12 {
		c = c[:12]
	}
	if e.CommitDirty {
		c += " (with uncommitted library changes)"
	}
	return fmt.Sprint(c)
}
