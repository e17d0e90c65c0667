package cloacina

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// A completion batch locks the runs of its results. When another
// transaction held one of them (an ExecuteTx left open, a cancel, another
// runner's completion), every later result on the runner waited behind
// it, whatever its run: the completer locked with a plain FOR UPDATE.
// It now skips a run it cannot lock, writes the rest, and writes the
// skipped run's results, in order, once the run is free.
func TestCompletionDoesNotWaitBehindAHeldRun(t *testing.T) {
	t.Parallel()
	for _, fail := range []bool{false, true} {
		name := "completed"
		if fail {
			name = "failed" // the path that locks the runs before deciding
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			gate, started := make(chan struct{}), make(chan struct{}, 2)
			run := func(failing bool) TaskFunc {
				return func(ctx context.Context, c *Context) error {
					if hold, _ := c.Get("hold"); hold != true {
						return nil
					}
					started <- struct{}{}
					<-gate
					if failing {
						return Permanent(errors.New("boom"))
					}
					return nil
				}
			}
			// Two tasks of the held run end while it is held: the second
			// result must not overtake the first, nor be lost.
			wf := MustWorkflow("w", Task{Name: "a", Run: run(fail)}, Task{Name: "c", Run: run(false)})
			r := startRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}})
			d := r.Driver().(*postgres.Driver)
			runs := pgx.Identifier{d.Schema()}.Sanitize() + ".pipeline_executions"

			in := NewContext()
			require.NoError(t, in.Set("hold", true))
			held, err := r.ExecuteAsync(ctx, "w", in)
			require.NoError(t, err)
			waitFor(t, started, "the held run's first task")
			waitFor(t, started, "the held run's second task")

			holder, err := d.Pool().Begin(ctx)
			require.NoError(t, err)
			t.Cleanup(func() { _ = holder.Rollback(context.Background()) })
			var xid string
			require.NoError(t, holder.QueryRow(ctx, "SELECT pg_current_xact_id()::text").Scan(&xid))
			_, err = holder.Exec(ctx, "SELECT 1 FROM "+runs+" WHERE id = $1 FOR UPDATE", held.ID())
			require.NoError(t, err)
			close(gate)
			// The runner's write of the held run's results waits for the
			// holder (on the main path before, off it now).
			admin := adminConn(t)
			require.Eventually(t, func() bool {
				var n int
				return admin.QueryRow(ctx, `SELECT count(*) FROM pg_locks
					WHERE locktype = 'transactionid' AND transactionid::text = $1 AND NOT granted`, xid).Scan(&n) == nil && n > 0
			}, testTimeout, 2*time.Millisecond, "a write waiting for the held run")

			other, err := r.ExecuteAsync(ctx, "w", nil)
			require.NoError(t, err)
			// Long against a one-task run's few milliseconds; the lock is
			// held until it has passed.
			prompt, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			res, err := other.Wait(prompt)
			require.NoError(t, err, "a run on the same runner waited behind the held run's lock")
			require.Equal(t, PipelineCompleted, res.Status)

			require.NoError(t, holder.Rollback(ctx))
			res, err = held.Wait(ctx)
			require.NoError(t, err)
			want := map[EventType]int{EventTaskCompleted: 2, EventPipelineCompleted: 1}
			if fail {
				require.Equal(t, PipelineFailed, res.Status)
				want = map[EventType]int{EventTaskCompleted: 1, EventTaskFailed: 1, EventPipelineFailed: 1}
			} else {
				require.Equal(t, PipelineCompleted, res.Status)
			}
			id := held.ID()
			evs, err := r.Events(ctx, &EventQuery{RunID: &id})
			require.NoError(t, err)
			got := map[EventType]int{}
			for _, e := range evs {
				if _, ok := want[e.Type]; ok {
					got[e.Type]++
				}
			}
			require.Equal(t, want, got, "the held run's results, each recorded once")
		})
	}
}
