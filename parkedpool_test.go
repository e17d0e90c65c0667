package cloacina

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// Each run whose results are parked past their retries gets a write that
// waits for it, and a waiting write holds a connection of the runner's
// pool for as long as the run is held. With one waiting write per held
// run, as many held runs as the pool has connections took them all: the
// runner's other runs, its heartbeat and every API call then waited for
// the pool, for as long as the runs were held (an ExecuteTx left open: for
// ever). Here four runs are held, the pool has four connections, and
// another run on the same runner must still complete.
func TestHeldRunsDoNotTakeEveryConnection(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	const held = 4
	gate, started := make(chan struct{}), make(chan struct{}, held)
	wf := MustWorkflow("w", Task{Name: "a", Run: func(_ context.Context, c *Context) error {
		if hold, _ := c.Get("hold"); hold != true {
			return nil
		}
		started <- struct{}{}
		<-gate
		return nil
	}})
	parked := &parkCounter{want: parkMisses * held, seen: make(chan struct{})}
	r := startRunner(t, testdb.PostgresSchemaURL(t)+"&pool_max_conns=4", &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 2 * held,
		Logger: slog.New(parked)})
	in := NewContext()
	require.NoError(t, in.Set("hold", true))
	runs := make([]*Execution, held)
	ids := make([]uuid.UUID, held)
	for i := range runs {
		var err error
		runs[i], err = r.ExecuteAsync(ctx, "w", in)
		require.NoError(t, err)
		ids[i] = runs[i].ID()
	}
	for range held {
		waitFor(t, started, "a held run's task")
	}

	// One transaction outside the runner's pool holds the four runs.
	holder, err := adminConn(t).Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = holder.Rollback(context.Background()) })
	schema := r.Driver().(interface{ Schema() string }).Schema()
	_, err = holder.Exec(ctx, `SELECT 1 FROM "`+schema+`".pipeline_executions WHERE id = ANY($1) FOR UPDATE`, ids)
	require.NoError(t, err)
	var xid string
	require.NoError(t, holder.QueryRow(ctx, "SELECT pg_current_xact_id()::text").Scan(&xid))
	close(gate)
	// Wait until every held run's results have missed often enough to
	// be given a waiting write, and one waits for the holder.
	waitFor(t, parked.seen, "the held runs' results to be parked past their retries")
	waitForLockWaiter(t, xid, "a write waiting for the held runs")

	// Another run on the same runner completes while the four are held.
	other, err := r.ExecuteAsync(ctx, "w", nil)
	require.NoError(t, err, "the runner's pool was taken by writes waiting for held runs")
	res, err := other.Wait(ctx)
	require.NoError(t, err, "a run on the same runner waited for the pool behind the held runs")
	require.Equal(t, PipelineCompleted, res.Status)

	require.NoError(t, holder.Rollback(ctx))
	for _, run := range runs {
		res, err := run.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		requireReplays(t, r, res)
	}
}

// parkCounter is a slog handler that closes seen once the completer has
// parked want results in all (a result parked three times counts three).
type parkCounter struct {
	want int64
	seen chan struct{}
	mu   sync.Mutex
	n    int64
}

func (h *parkCounter) count() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

func (h *parkCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *parkCounter) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *parkCounter) WithGroup(string) slog.Handler            { return h }
func (h *parkCounter) Handle(_ context.Context, rec slog.Record) error {
	if !strings.HasPrefix(rec.Message, "task results parked") {
		return nil
	}
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "results" {
			h.mu.Lock()
			defer h.mu.Unlock()
			before := h.n
			h.n += a.Value.Int64()
			if before < h.want && h.n >= h.want {
				close(h.seen)
			}
		}
		return true
	})
	return nil
}

// Runs held by other transactions past runLockWait, again and again, at
// random, while two runners complete, retry, defer and join their tasks
// and runs are paused, resumed and cancelled (and, in the second case,
// every third commit's reply is reported lost): results are parked, tried
// again and written by waiting writes; the log still records each
// transition once and replays to the stored statuses.
func TestChurnWhileRunsAreHeldElsewhere(t *testing.T) {
	t.Parallel()
	t.Run("held", func(t *testing.T) { t.Parallel(); churnWhileHeld(t, false) })
	t.Run("held and commits reported lost", func(t *testing.T) { t.Parallel(); churnWhileHeld(t, true) })
}

