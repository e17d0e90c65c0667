package cloacina

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
	"weak"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// longLivedRounds is how many of each kind of use TestLongLivedState
// drives through one runner. What it checks is that the runner's state
// returns to empty, not a bound relative to the count: a leak shows at
// any count.
const longLivedRounds = 40

// TestLongLivedState drives many runs, handles, waits, cancels, child
// runs and event streams through one started runner on each backend, and
// checks that what the runner keeps per run or per call — waiters, running
// tasks, awaited runs, the start queue, strays, goroutines — is back to
// what an idle runner holds. The backends run one after the other, and
// the test not in parallel, so that the goroutines counted are this
// runner's.
func TestLongLivedState(t *testing.T) {
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			one := mustWorkflow(t, "one", Task{Name: "t", Run: ok})
			hold := mustWorkflow(t, "hold", Task{Name: "t", Run: func(ctx context.Context, _ *Context) error {
				<-ctx.Done()
				return ctx.Err()
			}})
			parent := mustWorkflow(t, "parent", Task{Name: "t", Run: func(ctx context.Context, tc *Context) error {
				r := ctx.Value(taskScopeKey{}).(*taskScope).r
				res, err := r.Execute(ctx, "one", nil)
				if err != nil {
					return err
				}
				return res.Err()
			}})
			r := openRunner(t, b.URL(t), &Config{Workflows: []*Workflow{one, hold, parent}, MaxConcurrentTasks: 20})
			waitStartedIdle(t, r)
			idle := goleak.IgnoreCurrent()

			started := onEvent(r, eventOf(EventTaskStarted))
			var wg sync.WaitGroup
			for range longLivedRounds {
				ctx := testContext(t) // each round has the whole deadline
				// A run waited for, one whose handle is dropped, and one
				// that waits for a child run.
				res, err := r.Execute(ctx, "one", nil)
				require.NoError(t, err)
				require.Equal(t, PipelineCompleted, res.Status)
				_, err = r.ExecuteAsync(ctx, "one", nil)
				require.NoError(t, err)
				_, err = r.ExecuteAsync(ctx, "parent", nil)
				require.NoError(t, err)

				// A run whose waiter gives up, then cancelled as its task runs.
				exec, err := r.ExecuteAsync(ctx, "hold", nil)
				require.NoError(t, err)
				waitCtx, stopWaiting := context.WithCancel(ctx)
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := r.Execution(exec.ID()).Wait(waitCtx)
					require.ErrorIs(t, err, context.Canceled)
				}()
				for e := waitFor(t, started, "a task to start"); e.PipelineID != exec.ID(); {
					e = waitFor(t, started, "the held task to start")
				}
				stopWaiting()
				require.NoError(t, exec.Cancel(ctx))
				res, err = exec.Wait(ctx)
				require.NoError(t, err)
				require.Equal(t, PipelineCancelled, res.Status)

				// A stream read once and left, and one whose context ends.
				for _, err := range r.StreamEvents(ctx, &EventQuery{Follow: true}, nil) {
					require.NoError(t, err)
					break
				}
				streamCtx, endStream := context.WithCancel(ctx)
				endStream()
				for range r.StreamEvents(streamCtx, nil, nil) {
				}
			}
			wg.Wait()
			waitRunsFinished(t, r)

			require.NoError(t, goleak.Find(idle), "goroutines left behind by runs, handles and streams")
			r.waitMu.Lock()
			require.Empty(t, r.waiters, "waiters")
			r.waitMu.Unlock()
			r.runningMu.Lock()
			require.Empty(t, r.running, "running tasks")
			require.Empty(t, r.strays, "strays")
			r.runningMu.Unlock()
			svc := r.services()
			svc.awaitMu.Lock()
			require.Empty(t, svc.awaited, "awaited runs")
			svc.awaitMu.Unlock()
			r.starts.mu.Lock()
			require.Empty(t, r.starts.pending, "start queue")
			require.False(t, r.starts.busy, "start queue leader")
			r.starts.mu.Unlock()
			slotsFree(t, r)
		})
	}
}

// waitRunsFinished waits until no run of r's database is Pending or Running.
func waitRunsFinished(t *testing.T, r *Runner) {
	t.Helper()
	ctx := testContext(t)
	require.Eventually(t, func() bool {
		runs, err := r.List(ctx, &ListOpts{Statuses: []PipelineStatus{PipelinePending, PipelineRunning}, Limit: 1})
		require.NoError(t, err)
		return len(runs) == 0
	}, testTimeout, 10*time.Millisecond, "runs still unfinished")
}

