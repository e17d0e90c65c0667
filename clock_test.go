package cloacina

import (
	"context"
	"errors"
	"strings"
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

// skewLocal sets a runner's own clock off the real one by skew, before it
// starts; the times it records should follow the database's clock all
// the same.
func skewLocal(r *Runner, skew time.Duration) {
	r.clock.local = func() time.Time { return time.Now().UTC().Add(skew) }
}

// dbNow reads the database's clock through a runner's backend.
func dbNow(t *testing.T, r *Runner) time.Time {
	t.Helper()
	now, err := r.drv.Reader().ClockRead(testContext(t))
	require.NoError(t, err)
	return now
}

// requireRecordedByDBClock checks that every event runner by recorded in
// run runID has a created_at within [from, to] widened by the error an
// adopted offset may have (half the longest usable round trip).
func requireRecordedByDBClock(t *testing.T, r, by *Runner, runID uuid.UUID, from, to time.Time) {
	t.Helper()
	events, err := r.RunEvents(testContext(t), runID)
	require.NoError(t, err)
	n := 0
	for _, e := range events {
		if e.WorkerID != by.ID() {
			continue
		}
		n++
		require.Falsef(t, e.CreatedAt.Before(from.Add(-maxClockRoundTrip)) || e.CreatedAt.After(to.Add(maxClockRoundTrip)),
			"%s recorded at %s, while the database's clock read %s to %s", e.Type, e.CreatedAt.Format(time.RFC3339Nano),
			from.Format(time.RFC3339Nano), to.Format(time.RFC3339Nano))
	}
	require.NotZero(t, n, "the runner recorded events of the run")
}

// A retry is due by the database's clock, whatever the clock of the
// runner that scheduled it says. A runner whose clock ran an hour ahead
// used to schedule the retry an hour late for every other runner (the
// due time was its clock plus the backoff), and one whose clock ran
// behind made it claimable before its backoff ended; either stamped its
// events an hour off.
func TestRetryDueByDatabaseClock(t *testing.T) {
	t.Parallel()
	for _, skew := range []struct {
		name string
		by   time.Duration
	}{{"Ahead", time.Hour}, {"Behind", -time.Hour}} {
		t.Run(skew.name, func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, url string) {
				ctx := testContext(t)
				var skewed *Runner
				wf := MustWorkflow("skewed", Task{Name: "flaky",
					Retry: &RetryPolicy{MaxAttempts: 2, Backoff: BackoffFixed, InitialDelay: 100 * time.Millisecond},
					Run: func(ctx context.Context, tc *Context) error {
						info, _ := TaskInfoFrom(ctx)
						if info.RunnerID == skewed.ID() {
							// Only the other runner may take the retry.
							setClaiming(skewed, false)
							return errors.New("the first attempt fails")
						}
						return tc.Set("ran_on", info.RunnerID)
					}})
				skewed = openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
				skewLocal(skewed, skew.by)
				retried := onEvent(skewed, eventOf(EventTaskRetryScheduled))
				from := dbNow(t, skewed)
				require.NoError(t, skewed.Start(ctx))
				exec, err := skewed.ExecuteAsync(ctx, wf.Name(), nil)
				require.NoError(t, err)
				waitFor(t, retried, "the retry to be scheduled")

				correct := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
				res, err := exec.Wait(ctx)
				require.NoError(t, err, "the retry was not claimed by the runner whose clock is right")
				to := dbNow(t, skewed)
				require.Equal(t, PipelineCompleted, res.Status)
				require.Equal(t, 2, res.Task("flaky").Attempts)
				ranOn, err := Get[string](res.Context, "ran_on")
				require.NoError(t, err)
				require.Equal(t, correct.ID(), ranOn)
				requireRecordedByDBClock(t, correct, skewed, res.ID, from, to)

				events, err := correct.Events(ctx, &EventQuery{RunID: &res.ID, Types: []EventType{EventTaskRetryScheduled}})
				require.NoError(t, err)
				require.Len(t, events, 1)
				data, err := events[0].Payload()
				require.NoError(t, err)
				require.NotNil(t, data.RetryAt)
				require.WithinDuration(t, events[0].CreatedAt.Add(100*time.Millisecond), *data.RetryAt, time.Millisecond,
					"the retry is due the backoff after it was scheduled")
			})
		})
	}
}

