package soak

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// TestIdleRunnerStatementsPostgres measures what one idle runner costs the
// database: the statements it sends per second, counted by a pgx tracer
// on the pool the runner is opened on (BEGIN and COMMIT included; the
// wake-up listener's connection copies the pool's config, tracer
// included), the transactions they make, and the pool's liveness pings,
// which the tracer does not see.
//
// It uses the default poll and heartbeat intervals (5s and 5s on
// PostgreSQL). RunnerTimeout is 11s instead of 30s only to shorten the
// startup grace, after which the leader also removes expired runners in
// its heartbeat transaction; the steady-state rate does not depend on it.
// The window spans three heartbeats, from one to the third after it, once
// the grace is over. Statements sent in batches (BEGIN with the first
// statement, the writes with COMMIT) are counted one by one.
//
// (pg_stat_database.xact_commit is no cross-check over such a window: an
// idle backend flushes its counters up to ten seconds late. With
// log_statement=all on the runner's database, the server logged exactly
// the traced statements plus the pings.)
func TestIdleRunnerStatementsPostgres(t *testing.T) {
	t.Parallel()
	t.Run("no schedule", func(t *testing.T) {
		t.Parallel()
		idleRunner(t, nil)
	})
	// A runner that declares a schedule reads, once per poll interval,
	// when its next tick falls; between ticks it begins no transaction.
	t.Run("a schedule not due", func(t *testing.T) {
		t.Parallel()
		idleRunner(t, &cloacina.Schedule{Name: "yearly", Workflow: workflowName, Cron: "0 0 1 1 *"})
	})
}

func idleRunner(t *testing.T, schedule *cloacina.Schedule) {
	ctx := testContext(t, 2*time.Minute)
	schema := testdb.NewSchema(t)
	counter := newStatementCounter(pgx.Identifier{schema}.Sanitize())
	pcfg, err := pgxpool.ParseConfig(testdb.PostgresURL())
	require.NoError(t, err)
	pcfg.ConnConfig.Tracer = counter
	pcfg.ShouldPing = func(_ context.Context, p pgxpool.ShouldPingParams) bool {
		// pgxpool's default rule, counted.
		ping := p.IdleDuration > time.Second
		if ping {
			counter.ping()
		}
		return ping
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	cfg := &cloacina.Config{
		Schema:        schema,
		Workflows:     []*cloacina.Workflow{newWorkflow(behaviour{}, nil)},
		RunnerTimeout: 11 * time.Second,
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	what := "one idle runner"
	if schedule != nil {
		cfg.Schedules = []cloacina.Schedule{*schedule}
		what = fmt.Sprintf("one idle runner declaring a schedule not due (%q)", schedule.Cron)
	}
	r, err := cloacina.OpenPool(ctx, pool, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	require.NoError(t, r.Start(ctx))

	const cycles = 3
	var marks []statementMark
	grace := time.Now().Add(cfg.RunnerTimeout + 5*time.Second)
	for len(marks) <= cycles {
		select {
		case m := <-counter.marks:
			if m.at.After(grace) {
				marks = append(marks, m)
			}
		case <-ctx.Done():
			t.Fatalf("no heartbeat seen after %d: the heartbeat statement (matched by %s) changed?", len(marks), markStatement)
		}
	}
	first, last := marks[0], marks[cycles]
	secs := last.at.Sub(first.at).Seconds()
	perSec := func(n int64) string { return fmt.Sprintf("%.2f/s", float64(n)/secs) }
	lines := []string{
		fmt.Sprintf("%s, PostgreSQL, default poll and heartbeat (5s, 5s), leader, over %.1fs: %s statements (pgx tracer, BEGIN/COMMIT included), "+
			"%s transactions (BEGIN…COMMIT blocks and statements outside them), plus %s pool pings",
			what, secs, perSec(last.total-first.total), perSec(last.transactions-first.transactions), perSec(last.pings-first.pings)),
	}
	var kinds []string
	for k := range last.byStatement {
		if last.byStatement[k] > first.byStatement[k] {
			kinds = append(kinds, k)
		}
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		lines = append(lines, fmt.Sprintf("  %s  %s", perSec(last.byStatement[k]-first.byStatement[k]), k))
	}
	report(t, lines...)
}

// markStatement matches the heartbeat: the window of the idle
// measurement is bounded by heartbeats.
var markStatement = regexp.MustCompile(`SET heartbeat_at`)

// statementCounter is a pgx tracer counting statements by their text.
type statementCounter struct {
	schema       string // replaced by <schema> in statement labels
	mu           sync.Mutex
	total        int64
	transactions int64
	pings        int64
	byStatement  map[string]int64
	inTx         map[*pgx.Conn]bool
	marks        chan statementMark
}

// statementMark is the counter's state when a heartbeat began.
type statementMark struct {
	at           time.Time
	total        int64
	transactions int64
	pings        int64
	byStatement  map[string]int64
}

func newStatementCounter(schema string) *statementCounter {
	return &statementCounter{schema: schema, byStatement: map[string]int64{}, inTx: map[*pgx.Conn]bool{}, marks: make(chan statementMark, 16)}
}

var spaces = regexp.MustCompile(`\s+`)

func (c *statementCounter) TraceQueryStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	c.count(conn, data.SQL)
	return ctx
}

// TraceBatchQuery counts each statement of a batch.
func (c *statementCounter) TraceBatchQuery(_ context.Context, conn *pgx.Conn, data pgx.TraceBatchQueryData) {
	c.count(conn, data.SQL)
}

func (c *statementCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

func (c *statementCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (c *statementCounter) count(conn *pgx.Conn, sql string) {
	label := spaces.ReplaceAllString(strings.TrimSpace(strings.ReplaceAll(sql, c.schema, "<schema>")), " ")
	if len(label) > 90 {
		label = label[:90] + "…"
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total++
	c.byStatement[label]++
	switch verb := strings.ToLower(strings.Fields(label + " x")[0]); {
	case verb == "begin":
		c.inTx[conn] = true
		c.transactions++
	case verb == "commit" || verb == "rollback":
		delete(c.inTx, conn)
	case !c.inTx[conn]:
		c.transactions++ // a statement of its own is a transaction of its own
	}
	if markStatement.MatchString(sql) {
		m := statementMark{at: time.Now(), total: c.total, transactions: c.transactions, pings: c.pings,
			byStatement: make(map[string]int64, len(c.byStatement))}
		for k, v := range c.byStatement {
			m.byStatement[k] = v
		}
		select {
		case c.marks <- m:
		default:
		}
	}
}

func (c *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *statementCounter) ping() {
	c.mu.Lock()
	c.pings++
	c.mu.Unlock()
}