func mustWorkflow(t *testing.T, name string, tasks ...Task) *Workflow {
	t.Helper()
	wf, err := NewWorkflow(name, tasks...)
	require.NoError(t, err)
	return wf
}

// TestCancelledRunsForgotten checks that the runs a runner remembers as
// cancelled (for tasks claimed before the cancel that start after it) are
// forgotten once they expire, even when no cancel follows them: a burst
// of cancels used to stay in memory until the next cancel came.
func TestCancelledRunsForgotten(t *testing.T) {
	const burst = 300
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		r := openRunner(t, url, &Config{Workflows: []*Workflow{mustWorkflow(t, "one", Task{Name: "t", Run: ok})}})
		r.claimsPaused.Store(true) // the runs stay Pending, to be cancelled
		waitStartedIdle(t, r)
		for range burst {
			exec, err := r.ExecuteAsync(ctx, "one", nil)
			require.NoError(t, err)
			require.NoError(t, exec.Cancel(ctx))
		}
		r.runningMu.Lock()
		require.GreaterOrEqual(t, len(r.cancelledRuns), burst)
		r.runningMu.Unlock()
		// A minute on, every one of them has expired. The wake-ups of
		// these cancels, which come back to this runner, may remember a
		// run again after this: each look ages what is there again.
		require.Eventually(t, func() bool {
			r.runningMu.Lock()
			defer r.runningMu.Unlock()
			for id := range r.cancelledRuns {
				r.cancelledRuns[id] = time.Now().Add(-2 * cancelledRunMemory)
			}
			return len(r.cancelledRuns) == 0
		}, testTimeout, 5*time.Millisecond, "expired cancelled runs still remembered with no cancel to come")
	})
}

// BenchmarkCancelLocalBurst is the cost of remembering one more cancelled
// run while b.N of them, none expired yet, are remembered: a burst of
// cancels within a minute, each sent to every runner on PostgreSQL.
func BenchmarkCancelLocalBurst(b *testing.B) {
	r, err := newRunner("sqlite", &Config{Logger: quietLogger()})
	require.NoError(b, err)
	ids := make([]uuid.UUID, b.N)
	for i := range ids {
		ids[i] = uuid.New()
	}
	b.ResetTimer()
	for _, id := range ids {
		r.cancelLocal(id)
	}
}

// TestStartQueueKeepsNoCallers checks that the start queue lets go of the
// calls it has written: their requests hold the callers' contexts and the
// runs' inputs, which a queue that kept them in the spare capacity of its
// slice held on to until later starts filled it — after a burst, as many
// as the burst.
func TestStartQueueKeepsNoCallers(t *testing.T) {
	const queued = 150 // more than one start transaction takes (maxStartBatch)
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		r := openRunner(t, url, &Config{Workflows: []*Workflow{mustWorkflow(t, "one", Task{Name: "t", Run: ok})}})
		// A burst first, unmarked: a pool connection keeps the values of
		// the context that made it (pgx), and the marked burst should find
		// the connections it needs made.
		var warm sync.WaitGroup
		for range queued {
			warm.Go(func() {
				_, err := r.ExecuteAsync(ctx, "one", nil)
				require.NoError(t, err)
			})
		}
		warm.Wait()
		committed := holdFirstStart(t, r, queued)
		type marker struct{ _ [64]byte }
		type markerKey struct{}
		callers := make([]weak.Pointer[marker], queued+1)
		start := func(i int) {
			m := &marker{}
			callers[i] = weak.Make(m)
			_, err := r.ExecuteAsync(context.WithValue(ctx, markerKey{}, m), "one", NewContext())
			require.NoError(t, err)
		}
		var wg sync.WaitGroup
		wg.Go(func() { start(0) })
		waitFor(t, committed, "the first start to commit")
		for i := 1; i <= queued; i++ {
			wg.Go(func() { start(i) })
		}
		wg.Wait()
		r.startHook.Store(nil)
		r.commitHook.Store(nil)
		runtime.GC()
		runtime.GC()
		kept := 0
		for _, p := range callers {
			if p.Value() != nil {
				kept++
			}
		}
		// A pgx connection keeps the context of its last statement until
		// its next one: at most one per connection of the pool.
		bound := 0
		if pg, isPG := r.drv.(*postgres.Driver); isPG {
			bound = int(pg.Pool().Stat().TotalConns())
		}
		require.LessOrEqual(t, kept, bound, "contexts of ExecuteAsync calls that returned, still held")
	})
}
