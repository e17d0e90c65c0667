package cloacina

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// everyNthLiar reports the reply to COMMIT lost, though the commit went
// through, for every nth transaction of any kind.
type everyNthLiar struct {
	n     int64
	count atomic.Int64
	lied  atomic.Int64
	off   atomic.Bool
}

type everyNthTx struct {
	driver.Tx
	d *everyNthLiar
}

func (tx *everyNthTx) Commit(ctx context.Context) error {
	if err := tx.Tx.Commit(ctx); err != nil {
		return err
	}
	if !tx.d.off.Load() && tx.d.count.Add(1)%tx.d.n == 0 {
		tx.d.lied.Add(1)
		return fmt.Errorf("%w: connection lost while reading the reply to COMMIT", driver.ErrTransient)
	}
	return nil
}

// Every kind of transaction (start, claim, completion, retry, deferral,
// pause, resume, cancel, heartbeat, lease, sweep) sees its commit reported
// lost now and then, though it committed: each is retried, and the log
// still records each transition once and replays to the stored statuses.
func TestLostCommitRepliesOnEveryWritePath(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		liar := &everyNthLiar{n: 2}
		churnUnderFaults(t, url, func(r *Runner) {
			r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &everyNthTx{Tx: tx, d: liar} })
		}, func() {}, nil, func() { liar.off.Store(true) })
		require.Positive(t, liar.lied.Load())
	})
}