// A runner that writes without being started (a process that only
// enqueues runs) reads the database's clock before its first write. One
// whose clock ran an hour ahead used to make the tasks it enqueued wait an
// hour before any runner could claim them.
func TestEnqueueBeforeStartByDatabaseClock(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("enqueued", Task{Name: "a", Run: ok}, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})
		enqueuer := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		skewLocal(enqueuer, time.Hour)
		worker := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		from := dbNow(t, enqueuer)
		exec, err := enqueuer.ExecuteAsync(ctx, wf.Name(), nil)
		require.NoError(t, err)
		res, err := exec.Wait(ctx)
		require.NoError(t, err, "the run's first task was not claimed")
		to := dbNow(t, enqueuer)
		require.Equal(t, PipelineCompleted, res.Status)
		requireRecordedByDBClock(t, worker, enqueuer, res.ID, from, to)
	})
}

// The offset changes only when a sample proves it wrong: jitter between
// samples that agree within their uncertainty does not make recorded
// times step back and forth, a sample that disagrees is adopted (a
// clock stepped meanwhile), and a sample whose round trip is too long to
// be useful is ignored.
func TestClockAdoptsWhatSamplesProve(t *testing.T) {
	t.Parallel()
	local := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := newDBClock()
	c.local = func() time.Time { return local }
	require.True(t, c.stale(), "never sampled")
	require.Equal(t, local, c.now(), "the local clock until a sample says otherwise")

	// The database read its clock an hour ahead of the midpoint of a
	// 10ms round trip.
	require.True(t, c.observe(local, 10*time.Millisecond, local.Add(time.Hour+5*time.Millisecond)))
	require.False(t, c.stale())
	require.Equal(t, local.Add(time.Hour), c.now())

	// Within the sample's ±5ms: kept.
	require.False(t, c.observe(local, 10*time.Millisecond, local.Add(time.Hour+9*time.Millisecond)))
	require.False(t, c.observe(local, 10*time.Millisecond, local.Add(time.Hour+time.Millisecond)))
	require.Equal(t, local.Add(time.Hour), c.now())

	// A tighter sample that the offset lies outside of: adopted.
	require.True(t, c.observe(local, 2*time.Millisecond, local.Add(time.Hour+4*time.Millisecond)))
	require.Equal(t, local.Add(time.Hour+3*time.Millisecond), c.now())

	// The local clock stepped meanwhile (the reading is an hour off what
	// the offset predicts): the next sample corrects it.
	require.True(t, c.observe(local, 2*time.Millisecond, local.Add(-time.Millisecond)))
	require.Equal(t, local.Add(-2*time.Millisecond), c.now())

	// Too long a round trip to be useful, or no reading: ignored.
	require.False(t, c.observe(local, maxClockRoundTrip+time.Millisecond, local.Add(time.Hour)))
	require.False(t, c.observe(local, 2*time.Millisecond, time.Time{}))
	require.Equal(t, local.Add(-2*time.Millisecond), c.now())
}

// beginSignal is a driver that reports each Begin before it waits for the
// database.
type beginSignal struct {
	driver.Driver
	begun chan struct{}
}

func (d *beginSignal) Begin(ctx context.Context) (driver.Tx, error) {
	select {
	case d.begun <- struct{}{}:
	default:
	}
	return d.Driver.Begin(ctx)
}

