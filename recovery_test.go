package cloacina

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// fastLiveness declares a runner dead 300 ms after its last heartbeat.
func fastLiveness(cfg *Config) *Config {
	cfg.HeartbeatInterval = 40 * time.Millisecond
	cfg.RunnerTimeout = 300 * time.Millisecond
	return cfg
}

// leadership returns a channel that receives this runner's leadership
// changes from now on.
func leadership(r *Runner) <-chan bool {
	ch := make(chan bool, 16)
	hook := func(leader bool) { ch <- leader }
	r.leaderHook.Store(&hook)
	return ch
}

// sweepsOf returns a channel that receives the outcome of each of this
// runner's sweeps from now on (dropping what a slow reader misses).
func sweepsOf(r *Runner) <-chan error {
	ch := make(chan error, 64)
	hook := func(err error) {
		select {
		case ch <- err:
		default:
		}
	}
	r.sweepHook.Store(&hook)
	return ch
}

func waitLeader(t *testing.T, ch <-chan bool, want bool) {
	t.Helper()
	for waitFor(t, ch, "a leadership change") != want {
	}
}

// setClaiming lets a runner claim again and wakes it, or stops it
// claiming and waits for a claim round under way to end.
func setClaiming(r *Runner, on bool) {
	r.claimsPaused.Store(!on)
	if on {
		r.wakeClaimer()
		return
	}
	// A claim round that began before the pause may still claim, however
	// late its query runs (a loaded machine delayed one past a retry's
	// backoff, and the paused runner took the retry): wait for it to end.
	if svc := r.services(); svc != nil {
		svc.claimMu.Lock()
		svc.claimMu.Unlock()
	}
}

// stallOn returns a task body that blocks, until released, when it runs on
// one of the given runners, and completes at once elsewhere. It reports
// each start on a zombie, and how its context ended.
type stall struct {
	zombies map[string]bool
	started chan string
	ended   chan error
	release chan struct{}
}

func newStall() *stall {
	return &stall{zombies: map[string]bool{}, started: make(chan string, 8), ended: make(chan error, 8), release: make(chan struct{})}
}

func (s *stall) run(ctx context.Context, tc *Context) error {
	info, _ := TaskInfoFrom(ctx)
	if !s.zombies[info.RunnerID] {
		return tc.Set("ran_on", info.RunnerID)
	}
	s.started <- info.RunnerID
	select {
	case <-s.release:
		s.ended <- nil
		return tc.Set("ran_on", "zombie")
	case <-ctx.Done():
		s.ended <- context.Cause(ctx)
		return ctx.Err()
	}
}

// zombieSetup starts a leader that does not claim and a one-slot runner
// that takes a run of wf, then freezes that runner's heartbeat (a zombie:
// alive, but dead to the others) and waits until the leader has reset its
// task.
func zombieSetup(t *testing.T, url string, wf *Workflow, s *stall) (leader, zombie *Runner, exec *Execution) {
	return zombieSetupWith(t, url, wf, s, zombieHooks{})
}

// zombieHooks are zombieSetupWith's hooks, each called unless nil.
type zombieHooks struct {
	// beforeStart sees the leader before it starts (to wrap its backend,
	// say).
	beforeStart func(leader *Runner)
	// beforeFreeze sees both runners once the task runs on the zombie,
	// before the zombie's heartbeat freezes.
	beforeFreeze func(leader, zombie *Runner)
}

// zombieSetupWith is zombieSetup calling hooks.
func zombieSetupWith(t *testing.T, url string, wf *Workflow, s *stall, hooks zombieHooks) (leader, zombie *Runner, exec *Execution) {
	t.Helper()
	ctx := testContext(t)
	leader = openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
	leader.claimsPaused.Store(true)
	if hooks.beforeStart != nil {
		hooks.beforeStart(leader)
	}
	require.NoError(t, leader.Start(ctx))
	zombie = openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 1}))
	s.zombies[zombie.ID()] = true
	require.NoError(t, zombie.Start(ctx))
	reset := onEvent(leader, eventOf(EventTaskReset))

	exec, err := zombie.ExecuteAsync(ctx, wf.Name(), nil)
	require.NoError(t, err)
	waitFor(t, s.started, "the task to start on the zombie")
	if hooks.beforeFreeze != nil {
		hooks.beforeFreeze(leader, zombie)
	}
	zombie.heartbeatFrozen.Store(true)
	waitFor(t, reset, "the leader to reset the zombie's task")
	return leader, zombie, exec
}

func TestZombieCompletionChangesNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		s := newStall()
		wf := MustWorkflow("z", Task{Name: "work", Run: s.run}, Task{Name: "after", DependsOn: []string{"work"}, Run: ok})
		leader, zombie, exec := zombieSetup(t, url, wf, s)
		setClaiming(leader, true)

		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, 1, res.Task("work").Recoveries)
		ranOn, err := Get[string](res.Context, "ran_on")
		require.NoError(t, err)
		require.Equal(t, leader.ID(), ranOn, "the task was re-run elsewhere")

		// The zombie's task finally finishes: its completion is fenced out.
		// (A heartbeat already under way when it froze may have found the
		// claim lost first and cancelled it: fenced out just the same.)
		close(s.release)
		if err := waitFor(t, s.ended, "the zombie's task to return"); err != nil {
			require.ErrorIs(t, err, errClaimLost)
		}
		require.NoError(t, zombie.Stop(ctx)) // flushes the zombie's completer
		after, err := leader.Get(ctx, res.ID)
		require.NoError(t, err)
		require.Equal(t, res.Tasks, after.Tasks, "the late completion changed nothing")
		events, err := leader.RunEvents(ctx, res.ID)
		require.NoError(t, err)
		completed := 0
		var resetAt int64
		for _, e := range events {
			if e.Type == EventTaskReset {
				resetAt = e.SequenceNum
			}
			if e.Type == EventTaskCompleted && e.TaskName == "work" {
				completed++
				require.Equal(t, leader.ID(), e.WorkerID)
			}
		}
		require.Equal(t, 1, completed, "exactly one task_completed")
		for _, e := range events {
			if e.SequenceNum > resetAt {
				require.NotEqual(t, zombie.ID(), e.WorkerID, "the zombie emitted %s after losing its claim", e.Type)
			}
		}
		replayed := Replay(events)
		for _, tr := range after.Tasks {
			require.Equal(t, tr.Status, replayed.Tasks[tr.ID])
		}
	})
}

