package sqlite_test

import (
	"context"
	"database/sql"
	sqldriver "database/sql/driver"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"

	msqlite "modernc.org/sqlite"
)

// parses counts the statements SQLite parses on the connections of the
// "sqlite-counting" driver, by data source name: each Prepare, and each
// Exec or Query run as text (modernc prepares, runs and finalizes those
// every time).
type parses struct {
	prepares, unprepared atomic.Int64
	mu                   sync.Mutex
	texts                map[string]bool // every statement text parsed
}

var (
	parsesMu sync.Mutex
	parsesOf = map[string]*parses{}
)

// parsesFor returns the counts of the connections opened with dsn.
func parsesFor(dsn string) *parses {
	parsesMu.Lock()
	defer parsesMu.Unlock()
	p, ok := parsesOf[dsn]
	if !ok {
		p = &parses{texts: map[string]bool{}}
		parsesOf[dsn] = p
	}
	return p
}

func (p *parses) count(n *atomic.Int64, query string) {
	n.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.texts[query] = true
}

// seen returns every statement text parsed so far.
func (p *parses) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for q := range p.texts {
		out = append(out, q)
	}
	return out
}

func init() { sql.Register("sqlite-counting", countingDriver{}) }

// countingDriver is modernc's driver with its connections' statement
// entry points counted; everything else is modernc's.
type countingDriver struct{}

func (countingDriver) Open(dsn string) (sqldriver.Conn, error) {
	c, err := (&msqlite.Driver{}).Open(dsn)
	if err != nil {
		return nil, err
	}
	return &countingConn{c.(conn), parsesFor(dsn)}, nil
}

// conn is what database/sql uses of a modernc connection.
type conn interface {
	sqldriver.Conn
	sqldriver.ConnBeginTx
	sqldriver.ConnPrepareContext
	sqldriver.ExecerContext
	sqldriver.QueryerContext
	sqldriver.Pinger
	sqldriver.SessionResetter
	sqldriver.Validator
}

type countingConn struct {
	conn
	parses *parses
}

func (c *countingConn) Prepare(query string) (sqldriver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *countingConn) PrepareContext(ctx context.Context, query string) (sqldriver.Stmt, error) {
	c.parses.count(&c.parses.prepares, query)
	return c.conn.PrepareContext(ctx, query)
}

func (c *countingConn) ExecContext(ctx context.Context, query string, args []sqldriver.NamedValue) (sqldriver.Result, error) {
	c.parses.count(&c.parses.unprepared, query)
	return c.conn.ExecContext(ctx, query, args)
}

func (c *countingConn) QueryContext(ctx context.Context, query string, args []sqldriver.NamedValue) (sqldriver.Rows, error) {
	c.parses.count(&c.parses.unprepared, query)
	return c.conn.QueryContext(ctx, query, args)
}

// openCounting opens a Driver on a new database file through the
// counting driver, with one connection as Open's writer has, and returns
// the counts of its connections.
func openCounting(t *testing.T) (*sqlite.Driver, *sql.DB, *parses) {
	t.Helper()
	dsn := sqlite.DSN(testdb.SQLitePath(t))
	db, err := sql.Open("sqlite-counting", dsn)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	drv, err := sqlite.New(db)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, drv.Close()) })
	require.NoError(t, drv.Migrate(t.Context()))
	return drv, db, parsesFor(dsn)
}

// TestHotStatementsParsedOnce runs the engine's cycle (create runs, claim
// their tasks, finish them, end the runs) again and again on a single
// writer connection, as Open sets it up, and checks that once each batch
// size has been seen twice no statement is parsed any more: the hot
// statements stay prepared on the connection from one transaction to the
// next, and batch sizes map onto the same few statement texts.
func TestHotStatementsParsedOnce(t *testing.T) {
	t.Parallel()
	drv, _, parses := openCounting(t)
	cycle := cycler(t, drv)
	sizes := []int{1, 3, 7, 2}
	for range 2 {
		for _, n := range sizes {
			cycle(n)
		}
	}
	prepares, unprepared := parses.prepares.Load(), parses.unprepared.Load()
	for range 3 {
		for _, n := range sizes {
			cycle(n)
		}
	}
	require.Equal(t, prepares, parses.prepares.Load(), "statements prepared again")
	require.Equal(t, unprepared, parses.unprepared.Load(), "statements run unprepared")
}