// A transaction records the time at which it holds the database, not the
// time it asked for it. On SQLite a writer waits for the write lock,
// behind writers of this and other processes; its times used to be read
// before that wait, so a run could be recorded as ended (or a task as
// finished) before the transaction it had waited for — which might have
// started a task of that run — committed: the audit log's times then
// disagreed with its order.
func TestTimesAreReadOnceTheDatabaseIsHeld(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	wf := MustWorkflow("held", Task{Name: "a", Run: func(context.Context, *Context) error { return nil }})
	r := openRunner(t, testdb.SQLiteURL(t), &Config{Workflows: []*Workflow{wf}})
	// The runner's clock jumps an hour ahead while it waits: the offset
	// it learned from the database before does not correct that.
	var ahead atomic.Int64
	r.clock.local = func() time.Time { return time.Now().UTC().Add(time.Duration(ahead.Load())) }

	// Another writer holds the database.
	holder, err := r.drv.Begin(ctx)
	require.NoError(t, err)
	gate := &beginSignal{Driver: r.drv, begun: make(chan struct{}, 1)}
	r.drv = gate

	type started struct {
		exec *Execution
		err  error
	}
	done := make(chan started, 1)
	go func() {
		exec, err := r.ExecuteAsync(ctx, "held", nil)
		done <- started{exec, err}
	}()
	select {
	case <-gate.begun:
	case <-ctx.Done():
		t.Fatal("the runner never began its transaction")
	}
	// The runner waits for the database now; time passes before it gets it.
	ahead.Store(int64(time.Hour))
	held := time.Now().UTC().Add(time.Hour)
	require.NoError(t, holder.Rollback(ctx))

	var s started
	select {
	case s = <-done:
	case <-ctx.Done():
		t.Fatal("the run was never started")
	}
	require.NoError(t, s.err)
	events, err := r.RunEvents(ctx, s.exec.ID())
	require.NoError(t, err)
	require.NotEmpty(t, events)
	for _, e := range events {
		require.Falsef(t, e.CreatedAt.Before(held), "%s recorded at %s, before the runner held the database (%s)",
			e.Type, e.CreatedAt.Format(time.RFC3339Nano), held.Format(time.RFC3339Nano))
	}
}

// Runners' estimates of the database's clock disagree by up to a second
// (each is off by at most half of one). Work that a runner whose estimate
// runs ahead makes ready is due, by the estimate of a runner woken for it,
// a moment later: the woken runner used to find nothing to claim and go
// back to sleep until its next poll (PollInterval, 5s by default on
// PostgreSQL), however idle it was. It now polls again at once, and claims
// the work as it falls due.
func TestWorkDueByAnEstimateAheadIsClaimedWhenDue(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("ahead", Task{Name: "a", Run: ok})
		enqueuer := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		// Within the bound the docs give for an estimate's error.
		enqueuer.now = func() time.Time { return enqueuer.clock.now().Add(300 * time.Millisecond) }
		// A poll that would come too late for the test.
		worker := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, PollInterval: 2 * testTimeout})
		waitStartedIdle(t, worker)
		exec, err := enqueuer.ExecuteAsync(testContext(t), wf.Name(), nil)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(testContext(t), 10*time.Second)
		defer cancel()
		res, err := exec.Wait(ctx)
		require.NoError(t, err, "the woken runner did not claim the task once it fell due")
		require.Equal(t, PipelineCompleted, res.Status)
	})
}

// A runner's clock stepped while it runs (NTP stepping it, a VM resumed)
// is noticed before the runner records a time: it reads the database's
// clock again rather than wait for its next heartbeat. The next task of a
// run whose task ended just after the runner's clock jumped an hour ahead
// used to be due an hour later for every runner, so the run stalled for
// an hour; the events of the transition were stamped an hour ahead.
func TestClockStepNoticedBeforeTheNextWrite(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var stepped *Runner
		var idle <-chan struct{}
		var step atomic.Int64
		wf := MustWorkflow("stepped", Task{Name: "a", Run: func(ctx context.Context, tc *Context) error {
			// Only the other runner may take b: once a claim round that
			// began before the pause is over, this runner claims nothing.
			setClaiming(stepped, false)
			for drained := false; !drained; {
				select {
				case <-idle:
				default:
					drained = true
				}
			}
			stepped.wakeClaimer()
			select {
			case <-idle:
			case <-ctx.Done():
				return ctx.Err()
			}
			step.Store(int64(time.Hour))
			return nil
		}}, Task{Name: "b", DependsOn: []string{"a"}, Run: func(ctx context.Context, tc *Context) error {
			info, _ := TaskInfoFrom(ctx)
			return tc.Set("ran_on", info.RunnerID)
		}})
		// No heartbeat comes to correct the step.
		cfg := &Config{Workflows: []*Workflow{wf}, HeartbeatInterval: time.Hour, RunnerTimeout: 3 * time.Hour}
		stepped = openRunner(t, url, cfg)
		stepped.clock.local = func() time.Time { return time.Now().UTC().Add(time.Duration(step.Load())) }
		from := dbNow(t, stepped)
		idle = claimerIdle(stepped)
		require.NoError(t, stepped.Start(ctx))
		exec, err := stepped.ExecuteAsync(ctx, wf.Name(), nil)
		require.NoError(t, err)
		other := openRunner(t, url, cfg)
		require.NoError(t, other.Start(ctx))

		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		res, err := exec.Wait(wctx)
		require.NoError(t, err, "b was not claimed: it is due an hour late")
		to := dbNow(t, stepped)
		require.Equal(t, PipelineCompleted, res.Status)
		ranOn, err := Get[string](res.Context, "ran_on")
		require.NoError(t, err)
		require.Equal(t, other.ID(), ranOn)
		requireRecordedByDBClock(t, other, stepped, res.ID, from, to)
	})
}