func TestLostClaimCancelsTheTaskAtTheNextHeartbeat(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		s := newStall()
		wf := MustWorkflow("z", Task{Name: "work", Run: s.run})
		_, zombie, _ := zombieSetup(t, url, wf, s)

		// The zombie wakes up: its next heartbeat finds the claim lost and
		// cancels the task, which then records nothing. (With its slot free
		// again it may well claim the reset task anew: let that one finish.)
		t.Cleanup(func() { close(s.release) })
		zombie.heartbeatFrozen.Store(false)
		require.ErrorIs(t, waitFor(t, s.ended, "the zombie's task to be cancelled"), errClaimLost)
		runners, err := zombie.Runners(ctx)
		require.NoError(t, err)
		ids := map[string]bool{}
		for _, ri := range runners {
			ids[ri.ID] = true
		}
		require.True(t, ids[zombie.ID()], "a runner declared dead registers again")
	})
}

// capWorkflow's first task stalls on the zombies of s; one successor runs
// by the default rule, the other always.
func capWorkflow(s *stall) *Workflow {
	return MustWorkflow("cap",
		Task{Name: "crashy", Run: s.run},
		Task{Name: "next", DependsOn: []string{"crashy"}, Run: ok},
		Task{Name: "cleanup", DependsOn: []string{"crashy"}, Trigger: Always(), Run: ok},
	)
}

// dieTwice starts a run of capWorkflow, and two one-slot runners in turn
// take its first task and die with it (heartbeat frozen, task function
// stalled); it waits for the first recovery on reset, the second is the
// caller's. release lets the stalled functions return and stops the two.
func dieTwice(t *testing.T, url string, cfg *Config, s *stall, reset <-chan driver.EventInsert) (exec *Execution, release func()) {
	t.Helper()
	ctx := testContext(t)
	cfg.MaxConcurrentTasks = 1
	first := openRunner(t, url, cfg)
	s.zombies[first.ID()] = true
	require.NoError(t, first.Start(ctx))
	exec, err := first.ExecuteAsync(ctx, "cap", nil)
	require.NoError(t, err)
	waitFor(t, s.started, "the first runner to start the task")
	first.heartbeatFrozen.Store(true)
	waitFor(t, reset, "the first recovery")

	second := openRunner(t, url, cfg)
	s.zombies[second.ID()] = true
	require.NoError(t, second.Start(ctx))
	waitFor(t, s.started, "the second runner to start the task")
	second.heartbeatFrozen.Store(true)
	return exec, func() {
		close(s.release)
		waitFor(t, s.ended, "a zombie's task to return")
		waitFor(t, s.ended, "a zombie's task to return")
		require.NoError(t, first.Stop(ctx))
		require.NoError(t, second.Stop(ctx))
	}
}

func TestRecoveryCapAbandonsTheTask(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		s := newStall()
		wf := capWorkflow(s)
		cfg := func() *Config {
			return fastLiveness(&Config{Workflows: []*Workflow{wf}, MaxRecoveries: 1})
		}
		leader := openRunner(t, url, cfg())
		leader.claimsPaused.Store(true)
		require.NoError(t, leader.Start(ctx))
		reset := onEvent(leader, eventOf(EventTaskReset))
		abandoned := onEvent(leader, eventOf(EventTaskAbandoned))

		exec, release := dieTwice(t, url, cfg(), s, reset)
		ev := waitFor(t, abandoned, "the task to be abandoned past MaxRecoveries")
		var data EventData
		require.NoError(t, jsonUnmarshal(ev.Data, &data))
		require.Equal(t, 2, data.RecoveryCount)

		setClaiming(leader, true) // someone alive runs what follows
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status, "the run is finalised")
		require.Equal(t, TaskStatusFailed, res.Task("crashy").Status)
		require.Contains(t, res.Task("crashy").Error, "abandoned after 1 recoveries")
		require.Equal(t, TaskStatusSkipped, res.Task("next").Status, "downstream handled by trigger rules")
		require.Equal(t, TaskStatusCompleted, res.Task("cleanup").Status)

		release()
		after, err := leader.Get(ctx, res.ID)
		require.NoError(t, err)
		require.Equal(t, res.Tasks, after.Tasks)
	})
}