// cycler returns a function that creates n runs of one task, claims and
// finishes the tasks and ends the runs, each step in a transaction of its
// own, the way the engine does.
func cycler(tb testing.TB, drv *sqlite.Driver) func(n int) {
	ctx := tb.Context()
	now := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	inTx := func(fn func(tx driver.Tx) error) {
		tb.Helper()
		tx, err := drv.Begin(ctx)
		require.NoError(tb, err)
		defer tx.Rollback(ctx)
		require.NoError(tb, fn(tx))
		require.NoError(tb, tx.Commit(ctx))
	}
	return func(n int) {
		tb.Helper()
		cs := &driver.ChangeSet{}
		for range n {
			pid, tid := uuid.New(), uuid.New()
			cs.NewPipelines = append(cs.NewPipelines, &driver.PipelineInsertParams{ID: pid, WorkflowName: "wf",
				WorkflowVersion: "v1", Status: driver.PipelinePending, Input: json.RawMessage(`{}`), Now: now})
			cs.NewTasks = append(cs.NewTasks, driver.TaskInsert{ID: tid, PipelineID: pid, WorkflowName: "wf", Name: "only",
				Status: driver.TaskReady, Attempt: 1, MaxAttempts: 1, Now: now})
			cs.Outbox = append(cs.Outbox, driver.OutboxInsert{TaskID: tid, Attempt: 1, WorkflowName: "wf", AvailableAt: now, Now: now})
			cs.Events = append(cs.Events, driver.EventInsert{ID: uuid.New(), PipelineID: pid, Type: driver.EventTaskCreated, CreatedAt: now})
		}
		inTx(func(tx driver.Tx) error { return tx.ChangeSetApply(ctx, cs) })
		var claimed *driver.TaskClaimResult
		inTx(func(tx driver.Tx) (err error) {
			claimed, err = tx.TaskClaim(ctx, &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{"wf"}, Limit: 100, Now: now})
			return err
		})
		require.Len(tb, claimed.Tasks, n)
		require.Len(tb, claimed.Started, n)
		finish := &driver.TaskFinishParams{LockPipelineIDs: claimed.Started, ListPipelineIDs: claimed.Started}
		end := &driver.ChangeSet{}
		for _, task := range claimed.Tasks {
			finish.Finishes = append(finish.Finishes, driver.TaskFinish{
				Fence:  driver.Fence{TaskID: task.ID, RunnerID: "r", Attempt: 1},
				Status: driver.TaskCompleted, Attempt: 1, Output: json.RawMessage(`{}`), Now: now})
			end.Pipelines = append(end.Pipelines, driver.PipelineUpdate{ID: task.PipelineID, FromStatus: driver.PipelineRunning,
				Status: driver.PipelineCompleted, CompletedAt: &now, Now: now})
			end.Events = append(end.Events, driver.EventInsert{ID: uuid.New(), PipelineID: task.PipelineID, TaskID: &task.ID,
				Type: driver.EventTaskCompleted, CreatedAt: now})
		}
		inTx(func(tx driver.Tx) error {
			res, err := tx.TaskFinishMany(ctx, finish)
			if err != nil {
				return err
			}
			if len(res.Finished) != n || len(res.Pipelines) != n || len(res.Tasks) != n {
				return fmt.Errorf("finished %d, locked %d runs, listed %d tasks; want %d each",
					len(res.Finished), len(res.Pipelines), len(res.Tasks), n)
			}
			return tx.ChangeSetApply(ctx, end)
		})
	}
}

// BenchmarkHotPath runs the engine's cycle at fixed batch sizes and
// reports the process's CPU time per run of one task, which other load on
// the machine disturbs far less than the wall time.
func BenchmarkHotPath(b *testing.B) {
	for _, n := range []int{1, 3, 16} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			drv, err := sqlite.Open(testdb.SQLitePath(b))
			require.NoError(b, err)
			defer drv.Close()
			require.NoError(b, drv.Migrate(b.Context()))
			cycle := cycler(b, drv)
			cycle(n)
			cycle(n)
			b.ResetTimer()
			cpu := testdb.ProcessCPU()
			for range b.N {
				cycle(n)
			}
			b.ReportMetric(float64((testdb.ProcessCPU()-cpu).Microseconds())/float64(b.N*n), "cpu-µs/task")
		})
	}
}