// A step of the local clock against the monotonic one makes the offset
// stale until a usable sample is taken; unusable samples are retried at
// most once a second.
func TestClockNoticesAStep(t *testing.T) {
	t.Parallel()
	var step atomic.Int64
	c := newDBClock()
	c.local = func() time.Time { return time.Now().UTC().Add(time.Duration(step.Load())) }
	db := func() (time.Time, error) { return time.Now().UTC(), nil }
	require.NoError(t, c.sample(db))
	require.False(t, c.stepped())
	require.False(t, c.stale())

	step.Store(int64(time.Hour))
	require.True(t, c.stepped())
	require.True(t, c.stale(), "a step makes the offset stale")
	require.WithinDuration(t, time.Now().Add(time.Hour), c.now(), time.Minute, "until a sample corrects it")

	// An unusable sample leaves it stepped, and is not retried at once.
	require.NoError(t, c.sample(func() (time.Time, error) { return time.Time{}, nil }))
	require.True(t, c.stepped())
	require.False(t, c.stale(), "retried a second later")

	require.NoError(t, c.sample(db))
	require.False(t, c.stepped())
	require.False(t, c.stale())
	require.WithinDuration(t, time.Now(), c.now(), time.Second, "the sample corrected the step")
}

// A runner whose clock steps back after it scheduled a retry claims the
// retry when it falls due. The claimer's wait for the retry was computed
// from the stepped clock, and nothing corrected it: it slept an hour,
// polling for nothing else meanwhile, while its own retry waited.
func TestClockStepBackDoesNotPutTheClaimerToSleep(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("stepback", Task{Name: "flaky",
			Retry: &RetryPolicy{MaxAttempts: 2, Backoff: BackoffFixed, InitialDelay: 100 * time.Millisecond},
			Run: func(ctx context.Context, tc *Context) error {
				if info, _ := TaskInfoFrom(ctx); info.Attempt == 1 {
					return errors.New("the first attempt fails")
				}
				return nil
			}})
		// No heartbeat, and no poll, comes to the rescue.
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, HeartbeatInterval: time.Hour, RunnerTimeout: 3 * time.Hour,
			PollInterval: 2 * testTimeout})
		var step atomic.Int64
		r.clock.local = func() time.Time { return time.Now().UTC().Add(time.Duration(step.Load())) }
		// The clock steps back an hour as the retry commits.
		prev := r.commitHook.Load()
		hook := func(c *changes) {
			if prev != nil {
				(*prev)(c)
			}
			for _, e := range c.cs.Events {
				if e.Type == EventTaskRetryScheduled {
					step.Store(int64(-time.Hour))
				}
			}
		}
		r.commitHook.Store(&hook)
		require.NoError(t, r.Start(ctx))
		exec, err := r.ExecuteAsync(ctx, wf.Name(), nil)
		require.NoError(t, err)
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		res, err := exec.Wait(wctx)
		require.NoError(t, err, "the retry was not claimed when due")
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, 2, res.Task("flaky").Attempts)
	})
}

// shiftedBeat is a transaction whose heartbeats read the database's clock
// shifted by shift: the database's clock as a runner sees it after the
// clock was stepped.
type shiftedBeat struct {
	driver.Tx
	shift *atomic.Int64
}