// A leader that does not run a workflow cannot abandon a task of it past
// MaxRecoveries (that decides the run's next steps, which needs the
// workflow), so it resets the task; the next runner that claims it, and
// does run the workflow, abandons it instead of running it again.
func TestTaskPastTheCapIsAbandonedWhenALeaderCannot(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		s := newStall()
		wf := capWorkflow(s)
		other := MustWorkflow("other", Task{Name: "x", Run: ok})
		leader := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{other}}))
		require.NoError(t, leader.Start(ctx))
		reset := onEvent(leader, eventOf(EventTaskReset))

		// The leader resets the task each time, the second time past the cap.
		cfg := func() *Config {
			return fastLiveness(&Config{Workflows: []*Workflow{wf}, MaxRecoveries: 1})
		}
		exec, release := dieTwice(t, url, cfg(), s, reset)
		ev := waitFor(t, reset, "the second recovery, past the cap")
		var data EventData
		require.NoError(t, jsonUnmarshal(ev.Data, &data))
		require.Equal(t, 2, data.RecoveryCount)

		healthy := openRunner(t, url, cfg())
		abandoned := onEvent(healthy, eventOf(EventTaskAbandoned))
		require.NoError(t, healthy.Start(ctx))
		ev = waitFor(t, abandoned, "the claiming runner to abandon the task")
		require.NoError(t, jsonUnmarshal(ev.Data, &data))
		// (A loaded machine can make the healthy runner miss a heartbeat
		// and the leader reset the task once more: the count is then 3.)
		n := data.RecoveryCount
		require.GreaterOrEqual(t, n, 2)

		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		crashy := res.Task("crashy")
		require.Equal(t, TaskStatusFailed, crashy.Status)
		require.Equal(t, fmt.Sprintf("abandoned after %d recoveries: runner %s claimed it past MaxRecoveries (1)", n, healthy.ID()), crashy.Error)
		require.Equal(t, n, crashy.Recoveries, "abandoning at claim is not another recovery")
		require.Equal(t, TaskStatusSkipped, res.Task("next").Status)
		require.Equal(t, TaskStatusCompleted, res.Task("cleanup").Status)
		release()
	})
}

func TestGracefulStopFinishesRunningTasks(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started := make(chan struct{})
		release := make(chan struct{})
		wf := MustWorkflow("g", Task{Name: "a", Run: func(context.Context, *Context) error {
			close(started)
			<-release
			return nil
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		exec, err := r.ExecuteAsync(ctx, "g", nil)
		require.NoError(t, err)
		waitFor(t, started, "the task to start")
		stopped := make(chan error, 1)
		go func() { stopped <- r.Stop(ctx) }()
		close(release)
		require.NoError(t, waitFor(t, stopped, "Stop to return"))
		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, "the running task finished and was recorded before Stop returned")
		runners, err := r.Runners(ctx)
		require.NoError(t, err)
		require.Empty(t, runners, "a stopped runner removes its row")
	})
}

func TestStopPastDeadlineHandsTasksBack(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started := make(chan struct{}, 1)
		var runs atomic.Int32
		wf := MustWorkflow("h", Task{Name: "slow", Run: func(ctx context.Context, _ *Context) error {
			if runs.Add(1) == 1 {
				started <- struct{}{}
				<-ctx.Done() // the first attempt only ends when the runner stops
				return ctx.Err()
			}
			return nil
		}})
		first := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		exec, err := first.ExecuteAsync(ctx, "h", nil)
		require.NoError(t, err)
		waitFor(t, started, "the task to start")
		stopCtx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		require.ErrorIs(t, first.Stop(stopCtx), context.DeadlineExceeded)

		second := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, 1, res.Task("slow").Attempts, "a hand-back does not use up an attempt")
		evs, err := second.Events(ctx, &EventQuery{RunID: &res.ID, Types: []EventType{EventTaskReset}})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		require.Equal(t, first.ID(), evs[0].WorkerID)
		data, err := evs[0].Payload()
		require.NoError(t, err)
		require.Equal(t, errShutdown.Error(), data.Reason)
	})
}

func TestDeferUntilReleasesTheSlot(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var ready atomic.Bool
		wf := MustWorkflow("waiting", Task{Name: "await_file", Run: func(ctx context.Context, tc *Context) error {
			if err := DeferUntil(ctx, 5*time.Millisecond, func(context.Context) (bool, error) { return ready.Load(), nil }); err != nil {
				return err
			}
			return tc.Set("file", "arrived")
		}})
		quick := MustWorkflow("quick", Task{Name: "q", Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf, quick}, MaxConcurrentTasks: 1})
		deferred := onEvent(r, eventOf(EventTaskDeferred))
		exec, err := r.ExecuteAsync(ctx, "waiting", nil)
		require.NoError(t, err)
		waitFor(t, deferred, "the task to defer")

		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, TaskStatusRunning, res.Task("await_file").Status)
		require.Equal(t, "deferred", res.Task("await_file").SubStatus)

		// With one slot, this only runs because the deferred task gave it back.
		other, err := r.Execute(ctx, "quick", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, other.Status)

		ready.Store(true)
		final, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, final.Status)
		require.Empty(t, final.Task("await_file").SubStatus)
		evs, err := r.TaskEvents(ctx, final.Task("await_file").ID)
		require.NoError(t, err)
		var types []EventType
		for _, e := range evs {
			types = append(types, e.Type)
		}
		require.Equal(t, []EventType{EventTaskCreated, EventTaskMarkedReady, EventTaskClaimed, EventTaskStarted,
			EventTaskDeferred, EventTaskResumed, EventTaskCompleted}, types)
		require.Equal(t, TaskStatusCompleted, Replay(evs).Tasks[final.Task("await_file").ID])
	})
}

// A condition that fails ends the wait, and the task goes on (fallback
// work, say) only once it holds a slot again: no more tasks work at once
// than MaxConcurrentTasks. It used to go on without one.
func TestDeferUntilTakesASlotBackWhenTheConditionFails(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var working, peak atomic.Int32
		enter := func() {
			n := working.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
		}
		otherWorking, releaseOther, condFailed := make(chan struct{}), make(chan struct{}), make(chan struct{})
		wf := MustWorkflow("waiting", Task{Name: "d", Run: func(ctx context.Context, _ *Context) error {
			err := DeferUntil(ctx, 5*time.Millisecond, func(context.Context) (bool, error) {
				select {
				case <-otherWorking:
					close(condFailed)
					return false, errors.New("condition source unavailable")
				default:
					return false, nil
				}
			})
			if err == nil || ctx.Err() != nil {
				return errors.New("want the condition's error")
			}
			enter() // fallback work
			defer working.Add(-1)
			return nil
		}})
		other := MustWorkflow("other", Task{Name: "o", Run: func(context.Context, *Context) error {
			enter()
			defer working.Add(-1)
			close(otherWorking)
			<-releaseOther
			return nil
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf, other}, MaxConcurrentTasks: 1})
		deferred := onEvent(r, eventOf(EventTaskDeferred))
		exec, err := r.ExecuteAsync(ctx, "waiting", nil)
		require.NoError(t, err)
		waitFor(t, deferred, "the task to defer")
		otherExec, err := r.ExecuteAsync(ctx, "other", nil)
		require.NoError(t, err)
		waitFor(t, condFailed, "the condition to fail while the other task works")
		close(releaseOther)
		for _, e := range []*Execution{exec, otherExec} {
			res, err := e.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status, "%v", res.Err())
		}
		require.EqualValues(t, 1, peak.Load(), "tasks working at once")
		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Empty(t, res.Task("d").SubStatus)
		evs, err := r.TaskEvents(ctx, res.Task("d").ID)
		require.NoError(t, err)
		require.Equal(t, EventTaskResumed, evs[len(evs)-2].Type, "the wait ends with task_resumed")
	})
}