func churnWhileHeld(t *testing.T, lie bool) {
	schema := testdb.NewSchema(t)
	url := testdb.WithSchema(testdb.PostgresURL(), schema)
	admin := adminConn(t)
	stop, stopped := make(chan struct{}), make(chan int, 1)
	hold := func() {
		holds := 0
		defer func() { stopped <- holds }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			tx, err := admin.Begin(context.Background())
			if err != nil {
				return
			}
			var n int
			err = tx.QueryRow(context.Background(), `WITH h AS (SELECT id FROM "`+schema+`".pipeline_executions
				WHERE status IN ('pending', 'running', 'paused') ORDER BY random() LIMIT 3 FOR UPDATE SKIP LOCKED)
				SELECT count(*) FROM h`).Scan(&n)
			if err == nil && n > 0 {
				holds++
				select {
				case <-stop:
				case <-time.After(runLockWait + time.Duration(holds%4)*150*time.Millisecond):
				}
			}
			_ = tx.Rollback(context.Background())
			if n == 0 {
				select {
				case <-stop:
				case <-time.After(5 * time.Millisecond):
				}
			}
		}
	}
	holds := -1
	end := func() {
		if holds < 0 {
			close(stop)
			holds = <-stopped
		}
	}
	defer end()
	parked := &parkCounter{want: 1, seen: make(chan struct{})}
	liar := &everyNthLiar{n: 3}
	churnUnderFaults(t, url, func(r *Runner) {
		r.logger = slog.New(parked)
		if lie {
			r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &everyNthTx{Tx: tx, d: liar} })
		}
	}, func() { go hold() }, nil, func() { end(); liar.off.Store(true) })
	t.Logf("held runs %d times; parked %d results; %d commits reported lost", holds, parked.count(), liar.lied.Load())
	require.Positive(t, parked.count(), "no result was parked: the test tested nothing")
}

// A runner stopped while one held run's results take the waiting write
// and another's wait their turn still records the second once its run is
// free (tried again without waiting), and counts only the first as not
// recorded.
func TestStopRecordsAHeldRunFreedWhileAnotherWaits(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	gate, started := make(chan struct{}), make(chan struct{}, 2)
	wf := MustWorkflow("w", Task{Name: "a", Run: func(_ context.Context, c *Context) error {
		started <- struct{}{}
		<-gate
		return nil
	}})
	parked := &parkCounter{want: 2 * parkMisses, seen: make(chan struct{})}
	r := openRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}, Logger: slog.New(parked)})
	r.flushWait = 3 * maxParkDelay
	require.NoError(t, r.Start(ctx))
	schema := r.Driver().(interface{ Schema() string }).Schema()
	type heldRun struct {
		exec   *Execution
		holder pgx.Tx
		xid    string
	}
	runs := make([]*heldRun, 2)
	for i := range runs {
		exec, err := r.ExecuteAsync(ctx, "w", nil)
		require.NoError(t, err)
		runs[i] = &heldRun{exec: exec}
	}
	for range runs {
		waitFor(t, started, "a task to start")
	}
	for _, h := range runs {
		var err error
		h.holder, err = adminConn(t).Begin(ctx)
		require.NoError(t, err)
		_, err = h.holder.Exec(ctx, `SELECT 1 FROM "`+schema+`".pipeline_executions WHERE id = $1 FOR UPDATE`, h.exec.ID())
		require.NoError(t, err)
		require.NoError(t, h.holder.QueryRow(ctx, "SELECT pg_current_xact_id()::text").Scan(&h.xid))
	}
	close(gate)
	waitFor(t, parked.seen, "both runs' results to be parked past their retries")
	admin := adminConn(t)
	waiters := func(xid string) int { return lockWaitersOf(ctx, admin, xid) }
	var waited, other *heldRun
	require.Eventually(t, func() bool {
		for i, h := range runs {
			if waiters(h.xid) > 0 {
				waited, other = h, runs[1-i]
				return true
			}
		}
		return false
	}, testTimeout, 2*time.Millisecond, "a write waiting for a held run")

	stopped := make(chan error, 1)
	go func() { stopped <- r.Stop(ctx) }()
	require.NoError(t, other.holder.Rollback(ctx))
	err := waitFor(t, stopped, "Stop to return")
	require.ErrorContains(t, err, "1 task results not recorded")
	require.NoError(t, waited.holder.Rollback(ctx))

	res, err := r.Get(ctx, other.exec.ID())
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status, "the run freed while another waited was recorded")
	requireReplays(t, r, res)
	res, err = r.Get(ctx, waited.exec.ID())
	require.NoError(t, err)
	require.Equal(t, TaskStatusRunning, res.Task("a").Status, "the run held to the end was not recorded")
}