func (s *shiftedBeat) RunnerHeartbeat(ctx context.Context, p *driver.RunnerHeartbeatParams) (*driver.RunnerHeartbeatResult, error) {
	res, err := s.Tx.RunnerHeartbeat(ctx, p)
	if err == nil {
		res.Now = res.Now.Add(time.Duration(s.shift.Load()))
	}
	return res, err
}

// backdateHeartbeat moves runner id's last heartbeat an hour back, as a
// step of the database's clock an hour ahead makes it look.
func backdateHeartbeat(t *testing.T, url string, r *Runner, id string) {
	t.Helper()
	ctx := testContext(t)
	if d, ok := r.Driver().(*postgres.Driver); ok {
		_, err := d.Pool().Exec(ctx, "UPDATE "+pgx.Identifier{d.Schema(), "cloacina_runners"}.Sanitize()+
			" SET heartbeat_at = heartbeat_at - interval '1 hour' WHERE id = $1", id)
		require.NoError(t, err)
		return
	}
	db := openRawSQLite(t, strings.TrimPrefix(url, "sqlite://"))
	_, err := db.ExecContext(ctx, "UPDATE cloacina_runners SET heartbeat_at = ? WHERE id = ?",
		time.Now().UTC().Add(-time.Hour).Format("2006-01-02T15:04:05.000000Z"), id)
	require.NoError(t, err)
}

// A step of the database's clock ahead (NTP on the database's server, or
// on the SQLite host) makes every heartbeat stamped before it look older
// than it is. The leader, reading that clock at every heartbeat, sees it
// jump against its monotonic clock, and holds off sweeping for a
// RunnerTimeout, as after a restart: every live runner beats meanwhile.
// It used to declare every runner that had not beaten since the step dead
// at once, and reset their running tasks, to run a second time.
func TestDatabaseClockStepDeclaresNoRunnerDead(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		c := newClockStep(t, url)
		// The step comes right after a sweep of the leader: the next is
		// orphanSweepEvery beats away, and the leader sees the step at
		// its next beat. (A sweep under way at the step is
		// TestSweepUnderWayWhenTheClockStepsResetsNothing's.)
		for len(c.sweeps) > 0 {
			<-c.sweeps
		}
		for waitFor(t, c.sweeps, "a sweep of the leader before the step") != nil {
			// one that failed is tried again at the next beat
		}
		c.step(t)
		for len(c.beats) > 0 {
			<-c.beats
		}
		waitFor(t, c.beats, "a heartbeat of the leader")
		waitFor(t, c.beats, "the next heartbeat of the leader, the first one done")
		c.end(t)
	})
}

// clockStep is a leader and a worker whose one task runs until released,
// the leader's readings of the database's clock going through db: set up
// for a step of that clock while the task runs.
type clockStep struct {
	url            string
	db             *steppedDB
	leader, worker *Runner
	exec           *Execution
	sweeps         <-chan error
	beats          <-chan struct{}
	resets         <-chan driver.EventInsert
	release        chan struct{}
}

// newClockStep starts the leader, waits for its first sweep (its grace
// over), and starts the worker's task.
func newClockStep(t *testing.T, url string) *clockStep {
	t.Helper()
	ctx := testContext(t)
	started := make(chan struct{}, 1)
	c := &clockStep{url: url, release: make(chan struct{})}
	wf := MustWorkflow("long", Task{Name: "work", Run: func(ctx context.Context, _ *Context) error {
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-c.release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}})
	liveness := func(cfg *Config) *Config {
		cfg.HeartbeatInterval, cfg.RunnerTimeout = 40*time.Millisecond, time.Second
		return cfg
	}
	c.leader = openRunner(t, url, liveness(&Config{}))
	c.db = &steppedDB{Driver: c.leader.drv, entered: make(chan struct{}, 1), release: make(chan struct{})}
	c.leader.drv = c.db
	leads := leadership(c.leader)
	c.sweeps, c.beats = sweepsOf(c.leader), countBeats(c.leader)
	c.resets = onEvent(c.leader, eventOf(EventTaskReset))
	require.NoError(t, c.leader.Start(ctx))
	waitLeader(t, leads, true)
	waitFor(t, c.sweeps, "the leader's first sweep, once its grace is over")

	c.worker = startRunner(t, url, liveness(&Config{Workflows: []*Workflow{wf}}))
	var err error
	c.exec, err = c.worker.ExecuteAsync(ctx, wf.Name(), nil)
	require.NoError(t, err)
	waitFor(t, started, "the task to start on the worker")
	return c
}