// A timed-out attempt whose function returns late (it ignored its context)
// must not drop the next attempt, running under the same task id, from the
// runner's running tasks: Cancel (and Stop's hand-back, and the claim
// check) would miss it.
func TestLateReturnOfATimedOutAttemptKeepsTheRetryTracked(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		release1, started2 := make(chan struct{}), make(chan struct{})
		sawCancel := make(chan error, 1)
		wf := MustWorkflow("zombie", Task{Name: "z", Timeout: 2 * time.Second, // attempt 2 must not time out first
			Retry: &RetryPolicy{MaxAttempts: 2, Backoff: BackoffFixed, InitialDelay: time.Millisecond},
			Run: func(ctx context.Context, _ *Context) error {
				if info, _ := TaskInfoFrom(ctx); info.Attempt == 1 {
					<-release1 // ignores its context: the timeout is recorded without it
					return nil
				}
				close(started2)
				<-ctx.Done()
				sawCancel <- context.Cause(ctx)
				return ctx.Err()
			}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 2})
		exec, err := r.ExecuteAsync(ctx, "zombie", nil)
		require.NoError(t, err)
		waitFor(t, started2, "attempt 2 to start")
		svc := r.services()
		close(release1)
		// Attempt 1's goroutine ends (its slot comes back) after it returns.
		require.Eventually(t, func() bool { return len(svc.slots) == 1 }, testTimeout, time.Millisecond,
			"attempt 1's slot was never given back")
		require.NoError(t, r.Cancel(ctx, exec.ID()))
		require.ErrorIs(t, waitFor(t, sawCancel, "attempt 2's context to be cancelled"), errRunCancelled)
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, res.Status)
	})
}

func TestDeferUntilOutsideATask(t *testing.T) {
	t.Parallel()
	err := DeferUntil(context.Background(), time.Second, func(context.Context) (bool, error) { return false, nil })
	require.ErrorIs(t, err, ErrNotInTask)
	_, ok := TaskInfoFrom(context.Background())
	require.False(t, ok)
}

func TestLeadershipMovesWhenTheLeaderStops(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		a := openRunner(t, url, fastLiveness(&Config{}))
		b := openRunner(t, url, fastLiveness(&Config{}))
		aLeads, bLeads := leadership(a), leadership(b)
		require.NoError(t, a.Start(ctx))
		waitLeader(t, aLeads, true)
		require.NoError(t, b.Start(ctx))
		require.False(t, b.IsLeader(), "one leader at a time")
		require.NoError(t, a.Stop(ctx)) // releases the lease
		waitLeader(t, bLeads, true)
		require.False(t, a.IsLeader())
		// b took the next term; the released one is collected.
		require.Eventually(t, func() bool { return len(leaseTerms(t, b)) == 1 }, testTimeout, 10*time.Millisecond)
		require.Equal(t, []leaseTerm{{2, b.ID()}}, leaseTerms(t, b))
	})
}

func TestLeadershipMovesWhenTheLeaderDies(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		a := openRunner(t, url, fastLiveness(&Config{}))
		b := openRunner(t, url, fastLiveness(&Config{}))
		aLeads, bLeads := leadership(a), leadership(b)
		require.NoError(t, a.Start(ctx))
		waitLeader(t, aLeads, true)
		require.NoError(t, b.Start(ctx))
		a.heartbeatFrozen.Store(true) // alive but silent: its lease runs out
		waitLeader(t, bLeads, true)
	})
}

