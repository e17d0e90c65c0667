package cloacina

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/internal/testdb"
)

// holdFirstStart makes the first start transaction wait, after its commit,
// until `queued` more ExecuteAsync calls have joined the queue: the next
// transaction then writes them together. It returns a channel closed when
// that first commit happened.
func holdFirstStart(t *testing.T, r *Runner, queued int) <-chan struct{} {
	t.Helper()
	var once sync.Once
	committed := make(chan struct{})
	full := make(chan struct{})
	hook := func(n int) {
		if n >= queued {
			select {
			case <-full:
			default:
				close(full)
			}
		}
	}
	r.startHook.Store(&hook)
	commit := func(c *changes) {
		if !startsRuns(c) {
			return
		}
		once.Do(func() {
			close(committed)
			waitFor(t, full, "the start queue to fill")
		})
	}
	r.commitHook.Store(&commit)
	return committed
}

// startsRuns tells whether a committed change set created runs.
func startsRuns(c *changes) bool {
	for _, e := range c.cs.Events {
		if e.Type == EventTaskCreated {
			return true
		}
	}
	return false
}

// runsPerStartTx collects how many runs each start transaction created.
func runsPerStartTx(r *Runner) func() []int {
	var mu sync.Mutex
	var sizes []int
	prev := r.commitHook.Load()
	hook := func(c *changes) {
		if prev != nil {
			(*prev)(c)
		}
		runs := map[uuid.UUID]bool{}
		for _, e := range c.cs.Events {
			if e.Type == EventTaskCreated {
				runs[e.PipelineID] = true
			}
		}
		if len(runs) > 0 {
			mu.Lock()
			sizes = append(sizes, len(runs))
			mu.Unlock()
		}
	}
	r.commitHook.Store(&hook)
	return func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), sizes...)
	}
}

func TestConcurrentStartsShareATransaction(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("wf", Task{Name: "a", Run: setKey("a", 1)}, Task{Name: "b", Run: ok, DependsOn: []string{"a"}})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 20})
		const n = 40
		committed := holdFirstStart(t, r, n-1)
		sizes := runsPerStartTx(r)

		execs := make([]*Execution, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		wg.Go(func() { execs[0], errs[0] = r.ExecuteAsync(ctx, "wf", nil) })
		waitFor(t, committed, "the first start to commit")
		for i := 1; i < n; i++ {
			wg.Go(func() { execs[i], errs[i] = r.ExecuteAsync(ctx, "wf", nil) })
		}
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, []int{1, n - 1}, sizes(), "the first run alone, then every run queued behind it in one transaction")

		require.NoError(t, r.Start(ctx))
		for _, e := range execs {
			res, err := e.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status)
		}
		runs, err := r.List(ctx, &ListOpts{Limit: 2 * n})
		require.NoError(t, err)
		require.Len(t, runs, n)
		events, err := r.Events(ctx, &EventQuery{Types: []EventType{EventTaskCreated}})
		require.NoError(t, err)
		require.Len(t, events, 2*n, "each run's tasks created once")
	})
}

// A run the database refuses fails alone: the others in its transaction
// are written, and nothing of it is.
func TestStartBatchIsolatesARefusedRun(t *testing.T) {
	url := testdb.PostgresSchemaURL(t)
	ctx := testContext(t)
	r := openRunner(t, url, &Config{Workflows: []*Workflow{MustWorkflow("wf", Task{Name: "a", Run: ok})}})
	const n = 9
	committed := holdFirstStart(t, r, n-1)
	sizes := runsPerStartTx(r)

	var wg sync.WaitGroup
	wg.Go(func() {
		_, err := r.ExecuteAsync(ctx, "wf", nil)
		require.NoError(t, err)
	})
	waitFor(t, committed, "the first start to commit")
	errs := make([]error, n)
	ids := make([]uuid.UUID, n)
	for i := 1; i < n; i++ {
		wg.Go(func() {
			in := NewContext()
			require.NoError(t, in.Set("v", "fine"))
			if i == 4 {
				// PostgreSQL refuses text that is not UTF-8. Context.Set
				// never yields it; written past Set, it stands for
				// anything else the database refuses.
				in.values["v"] = json.RawMessage("\"not\xffutf8\"")
			}
			e, err := r.ExecuteAsync(ctx, "wf", in)
			errs[i] = err
			if err == nil {
				ids[i] = e.ID()
			}
		})
	}
	wg.Wait()
	for i := 1; i < n; i++ {
		if i == 4 {
			require.Error(t, errs[i])
			require.Contains(t, errs[i].Error(), `start run of workflow "wf"`)
			t.Logf("the refused run: %v", errs[i])
			continue
		}
		require.NoError(t, errs[i], "run %d", i)
		_, err := r.Get(ctx, ids[i])
		require.NoError(t, err)
	}
	written := 0
	for _, size := range sizes() {
		written += size
	}
	require.Equal(t, n-1, written)
	require.Less(t, len(sizes()), n-1, "the good runs were written in fewer transactions than runs")
	runs, err := r.List(ctx, &ListOpts{Limit: 2 * n})
	require.NoError(t, err)
	require.Len(t, runs, n-1, "every run but the refused one exists")
	events, err := r.Events(ctx, nil)
	require.NoError(t, err)
	for _, e := range events {
		require.NotContains(t, string(e.Data), "nul", "nothing of the refused run was written")
	}
}