// Every kind of transaction has its connection terminated by the server
// now and then (pg_terminate_backend, as a restart or a proxy's failover
// does), at whatever point it has reached, COMMIT included: each is
// retried, and the log still records each transition once and replays to
// the stored statuses.
func TestTerminatedConnectionsOnEveryWritePath(t *testing.T) {
	t.Parallel()
	schema := testdb.NewSchema(t)
	url := testdb.WithSchema(testdb.PostgresURL(), schema) + "&application_name=" + schema
	admin := adminConn(t)
	stop := make(chan struct{})
	killed := make(chan int, 1)
	// The churn goes on until a session has been terminated: its first
	// batch of runs, on sessions the pool has just opened, may well end
	// before any is 200 ms old (the test failed one time in four so).
	terminated := make(chan struct{})
	kill := func() {
		n := 0
		defer func() { killed <- n }()
		tick := time.NewTicker(30 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			var k int
			// A session gets 200 ms from its start before it can be
			// terminated: on a machine where connecting takes tens of
			// milliseconds, killing every fresh session within 30 ms of
			// its connecting left no transaction a chance to end, and
			// the test measured the kill rate, not the retries.
			if err := admin.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE application_name = $1 AND pid <> pg_backend_pid() AND state <> 'idle'
					AND backend_start < now() - interval '200 milliseconds'`, schema).Scan(&k); err == nil {
				if n == 0 && k > 0 {
					close(terminated)
				}
				n += k
			}
		}
	}
	n := -1
	end := func() {
		if n < 0 {
			close(stop)
			n = <-killed
		}
	}
	defer end() // before the runners close
	churnUnderFaults(t, url, nil, func() { go kill() }, terminated, end)
	t.Logf("terminated %d sessions", n)
	require.Positive(t, n)
}

// churnUnderFaults runs many runs of a workflow with a retry, a deferral
// and a join on two runners (each first passed to hook, unless nil) while
// they are paused, resumed and cancelled at random, calling begin once
// the first runs are started. Unless until is nil, it goes on starting
// and churning more runs, batch after batch, until until is closed (the
// faults have taken effect), and fails the test if that takes longer than
// testTimeout: a fault that only some moments of the churn expose (a
// session old enough to kill while it works, say) may not come up in one
// short batch. Once every run has
// ended with no task running, it calls calm and checks the log: it
// replays to the stored statuses, and records each run's start and end,
// and each task's creation and end, once.
func churnUnderFaults(t *testing.T, url string, hook func(*Runner), begin func(), until <-chan struct{}, calm func()) {
	t.Helper()
	{
		// Three times the usual budget: under a loaded CI machine the
		// churn with faults took most of testTimeout, and the check of
		// the log after it ran out of time (the log was not at fault).
		ctx, cancel := context.WithTimeout(context.Background(), 3*testTimeout)
		defer cancel()
		wf := churnWorkflow("chaos")
		var runners []*Runner
		for range 2 {
			r := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 4}))
			if hook != nil {
				hook(r)
			}
			require.NoError(t, r.Start(ctx))
			runners = append(runners, r)
		}
		const n = 20
		var ids []uuid.UUID
		deadline := time.Now().Add(testTimeout)
		for batch := 0; ; batch++ {
			batchIDs := make([]uuid.UUID, 0, n)
			for i := range n {
				exec, err := runners[i%len(runners)].ExecuteAsync(ctx, "chaos", nil)
				if batch > 0 && errors.Is(err, driver.ErrTransient) {
					// From the second batch on the faults are live:
					// they failed this start past its retries (and
					// ExecuteAsync found no run written), and the
					// batch goes on without it.
					continue
				}
				require.NoError(t, err)
				batchIDs = append(batchIDs, exec.ID())
			}
			ids = append(ids, batchIDs...)
			if batch == 0 {
				begin()
			}
			// A call the faults failed past its retries reports it: the test
			// goes on with the next.
			controlChurn(t, runners, batchIDs, 3+uint64(batch), 30, func(err error) bool {
				return errors.Is(err, ErrRunFinished) || errors.Is(err, driver.ErrTransient)
			})
			// Resume is idempotent: one that the faults failed past its
			// retries (every attempt's connection terminated) is called
			// again, as a caller would, until it gets through.
			for _, id := range batchIDs {
				for {
					err := runners[0].Resume(ctx, id)
					if err == nil || errors.Is(err, ErrRunFinished) {
						break
					}
					if !errors.Is(err, driver.ErrTransient) || ctx.Err() != nil {
						require.NoError(t, err)
					}
				}
			}
			if until == nil {
				break
			}
			select {
			case <-until:
				t.Logf("faults took effect in batch %d (of %d runs each)", batch+1, n)
			default:
				if time.Now().Before(deadline) {
					continue
				}
				t.Fatalf("the faults took no effect in %d batches of %d runs (%v): the test would test nothing", batch+1, n, testTimeout)
			}
			break
		}
		results := waitRunsEnded(t, runners[0], ids)
		calm()

		events, err := runners[0].Events(ctx, nil)
		require.NoError(t, err)
		replayed := Replay(events)
		for _, id := range ids {
			res := results[id]
			require.Equal(t, res.Status, replayed.Runs[id], "run %s", id)
			for _, tr := range res.Tasks {
				require.Equal(t, tr.Status, replayed.Tasks[tr.ID], "task %s of run %s", tr.Name, id)
			}
			var started, terminal int
			perTask := map[string]int{}
			for _, e := range events {
				if e.PipelineID != id {
					continue
				}
				switch e.Type {
				case EventPipelineStarted:
					started++
				case EventPipelineCompleted, EventPipelineFailed, EventPipelineCancelled:
					terminal++
				case EventTaskCompleted, EventTaskFailed, EventTaskSkipped, EventTaskAbandoned, EventTaskCreated:
					perTask[string(e.Type)+" "+e.TaskName]++
				}
			}
			require.LessOrEqual(t, started, 1, "run %s started twice", id)
			require.Equal(t, 1, terminal, "run %s ended once", id)
			for k, v := range perTask {
				require.Equal(t, 1, v, "run %s: %s recorded %d times", id, k, v)
			}
		}
	}
}

// A run row held by another transaction (an application transaction that
// started a child run of it with ExecuteTx and stays open, say) must not
// stop the leader's heartbeats while its sweep waits to reset an orphaned
// task of that run: the leader would soon look dead itself, and have its
// own tasks reset under it. PostgreSQL only: SQLite has one writer.
func TestLeaderHeartbeatsWhileItsSweepWaitsOnALockedRun(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := testdb.PostgresSchemaURL(t)
	s := newStall()
	wf := MustWorkflow("z", Task{Name: "work", Run: s.run})
	leader := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
	leader.claimsPaused.Store(true)
	led := leadership(leader)
	require.NoError(t, leader.Start(ctx))
	waitLeader(t, led, true)
	zombie := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 1}))
	s.zombies[zombie.ID()] = true
	require.NoError(t, zombie.Start(ctx))
	exec, err := zombie.ExecuteAsync(ctx, wf.Name(), nil)
	require.NoError(t, err)
	waitFor(t, s.started, "the task to start on the zombie")

	d := leader.Driver().(*postgres.Driver)
	stranded, err := d.Pool().Begin(ctx)
	require.NoError(t, err)
	defer stranded.Rollback(context.WithoutCancel(ctx))
	_, err = stranded.Exec(ctx, "SELECT 1 FROM "+pgx.Identifier{d.Schema(), "pipeline_executions"}.Sanitize()+
		" WHERE id = $1 FOR UPDATE", exec.ID())
	require.NoError(t, err)
	zombie.heartbeatFrozen.Store(true)

	heartbeat := func() time.Time {
		var at time.Time
		require.NoError(t, d.Pool().QueryRow(ctx, "SELECT heartbeat_at FROM "+pgx.Identifier{d.Schema(), "cloacina_runners"}.Sanitize()+
			" WHERE id = $1", leader.ID()).Scan(&at))
		return at
	}
	// The zombie's row goes first (it expires), then the sweep waits on
	// the run; the leader must go on heartbeating for longer than a
	// RunnerTimeout all the same.
	require.Eventually(t, func() bool {
		runners, err := leader.Runners(ctx)
		require.NoError(t, err)
		return len(runners) == 1
	}, testTimeout, 10*time.Millisecond, "the zombie to be removed")
	from := heartbeat()
	require.Eventually(t, func() bool { return heartbeat().After(from.Add(2 * leader.cfg.RunnerTimeout)) }, 5*time.Second, 10*time.Millisecond,
		"the leader's heartbeat stopped while its sweep waited on a locked run")

	reset := onEvent(leader, eventOf(EventTaskReset))
	require.NoError(t, stranded.Rollback(ctx))
	waitFor(t, reset, "the zombie's task to be reset once the run is free")
	setClaiming(leader, true)
	res, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
	close(s.release)
	waitFor(t, s.ended, "the zombie's task to return")
}

// errorLogger signals the first time the runner logs an error that
// contains text.
type errorLogger struct {
	text string
	seen chan struct{}
	once *sync.Once
}

func (h errorLogger) Enabled(context.Context, slog.Level) bool { return true }
func (h errorLogger) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h errorLogger) WithGroup(string) slog.Handler            { return h }
func (h errorLogger) Handle(_ context.Context, rec slog.Record) error {
	rec.Attrs(func(a slog.Attr) bool {
		if strings.Contains(a.Value.String(), h.text) {
			h.once.Do(func() { close(h.seen) })
			return false
		}
		return true
	})
	return nil
}

// A database that turns read-only under the runner (its sessions dropped
// and reopened on a hot standby during a failover; here the role's
// default_transaction_read_only, set while the runner runs) refuses the
// runner's writes; once it takes writes again, the runner goes on. Its
// sessions opened while the database was read-only stayed so, and the
// runner used to retry on them, in vain, until its pool closed them (an
// hour later by default).
func TestRunnerRecoversWhenTheDatabaseTakesWritesAgain(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	tn := newTenant(t)
	admin := adminConn(t)
	started, release := make(chan struct{}, 2), make(chan struct{})
	wf := MustWorkflow("w", Task{Name: "a", Run: func(_ context.Context, c *Context) error {
		started <- struct{}{}
		<-release
		return c.Set("done", true)
	}}, Task{Name: "b", DependsOn: []string{"a"}, Run: setKey("b", 1)})
	refused := make(chan struct{})
	logger := slog.New(errorLogger{text: "read-only transaction", seen: refused, once: &sync.Once{}})
	// A pool of two sessions: read-only ones are not outnumbered by new
	// ones the runner's concurrent work happens to open.
	r := startRunner(t, tn.URL+"&pool_max_conns=2", &Config{Workflows: []*Workflow{wf}, Logger: logger})
	exec, err := r.ExecuteAsync(ctx, "w", nil)
	require.NoError(t, err)
	waitFor(t, started, "task a to start")

	role := pgx.Identifier{tn.Role}.Sanitize()
	_, err = admin.Exec(ctx, "ALTER ROLE "+role+" SET default_transaction_read_only = on")
	require.NoError(t, err)
	t.Cleanup(func() { admin.Exec(context.Background(), "ALTER ROLE "+role+" RESET default_transaction_read_only") })
	_, err = admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", tn.Role)
	require.NoError(t, err)
	close(release)
	waitFor(t, refused, "the completion to be refused as read-only")
	_, err = admin.Exec(ctx, "ALTER ROLE "+role+" RESET default_transaction_read_only")
	require.NoError(t, err)

	res, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status, "a: %q, b: %q", res.Task("a").Error, res.Task("b").Error)
	require.Equal(t, 1, res.Task("a").Attempts)
	requireReplays(t, r, res)
	again, err := r.Execute(ctx, "w", nil)
	require.NoError(t, err, "a run started now")
	require.Equal(t, PipelineCompleted, again.Status, "a: %q, b: %q", again.Task("a").Error, again.Task("b").Error)
}

// A start whose every commit is reported lost, though the first went
// through (a connection that drops each time at COMMIT), has written the
// run: ExecuteAsync returns its handle rather than an error that would
// have the caller start it a second time.
func TestStartWhoseCommitsAreAllReportedLost(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("w", Task{Name: "a", Run: ok})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		liar := &everyNthLiar{n: 1}
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &everyNthTx{Tx: tx, d: liar} })
		exec, err := r.ExecuteAsync(ctx, "w", nil)
		liar.off.Store(true)
		require.Equal(t, int64(apiTxAttempts), liar.lied.Load(), "every attempt's commit reported lost")
		runs, lerr := r.List(ctx, nil)
		require.NoError(t, lerr)
		require.Len(t, runs, 1, "the run was written")
		require.NoError(t, err, "the run was written, yet its start failed")
		require.Equal(t, runs[0].ID, exec.ID())
		require.NoError(t, r.Start(ctx))
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
	})
}