// Dropped connections (what a server restart does to clients) are retried
// on every state write: the runs all finish, each transition recorded once.
func TestSurvivesDroppedConnections(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	schema := testdb.NewSchema(t)
	url := testdb.WithSchema(testdb.PostgresURL(), schema) + "&application_name=" + schema
	wf := MustWorkflow("d", Task{Name: "a", Run: ok}, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})
	r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, PollInterval: 20 * time.Millisecond})
	admin, err := pgx.Connect(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	defer admin.Close(ctx)

	const runs = 60
	var execs []*Execution
	killed := 0
	for i := range runs {
		exec, err := r.ExecuteAsync(ctx, "d", nil)
		require.NoError(t, err)
		execs = append(execs, exec)
		if i%15 == 7 {
			var n int
			require.NoError(t, admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE application_name = $1 AND pid <> pg_backend_pid()`, schema).Scan(&n))
			killed += n
		}
	}
	require.Positive(t, killed)
	for _, exec := range execs {
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
	}
	events, err := r.Events(ctx, &EventQuery{Types: []EventType{EventTaskCompleted}})
	require.NoError(t, err)
	require.Len(t, events, 2*runs, "each completion recorded exactly once")
}

func jsonUnmarshal(raw []byte, v any) error {
	e := &Event{Data: raw}
	d, err := e.Payload()
	if err != nil {
		return err
	}
	*(v.(*EventData)) = *d
	return nil
}

// A process that dies with tasks claimed and comes back at once under the
// same RunnerID (a stable pod name, say) resets its old claims when it
// starts: the sweep never would, because the id heartbeats again.
func TestRestartUnderTheSameIDResetsItsOldClaims(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("same-id", Task{Name: "work", Run: ok}, Task{Name: "after", DependsOn: []string{"work"}, Run: ok})
		// Long enough that no sweep recovers anything during the test.
		cfg := func() *Config {
			return &Config{Workflows: []*Workflow{wf}, RunnerID: "pod-0", RunnerTimeout: time.Hour, HeartbeatInterval: time.Minute}
		}

		// The first process registers, claims the run's first task and dies
		// without a word: the claim stays Running under pod-0.
		crashed := openRunner(t, url, cfg())
		exec, err := crashed.ExecuteAsync(ctx, wf.Name(), nil)
		require.NoError(t, err)
		require.NoError(t, crashed.register(ctx))
		claimed, err := crashed.claim(ctx, 10, nil)
		require.NoError(t, err)
		require.Len(t, claimed, 1)
		require.Equal(t, "pod-0", claimed[0].RunnerID)

		// The next process with the same id resets the claim before it
		// claims anything, then runs the task itself.
		again := openRunner(t, url, cfg())
		resets := onEvent(again, eventOf(EventTaskReset))
		require.NoError(t, again.Start(ctx))
		reset := waitFor(t, resets, "the old claim to be reset")
		require.Equal(t, claimed[0].ID, *reset.TaskID)
		data, err := (&Event{Data: reset.Data}).Payload()
		require.NoError(t, err)
		require.Contains(t, data.Reason, "restarted")

		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, 1, res.Task("work").Recoveries)
		require.Equal(t, 1, res.Task("work").Attempts, "a reset is a recovery, not another attempt")
	})
}

// Start, Stop and Close called from many goroutines at once leave the
// runner in one consistent state: each Start either starts it or reports
// why not, every Stop returns, and after Close nothing is left running.
func TestConcurrentStartStopClose(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("lifecycle", Task{Name: "a", Run: ok})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 3 {
					if i%2 == 0 {
						if err := r.Start(ctx); err != nil && !errors.Is(err, ErrRunnerStarted) && !errors.Is(err, ErrRunnerClosed) {
							errs <- err
						}
					} else if err := r.Stop(ctx); err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		// Whatever state that left, the runner works, then closes cleanly.
		if err := r.Start(ctx); err != nil {
			require.ErrorIs(t, err, ErrRunnerStarted)
		}
		res, err := r.Execute(ctx, "lifecycle", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.NoError(t, r.Close())
		require.ErrorIs(t, r.Start(ctx), ErrRunnerClosed)
		runners, err := openRunner(t, url, nil).Runners(ctx)
		require.NoError(t, err)
		require.Empty(t, runners, "a closed runner leaves the registry")
	})
}

// A transaction left open on a runner's row (its process froze between
// its heartbeat and its commit) must not stop the leader's sweep, which
// used to wait on that row while holding the lease, so that no runner was
// swept and no other runner could renew the lease. PostgreSQL only: SQLite
// has one writer, and a stuck write transaction stops every runner.
func TestSweepPassesARunnerRowLockedElsewhere(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := testdb.PostgresSchemaURL(t)
	s := newStall()
	wf := MustWorkflow("z", Task{Name: "work", Run: s.run})
	var stranded pgx.Tx
	leader, _, exec := zombieSetupWith(t, url, wf, s, zombieHooks{beforeFreeze: func(leader, zombie *Runner) {
		d := leader.Driver().(*postgres.Driver)
		var err error
		stranded, err = d.Pool().Begin(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { _ = stranded.Rollback(context.WithoutCancel(ctx)) })
		_, err = stranded.Exec(ctx, "UPDATE "+pgx.Identifier{d.Schema(), "cloacina_runners"}.Sanitize()+
			" SET heartbeat_at = heartbeat_at WHERE id = $1", zombie.ID())
		require.NoError(t, err)
	}})
	setClaiming(leader, true)
	res, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)

	require.NoError(t, stranded.Rollback(ctx))
	close(s.release)
	waitFor(t, s.ended, "the zombie's task to return")
}

// A transaction left open on the leader lease (a leader frozen in the
// middle of its heartbeat) must not hold the other runners' heartbeats,
// which share a transaction with the lease: they used to wait on it, and
// would all have looked dead once it ended. PostgreSQL only, as above.
func TestHeartbeatsPassALeaseLockedElsewhere(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := testdb.PostgresSchemaURL(t)
	wf := MustWorkflow("w", Task{Name: "a", Run: ok})
	leader := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
	led := leadership(leader)
	require.NoError(t, leader.Start(ctx))
	waitLeader(t, led, true)
	other := startRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))

	d := leader.Driver().(*postgres.Driver)
	stranded, err := d.Pool().Begin(ctx)
	require.NoError(t, err)
	defer stranded.Rollback(context.WithoutCancel(ctx))
	_, err = stranded.Exec(ctx, "UPDATE "+pgx.Identifier{d.Schema(), "cloacina_lease_terms"}.Sanitize()+" SET expires_at = expires_at")
	require.NoError(t, err)
	leader.heartbeatFrozen.Store(true)

	heartbeat := func() time.Time {
		var at time.Time
		require.NoError(t, d.Pool().QueryRow(ctx, "SELECT heartbeat_at FROM "+pgx.Identifier{d.Schema(), "cloacina_runners"}.Sanitize()+
			" WHERE id = $1", other.ID()).Scan(&at))
		return at
	}
	from := heartbeat()
	require.Eventually(t, func() bool { return heartbeat().After(from.Add(200 * time.Millisecond)) }, testTimeout, 10*time.Millisecond,
		"the other runner's heartbeat stopped behind the locked lease")
	require.NoError(t, stranded.Rollback(ctx))
	res, err := other.Execute(ctx, "w", nil)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
}

// Runners whose clocks disagree agree on who is alive: heartbeats are
// stamped, and their expiry judged, by the database's clock. A leader
// whose clock ran an hour ahead used to find every other runner's
// heartbeat an hour old, remove it and reset its tasks (which then ran
// twice, the live runner's work fenced out and lost); a leader whose clock
// ran an hour behind found a dead runner alive for an hour.
//
// The leader's recording clock is replaced outright, so no sample of the
// database's clock corrects it: liveness must not lean on that correction
// either (it is missing before the first sample, and off while samples
// are dropped).
func TestLivenessIgnoresRunnerClockSkew(t *testing.T) {
	t.Parallel()
	for _, skew := range []struct {
		name   string
		leader time.Duration
	}{{"LeaderAhead", time.Hour}, {"LeaderBehind", -time.Hour}} {
		t.Run(skew.name, func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, url string) {
				ctx := testContext(t)
				liveness := func(cfg *Config) *Config {
					// Longer than fastLiveness: a live runner must not
					// pass for dead on a busy machine while the test
					// watches several sweeps.
					cfg.HeartbeatInterval = 40 * time.Millisecond
					cfg.RunnerTimeout = time.Second
					return cfg
				}
				s := newStall()
				wf := MustWorkflow("z", Task{Name: "work", Run: s.run})
				leader := openRunner(t, url, liveness(&Config{Workflows: []*Workflow{wf}}))
				leader.now = func() time.Time { return time.Now().UTC().Add(skew.leader) }
				leader.claimsPaused.Store(true)
				leads := leadership(leader)
				require.NoError(t, leader.Start(ctx))
				waitLeader(t, leads, true)
				resets := onEvent(leader, eventOf(EventTaskReset))

				live := openRunner(t, url, liveness(&Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 1}))
				t.Cleanup(func() { close(s.release) }) // before the runner closes: its task returns
				s.zombies[live.ID()] = true
				require.NoError(t, live.Start(ctx))
				exec, err := live.ExecuteAsync(ctx, wf.Name(), nil)
				require.NoError(t, err)
				waitFor(t, s.started, "the task to start on the live runner")

				// The leader sweeps several times (each sweep follows a
				// heartbeat that removed expired runners); the first may
				// have begun before the task started. The live runner
				// keeps its task.
				sweeps := sweepsOf(leader)
				for range 4 {
					require.NoError(t, waitFor(t, sweeps, "a sweep by the leader"))
				}
				select {
				case e := <-resets:
					t.Fatalf("the leader reset task %s of a live runner", e.TaskID)
				case err := <-s.ended:
					t.Fatalf("the live runner's task was cancelled: %v", err)
				default:
				}
				require.True(t, leader.IsLeader())
				runners, err := leader.Runners(ctx)
				require.NoError(t, err)
				var ids []string
				for _, ri := range runners {
					ids = append(ids, ri.ID)
				}
				require.ElementsMatch(t, []string{leader.ID(), live.ID()}, ids, "both runners are registered")

				// The runner dies (its heartbeat stops): the leader resets
				// its task all the same, once its heartbeat is
				// RunnerTimeout old by the database's clock.
				live.heartbeatFrozen.Store(true)
				reset := waitFor(t, resets, "the leader to reset the dead runner's task")
				require.Equal(t, leader.ID(), reset.WorkerID)
				setClaiming(leader, true)
				res, err := exec.Wait(ctx)
				require.NoError(t, err)
				require.Equal(t, PipelineCompleted, res.Status)
				require.Equal(t, 1, res.Task("work").Recoveries)
				ranOn, err := Get[string](res.Context, "ran_on")
				require.NoError(t, err)
				require.Equal(t, leader.ID(), ranOn)
			})
		})
	}
}

// The leader's grace after a start (no sweep until it has been healthy
// for a whole RunnerTimeout) is measured on the monotonic clock. It was
// measured on the wall clock, so a step forward of that clock — NTP
// setting a VM's clock right after boot, a resume from suspend — ended the
// grace at once, and a leader could reset the tasks of runners whose
// heartbeats only looked stale because the database had just come back.
func TestSweepGraceIgnoresWallClockSteps(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		// A grace far longer than the test: the leader must never sweep.
		r := openRunner(t, url, &Config{HeartbeatInterval: 40 * time.Millisecond, RunnerTimeout: time.Hour})
		// The recording clock steps, uncorrected (see
		// TestLivenessIgnoresRunnerClockSkew).
		var step atomic.Int64
		r.now = func() time.Time { return time.Now().UTC().Add(time.Duration(step.Load())) }
		leads := leadership(r)
		beats := countBeats(r)
		sweeps := sweepsOf(r)
		require.NoError(t, r.Start(ctx))
		waitLeader(t, leads, true)

		step.Store(int64(2 * time.Hour))
		// Two sweeps' worth of heartbeats (one every orphanSweepEvery):
		// each sweep would run, and be seen, before the next heartbeat.
		for range 2*orphanSweepEvery + 1 {
			waitFor(t, beats, "a heartbeat of the leader")
		}
		select {
		case err := <-sweeps:
			t.Fatalf("the leader swept (error: %v) within its grace, after its wall clock stepped", err)
		default:
		}
		require.True(t, r.IsLeader())
	})
}

// A runner that stalls between claiming a task and starting it, for long
// enough to be declared dead, does not start the task once it wakes: the
// claim was reset and the task ran elsewhere — its run may be over. It
// used to call the function anyway (its completion was fenced out, but
// whatever the function did happened twice, after the run had ended).
// The task is in doubt whether the runner's heartbeats are still silent
// when it wakes, or one got through first (re-registering the runner,
// and finding no running task to cancel: the stalled one had not begun).
func TestStalledRunnerDoesNotStartATaskItLost(t *testing.T) {
	t.Parallel()
	for _, beatFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("BeatFirst=%t", beatFirst), func(t *testing.T) {
			t.Parallel()
			forEachBackend(t, func(t *testing.T, url string) {
				stalledStart(t, url, beatFirst)
			})
		})
	}
}

func stalledStart(t *testing.T, url string, beatFirst bool) {
	ctx := testContext(t)
	var ranOn sync.Map
	wf := MustWorkflow("stalled", Task{Name: "work", Run: func(ctx context.Context, tc *Context) error {
		info, _ := TaskInfoFrom(ctx)
		ranOn.Store(info.RunnerID, true)
		return nil
	}})
	leader := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
	leader.claimsPaused.Store(true)
	require.NoError(t, leader.Start(ctx))
	zombie := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
	claimed, release := make(chan struct{}, 1), make(chan struct{})
	hook := func(*driver.Task) {
		// Every claim the zombie takes stalls, the task's reset copy too
		// should it claim that before the leader does.
		select {
		case claimed <- struct{}{}:
		default:
		}
		<-release
	}
	zombie.beginHook.Store(&hook)
	require.NoError(t, zombie.Start(ctx))
	reset := onEvent(leader, eventOf(EventTaskReset))

	exec, err := zombie.ExecuteAsync(ctx, "stalled", nil)
	require.NoError(t, err)
	waitFor(t, claimed, "the zombie to claim the task")
	zombie.claimsPaused.Store(true)
	zombie.heartbeatFrozen.Store(true)
	waitFor(t, reset, "the leader to reset the zombie's task")
	setClaiming(leader, true)
	res, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)

	if beatFirst {
		// Beats run one after another: once the second beat from now is
		// under way, the first has committed and re-registered the runner.
		beats := make(chan struct{}, 2)
		beatHook := func() {
			select {
			case beats <- struct{}{}:
			default:
			}
		}
		zombie.beatHook.Store(&beatHook)
		zombie.heartbeatFrozen.Store(false)
		waitFor(t, beats, "a heartbeat of the zombie")
		waitFor(t, beats, "a second heartbeat of the zombie")
		require.False(t, zombie.claimInDoubt(time.Since(clockEpoch)), "heartbeats are on time again")
	}
	// The zombie's task goroutine goes on.
	close(release)
	require.NoError(t, zombie.Stop(ctx)) // returns once the task's goroutine has
	_, ran := ranOn.Load(zombie.ID())
	require.False(t, ran, "the zombie ran the task after its claim was reset and the run ended")
	_, ran = ranOn.Load(leader.ID())
	require.True(t, ran, "the task ran on the leader")
	events, err := leader.RunEvents(ctx, res.ID)
	require.NoError(t, err)
	completed := 0
	for _, e := range events {
		if e.Type == EventTaskCompleted {
			completed++
			require.Equal(t, leader.ID(), e.WorkerID)
		}
	}
	require.Equal(t, 1, completed)
}

// fenceReadFailing fails, once armed, as many claim reads as fails says:
// with a transient error, or a permanent one when permanent is set.
type fenceReadFailing struct {
	driver.Driver
	fails, reads atomic.Int64
	permanent    atomic.Bool
}

func (d *fenceReadFailing) Reader() driver.Executor {
	return &fenceReadFailingReader{Executor: d.Driver.Reader(), d: d}
}

type fenceReadFailingReader struct {
	driver.Executor
	d *fenceReadFailing
}

func (x *fenceReadFailingReader) TaskFenceCheck(ctx context.Context, p *driver.TaskFenceCheckParams) (*driver.TaskFenceCheckResult, error) {
	x.d.reads.Add(1)
	if x.d.fails.Add(-1) >= 0 {
		if x.d.permanent.Load() {
			return nil, errors.New("permission denied for table task_executions")
		}
		return nil, fmt.Errorf("%w: connection refused", driver.ErrTransient)
	}
	return x.Executor.TaskFenceCheck(ctx, p)
}

// A task whose claim is in doubt waits until the database answers whether
// the claim still holds, and then runs (once) if it does: it is not run
// on the chance that it does while the database cannot tell.
func TestClaimInDoubtWaitsForTheDatabase(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		flaky := &fenceReadFailing{}
		readsWhenRun := make(chan int64, 2)
		wf := MustWorkflow("doubt", Task{Name: "work", Run: func(context.Context, *Context) error {
			readsWhenRun <- flaky.reads.Load()
			return nil
		}})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		flaky.Driver = r.drv
		r.drv = flaky
		hook := func(*driver.Task) {
			// As if a heartbeat had just got through after a long gap:
			// every claim taken before now is in doubt.
			flaky.fails.Store(3)
			r.gapEnded.Store(int64(time.Since(clockEpoch)) + 1)
		}
		r.beginHook.Store(&hook)
		require.NoError(t, r.Start(ctx))
		res, err := r.Execute(ctx, "doubt", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, int64(4), waitFor(t, readsWhenRun, "the task to run"), "it ran once the fourth read answered")
		require.Empty(t, readsWhenRun, "it ran once")
	})
}

// A task abandoned by the sweep (its runner died past MaxRecoveries) is
// Failed and passes its own input on, as data flows through failed tasks:
// its Always successor receives it, and the final context holds it. The
// sweep's result carries no contexts (the orphans are listed without
// them), and a completion that took its missing input for an empty one
// passed {} downstream.
func TestAbandonedTaskPassesItsInputOn(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		for _, withSuccessor := range []bool{true, false} {
			ctx := testContext(t)
			s := newStall()
			tasks := []Task{
				{Name: "seed", Run: setKey("a", 1)},
				{Name: "crashy", DependsOn: []string{"seed"}, Run: s.run},
			}
			if withSuccessor {
				tasks = append(tasks, Task{Name: "cleanup", DependsOn: []string{"crashy"}, Trigger: Always(), Run: ok})
			}
			wf := MustWorkflow("cap", tasks...)
			cfg := func() *Config { return fastLiveness(&Config{Workflows: []*Workflow{wf}, MaxRecoveries: 1}) }
			leader := openRunner(t, url, cfg())
			leader.claimsPaused.Store(true)
			require.NoError(t, leader.Start(ctx))
			reset := onEvent(leader, eventOf(EventTaskReset))
			abandoned := onEvent(leader, eventOf(EventTaskAbandoned))
			exec, release := dieTwice(t, url, cfg(), s, reset)
			waitFor(t, abandoned, "the task to be abandoned")
			setClaiming(leader, true)
			res, err := exec.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, TaskStatusFailed, res.Task("crashy").Status)
			if withSuccessor {
				require.Equal(t, TaskStatusCompleted, res.Task("cleanup").Status)
				d, err := leader.GetTask(ctx, res.Task("cleanup").ID)
				require.NoError(t, err)
				a, err := Get[float64](d.Input, "a")
				require.NoError(t, err, "cleanup received the abandoned task's input")
				require.Equal(t, 1.0, a)
			}
			a, err := Get[float64](res.Context, "a")
			require.NoError(t, err, "the final context holds it (successor %v)", withSuccessor)
			require.Equal(t, 1.0, a)
			release()
			require.NoError(t, leader.Close())
		}
	})
}

// slowOrphansReader is a Reader whose listing of orphaned tasks (the
// sweep's first read) takes delay, as on a loaded database, or fails when
// its ctx ends first.
type slowOrphansReader struct {
	driver.Executor
	delay time.Duration
}

func (e *slowOrphansReader) TaskListOrphaned(ctx context.Context, p *driver.TaskListOrphanedParams) ([]*driver.Task, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(e.delay):
	}
	return e.Executor.TaskListOrphaned(ctx, p)
}

// A sweep that takes longer than its bound (a slow database, a loaded
// machine) is tried again with a longer one until it gets through. It was
// bounded at a fraction of a RunnerTimeout, every time, so that it would
// not hold back the next heartbeat; on a loaded CI machine it never got
// through, and a dead runner's task was never reset.
func TestSlowSweepGetsThrough(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		s := newStall()
		wf := MustWorkflow("z", Task{Name: "work", Run: s.run})
		var sweeps <-chan error
		leader, _, exec := zombieSetupWith(t, url, wf, s, zombieHooks{beforeStart: func(leader *Runner) {
			delay := 2 * leader.cfg.RunnerTimeout
			leader.drv = hookReader(leader.drv, func(x driver.Executor) driver.Executor {
				return &slowOrphansReader{Executor: x, delay: delay}
			})
			sweeps = sweepsOf(leader)
		}})
		failed := 0
		for {
			if err := waitFor(t, sweeps, "a sweep to end"); err == nil {
				break
			}
			failed++
		}
		require.Positive(t, failed, "no sweep ran out of its first bound")

		setClaiming(leader, true)
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		close(s.release)
		waitFor(t, s.ended, "the zombie's task to return")
	})
}

// A leader that stops gives up its leadership and says so, as it does
// any other change: IsLeader turned false at Stop with nothing logged.
func TestStopEndsLeadershipVisibly(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		r := openRunner(t, url, fastLiveness(&Config{}))
		changes := leadership(r)
		require.NoError(t, r.Start(ctx))
		waitLeader(t, changes, true)
		require.NoError(t, r.Stop(ctx))
		require.False(t, r.IsLeader())
		select {
		case held := <-changes:
			require.False(t, held)
		default:
			t.Fatal("Stop ended the leadership without telling")
		}
	})
}

// A runner that starts leaves the claims of the other live runners alone:
// no "reset every Running task at startup", in Start or in the sweeps
// after it. Only a runner whose heartbeat expired loses its tasks.
func TestStartingRunnerLeavesOtherRunnersClaimsAlone(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started := make(chan struct{}, 1)
		release := make(chan struct{})
		wf := MustWorkflow("held", Task{Name: "hold", Run: func(ctx context.Context, tc *Context) error {
			started <- struct{}{}
			select {
			case <-release:
				info, _ := TaskInfoFrom(ctx)
				return tc.Set("ran_on", info.RunnerID)
			case <-ctx.Done():
				return ctx.Err()
			}
		}})
		first := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
		leads := leadership(first)
		require.NoError(t, first.Start(ctx))
		waitLeader(t, leads, true)
		exec, err := first.ExecuteAsync(ctx, "held", nil)
		require.NoError(t, err)
		waitFor(t, started, "the task to start")

		sweeps := sweepsOf(first)
		second := startRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
		// Two sweeps that begin after more than a runner timeout since the
		// second runner started: a startup reset, or a sweep that took the
		// first runner for dead, would show by then.
		after := time.Now().Add(2 * first.cfg.RunnerTimeout)
		for n := 0; n < 2; {
			require.NoError(t, waitFor(t, sweeps, "a sweep"))
			if time.Now().After(after) {
				n++
			}
		}
		resets, err := second.Events(ctx, &EventQuery{RunID: ptr(exec.ID()), Types: []EventType{EventTaskReset}})
		require.NoError(t, err)
		require.Empty(t, resets, "a runner's start reset another live runner's task")
		now, err := second.Get(ctx, exec.ID())
		require.NoError(t, err)
		held, err := second.GetTask(ctx, now.Task("hold").ID)
		require.NoError(t, err)
		require.Equal(t, TaskStatusRunning, held.Status)
		require.Equal(t, first.ID(), held.RunnerID)

		close(release)
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, res.Error)
		require.Equal(t, 1, res.Task("hold").Attempts)
		got, err := Get[string](res.Context, "ran_on")
		require.NoError(t, err)
		require.Equal(t, first.ID(), got, "the task finished under its first claim")
	})
}