// A caller that has given up by the time its run would be written gets
// its context's error, and the run is not written: whether it leaves the
// queue itself or the transaction that takes it up skips it.
func TestStartCancelledWhileQueued(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		r := openRunner(t, url, &Config{Workflows: []*Workflow{MustWorkflow("wf", Task{Name: "a", Run: ok})}})
		committed := holdFirstStart(t, r, 1)
		var wg sync.WaitGroup
		wg.Go(func() {
			_, err := r.ExecuteAsync(ctx, "wf", nil)
			require.NoError(t, err)
		})
		waitFor(t, committed, "the first start to commit")
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, cancelledErr := r.ExecuteAsync(cctx, "wf", nil)
		wg.Wait()
		_, err := r.ExecuteAsync(ctx, "wf", nil)
		require.NoError(t, err)
		require.ErrorIs(t, cancelledErr, context.Canceled)
		runs, err := r.List(ctx, &ListOpts{Limit: 10})
		require.NoError(t, err)
		require.Len(t, runs, 2, "the cancelled caller's run was not written")
	})
}

// A caller that gives up while its run waits behind a transaction that is
// taking long returns at once, and the queue goes on without it.
func TestStartWithdrawnWhileWaiting(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		r := openRunner(t, url, &Config{Workflows: []*Workflow{MustWorkflow("wf", Task{Name: "a", Run: ok})}})
		release := make(chan struct{})
		held := make(chan struct{})
		var once sync.Once
		commit := func(c *changes) {
			if startsRuns(c) {
				once.Do(func() { close(held); <-release })
			}
		}
		r.commitHook.Store(&commit)
		queued := make(chan int, 16)
		hook := func(n int) { queued <- n }
		r.startHook.Store(&hook)

		var wg sync.WaitGroup
		var first error
		wg.Go(func() { _, first = r.ExecuteAsync(ctx, "wf", nil) })
		waitFor(t, held, "the first start to be held after its commit")
		<-queued // the first call's own entry

		cctx, cancel := context.WithCancel(ctx)
		gaveUp := make(chan error, 1)
		go func() {
			_, err := r.ExecuteAsync(cctx, "wf", nil)
			gaveUp <- err
		}()
		require.Equal(t, 1, waitFor(t, queued, "the second call to queue"))
		cancel()
		require.ErrorIs(t, waitFor(t, gaveUp, "the cancelled call to return"), context.Canceled,
			"it returns while the first transaction is still held")

		close(release)
		wg.Wait()
		require.NoError(t, first)
		_, err := r.ExecuteAsync(ctx, "wf", nil)
		require.NoError(t, err, "the queue still has a leader")
		runs, err := r.List(ctx, &ListOpts{Limit: 10})
		require.NoError(t, err)
		require.Len(t, runs, 2, "the withdrawn run was never written")
	})
}

// A start whose caller gives up while its commit cannot be stopped any more
// (here a deferred trigger makes COMMIT slow and ignores the cancel
// requests that reach it when pgx closes the interrupted connection; more
// than one can come at once (the server log showed a handler's own sleep
// cancelled), and with one handler per sleep a second landing in it
// aborted the COMMIT, about once in 80 runs on a loaded machine): the
// run is written all the same, with its root claimed by this runner. The
// runner must run that task. It used to check the claim before the commit
// landed, judge it lost, and leave the task Running under a live runner
// forever. PostgreSQL: the interrupted commit outlives its connection there.
func TestStartInterruptedWhileCommittingStillRuns(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	schema := testdb.NewSchema(t)
	r := startRunner(t, testdb.WithSchema(testdb.PostgresURL(), schema), &Config{Workflows: []*Workflow{MustWorkflow("wf", Task{Name: "a", Run: ok})}})
	s := pgx.Identifier{schema}.Sanitize()
	_, err := adminConn(t).Exec(ctx, `CREATE FUNCTION `+s+`.slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
			FOR i IN 1..10 LOOP
				BEGIN
					BEGIN PERFORM pg_sleep(0.05); EXCEPTION WHEN query_canceled THEN NULL; END;
				EXCEPTION WHEN query_canceled THEN NULL;
				END;
			END LOOP;
			RETURN NULL; END $$;
		CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON `+s+`.pipeline_executions DEFERRABLE INITIALLY DEFERRED
			FOR EACH ROW EXECUTE FUNCTION `+s+`.slow_commit()`)
	require.NoError(t, err)

	impatient, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := r.ExecuteAsync(impatient, "wf", nil)
		done <- err
	}()
	// Give up once the COMMIT is inside the trigger's sleep, not before.
	admin := adminConn(t)
	require.Eventually(t, func() bool {
		var n int
		err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND query = 'COMMIT' AND wait_event = 'PgSleep'`).Scan(&n)
		return err == nil && n > 0
	}, testTimeout, time.Millisecond, "the start never reached its COMMIT")
	cancel()
	require.ErrorIs(t, waitFor(t, done, "ExecuteAsync to return"), context.Canceled)
	runs, err := r.List(ctx, nil)
	require.NoError(t, err)
	require.Len(t, runs, 1, "the commit went through; by the time ExecuteAsync returns, it has")
	res, err := r.wait(ctx, runs[0].ID)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
}
