package cloacina

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

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
	admin := adminConn(t)
	require.Eventually(t, func() bool {
		var n int
		return admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks
			WHERE locktype = 'transactionid' AND transactionid::text = $1 AND NOT granted`, xid).Scan(&n) == nil && n > 0
	}, testTimeout, 2*time.Millisecond, "a write waiting for the held runs")

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