// step steps the database's clock an hour ahead right after the worker's
// last heartbeat, which freezes. The leader's readings shift first: a beat
// in between must not take the backdated worker for dead on a clock it has
// not seen step.
func (c *clockStep) step(t *testing.T) {
	t.Helper()
	c.worker.heartbeatFrozen.Store(true)
	c.db.shift.Store(int64(time.Hour))
	backdateHeartbeat(t, c.url, c.worker, c.worker.ID())
}

// end lets the worker beat again and, once the leader has swept past the
// grace the step began, checks that it reset nothing; the task then ends,
// and its run completes with no recovery.
func (c *clockStep) end(t *testing.T) {
	t.Helper()
	c.worker.heartbeatFrozen.Store(false)
	for len(c.sweeps) > 0 {
		<-c.sweeps
	}
	for waitFor(t, c.sweeps, "a sweep of the leader after the step") != nil {
		// one that failed is tried again at the next beat
	}
	select {
	case e := <-c.resets:
		t.Fatalf("the leader reset the task of a live runner (%s)", e.Data)
	default:
	}
	close(c.release)
	res, err := c.exec.Wait(testContext(t))
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
	require.Equal(t, 0, res.Task("work").Recoveries)
}

// Now is the database's time, not the host's: a runner whose own clock is
// an hour off, started or not, reports the database's time within the
// estimate's bound (half a second, plus this test's own reading).
func TestNowIsTheDatabasesTime(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		for _, started := range []bool{false, true} {
			r := openRunner(t, url, nil)
			skewLocal(r, time.Hour)
			if started {
				require.NoError(t, r.Start(ctx))
			}
			now, err := r.Now(ctx)
			require.NoError(t, err)
			require.WithinDuration(t, dbNow(t, r), now, 2*time.Second, "started %v", started)
			require.NoError(t, r.Close())
			_, err = r.Now(ctx)
			require.ErrorIs(t, err, ErrRunnerClosed)
		}
	})
}

// steppedDB is a backend whose clock, as the runner reads it (heartbeats,
// clock reads), is shifted by shift, and whose next listing of orphaned
// tasks for a sweep, once armed, waits at a gate.
type steppedDB struct {
	driver.Driver
	shift   atomic.Int64
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (d *steppedDB) Begin(ctx context.Context) (driver.Tx, error) {
	tx, err := d.Driver.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &shiftedBeat{Tx: tx, shift: &d.shift}, nil
}

func (d *steppedDB) Reader() driver.Executor {
	return &steppedReader{Executor: d.Driver.Reader(), d: d}
}

type steppedReader struct {
	driver.Executor
	d *steppedDB
}

func (e *steppedReader) ClockRead(ctx context.Context) (time.Time, error) {
	now, err := e.Executor.ClockRead(ctx)
	return now.Add(time.Duration(e.d.shift.Load())), err
}

func (e *steppedReader) TaskListOrphaned(ctx context.Context, p *driver.TaskListOrphanedParams) ([]*driver.Task, error) {
	if p.RunnerID == "" && e.d.armed.CompareAndSwap(true, false) {
		e.d.entered <- struct{}{}
		select {
		case <-e.d.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return e.Executor.TaskListOrphaned(ctx, p)
}

// A sweep under way when the database's clock steps ahead, its listing
// after the step, takes a live runner whose last heartbeat came before the
// step for dead. It reads the clock once its listing found orphans, sees
// the step, and resets nothing; it used to reset the live runner's task,
// to run a second time.
func TestSweepUnderWayWhenTheClockStepsResetsNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		c := newClockStep(t, url)
		// A sweep begins; the clock steps; then the sweep lists.
		c.db.armed.Store(true)
		waitFor(t, c.db.entered, "a sweep to begin its listing")
		c.step(t)
		for len(c.sweeps) > 0 {
			<-c.sweeps
		}
		close(c.db.release)
		require.NoError(t, waitFor(t, c.sweeps, "the sweep under way at the step to end"), "the sweep did not list")
		c.end(t)
	})
}
