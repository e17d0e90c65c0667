package soak

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// soakParams sizes one kill -9 soak.
type soakParams struct {
	url string
	// processes is how many runner processes share the database.
	processes int
	// runs is how many runs are submitted at least; submission goes on
	// until every kill is done.
	runs int
	// maxRuns stops submission even if kills are not done.
	maxRuns int
	// backlog bounds the runs submitted but not yet ended. A recovered
	// task joins the back of the queue, so a deep backlog would measure
	// queueing, not recovery.
	backlog int
	// kills is how many times a runner process is killed with SIGKILL.
	kills  int
	runner runnerSpec
}

// TestKill9SoakPostgres: three runner processes on one PostgreSQL schema,
// at least 2,000 runs of the soak workflow with random failures and
// retries; runner processes are killed with SIGKILL four times (the
// leader, then another runner, alternately) and restarted.
//
// The soaks do not run in parallel: each keeps both cores of a CI machine
// busy, and together they starve each other's heartbeats and take longer
// than in turn. The lighter tests of the package run alongside them.
func TestKill9SoakPostgres(t *testing.T) {
	soak(t, soakParams{
		url:       testdb.PostgresSchemaURL(t),
		processes: 3,
		runs:      2000,
		maxRuns:   8000,
		backlog:   96,
		kills:     4,
		runner: runnerSpec{
			Behaviour:     behaviour{FailProb: 0.15, FailLast: true, MaxWork: 10 * time.Millisecond},
			MaxConcurrent: 16,
			Poll:          100 * time.Millisecond,
			Heartbeat:     100 * time.Millisecond,
			RunnerTimeout: time.Second,
		},
	})
}

// TestKill9SoakSQLite: the same with two runner processes on one SQLite
// file (and the test process submitting runs: three processes writing),
// and four kills; see sqliteRuns for its size. Other processes' work is
// found by polling on SQLite, hence the shorter poll interval.
func TestKill9SoakSQLite(t *testing.T) {
	soak(t, soakParams{
		url:       testdb.SQLiteURL(t),
		processes: 2,
		runs:      sqliteRuns(),
		maxRuns:   5000,
		backlog:   32,
		kills:     4,
		runner: runnerSpec{
			Behaviour:     behaviour{FailProb: 0.15, FailLast: true, MaxWork: 10 * time.Millisecond},
			MaxConcurrent: 8,
			Poll:          50 * time.Millisecond,
			Heartbeat:     100 * time.Millisecond,
			RunnerTimeout: time.Second,
		},
	})
}

// sqliteRuns is the size of the SQLite soak: 1,000 runs, or 400 under
// the race detector, which makes the transpiled SQLite about eight times
// slower — every write of the three processes goes through one lock, so
// the soak cannot use more than about one core.
func sqliteRuns() int {
	if raceEnabled {
		return 400
	}
	return 1000
}

func soak(t *testing.T, p soakParams) {
	ctx := testContext(t, 4*time.Minute)
	began := time.Now()
	// The test process submits runs and reads results; it runs no task.
	submitter, st := openSubmitter(t, ctx, p.url, p.runner.Behaviour)

	procs := make([]*runnerProcess, p.processes)
	for i := range procs {
		procs[i] = startRunnerProcess(t, p.spec(i))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, proc := range procs {
				t.Logf("log of runner process %s (runner %s):\n%s", proc.name, proc.runnerID, proc.stderr)
			}
		}
	})

	var killsDone atomic.Bool
	submitCtx, stopSubmitting := context.WithCancel(ctx)
	submitDone := make(chan struct{})
	var runs int
	var submitErr error
	go func() {
		defer close(submitDone)
		runs, _, submitErr = submitRuns(submitCtx, submitter, st, p.backlog, false, func(n int) bool {
			return n >= p.maxRuns || (n >= p.runs && killsDone.Load())
		})
	}()
	// No goroutine outlives the test, however it ends.
	t.Cleanup(func() { stopSubmitting(); <-submitDone })

	sampler := startHeartbeatSampler(ctx, st)
	t.Cleanup(sampler.stop)

	var kills []kill
	for k := range p.kills {
		slot, leader := pickVictim(t, ctx, st, procs, k%2 == 0)
		victim := procs[slot]
		// Kill a runner that is working: wait until it holds a claim.
		waitUntil(t, ctx, 5*time.Millisecond, fmt.Sprintf("runner %s to hold a task", victim.name), func(ctx context.Context) (bool, error) {
			n, err := st.runningTasks(ctx, victim.runnerID)
			return n > 0, err
		})
		at := victim.kill(t)
		kills = append(kills, kill{runnerID: victim.runnerID, at: at, leader: leader})
		procs[slot] = startRunnerProcess(t, p.spec(slot))
		// One recovery at a time, so each kill's figures are its own.
		waitUntil(t, ctx, 10*time.Millisecond, fmt.Sprintf("the tasks of killed runner %s to be reset", victim.runnerID),
			func(ctx context.Context) (bool, error) {
				n, err := st.runningTasks(ctx, victim.runnerID)
				return n == 0, err
			})
	}
	killsDone.Store(true)
	select {
	case <-submitDone:
	case <-ctx.Done():
		t.Fatal("timed out waiting for the last runs to be submitted")
	}
	require.NoError(t, submitErr)
	require.GreaterOrEqual(t, runs, p.runs)

	waitUntil(t, ctx, 50*time.Millisecond, "every run to end", func(ctx context.Context) (bool, error) {
		n, err := st.unfinishedRuns(ctx)
		return n == 0, err
	})
	worked := time.Since(began)
	sampler.stop()
	require.NoError(t, sampler.err)
	for _, proc := range procs {
		proc.stop(t)
	}

	snap := takeSnapshot(t, ctx, submitter, st)
	require.Len(t, snap.runs, runs)
	checkInvariants(t, snap, checkOpts{})
	recs, spurious := recoveries(t, snap, kills)

	var perKill, perTask, detect []time.Duration
	var lines []string
	measured := 0
	for i, kr := range recs {
		if len(kr.resume) == 0 {
			// The runner held claims when it was killed (the test waited
			// for one), but all of them had been reset already: its
			// heartbeat was late before it died.
			lines = append(lines, fmt.Sprintf("kill %d (leader=%t): no claim left to recover", i+1, kr.leader))
			continue
		}
		measured++
		all := kr.resume[len(kr.resume)-1]
		perKill = append(perKill, all)
		perTask = append(perTask, kr.resume...)
		detect = append(detect, kr.detect...)
		lines = append(lines, fmt.Sprintf("kill %d (leader=%t): %d tasks in flight, reset after %s, all running again after %s (each: %s)",
			i+1, kr.leader, len(kr.resume), joinDurations(kr.detect[:1]), ms(all), joinDurations(kr.resume)))
	}
	require.GreaterOrEqual(t, measured, (len(kills)+1)/2, "too few kills left claims to recover:\n%s", strings.Join(lines, "\n"))
	var completed, failed, execs, abandoned int
	for _, e := range snap.events {
		if e.Type == cloacina.EventTaskAbandoned {
			abandoned++
		}
	}
	for _, run := range snap.runs {
		if run.Status == cloacina.PipelineCompleted {
			completed++
		} else {
			failed++
		}
	}
	execs = len(snap.execs)
	u, _ := cloacina.ParseDatabaseURL(p.url)
	lines = append([]string{
		fmt.Sprintf("backend=%s processes=%d runs=%d (completed %d, failed %d) task executions=%d events=%d kills=%d heartbeat=%s runner_timeout=%s",
			u.Backend, p.processes, runs, completed, failed, execs, len(snap.events), len(kills), p.runner.Heartbeat, p.runner.RunnerTimeout),
		fmt.Sprintf("kill -> all in-flight tasks running elsewhere, per kill: %s", statsOf(perKill)),
		fmt.Sprintf("kill -> task running elsewhere, per task: %s", statsOf(perTask)),
		fmt.Sprintf("kill -> task_reset, per task: %s", statsOf(detect)),
		fmt.Sprintf("tasks reset because a live runner's heartbeat was late: %d; tasks abandoned: %d", spurious, abandoned),
		fmt.Sprintf("heartbeat age of live runners, sampled every %s: %s (over %s: %d of %d samples)",
			heartbeatSampleInterval, sampler.ages(kills), p.runner.RunnerTimeout, sampler.over(kills, p.runner.RunnerTimeout), len(sampler.samples)),
		fmt.Sprintf("wall time %s (runs until all ended %s)", time.Since(began).Round(time.Millisecond), worked.Round(time.Millisecond)),
	}, lines...)
	report(t, lines...)
}

// spec returns the runner spec of process slot i.
func (p soakParams) spec(i int) runnerSpec {
	s := p.runner
	s.URL = p.url
	s.Name = fmt.Sprintf("runner%d", i)
	return s
}

// pickVictim returns the slot of the process to kill: the one holding the
// maintenance lease when leader is true (if any does), another otherwise.
func pickVictim(t *testing.T, ctx context.Context, st *store, procs []*runnerProcess, leader bool) (slot int, isLeader bool) {
	t.Helper()
	var holder string
	if leader {
		// Right after start, or after the leader was killed, no live
		// runner may hold the lease yet.
		waitUntil(t, ctx, 10*time.Millisecond, "a live runner to hold the maintenance lease", func(ctx context.Context) (bool, error) {
			var err error
			if holder, err = st.leader(ctx); err != nil {
				return false, err
			}
			for _, proc := range procs {
				if proc.runnerID == holder {
					return true, nil
				}
			}
			return false, nil
		})
	} else {
		var err error
		holder, err = st.leader(ctx)
		require.NoError(t, err)
	}
	for i, proc := range procs {
		if (proc.runnerID == holder) == leader {
			return i, proc.runnerID == holder
		}
	}
	return 0, procs[0].runnerID == holder
}

// submitRuns creates runs, keeping at most backlog of them unfinished,
// until done reports true for the number submitted so far. With tolerate,
// a failed submission (the database is restarting) is counted and
// retried instead of ending the submission.
func submitRuns(ctx context.Context, r *cloacina.Runner, st *store, backlog int, tolerate bool, done func(submitted int) bool) (submitted, failures int, err error) {
	unfinished := 0
	ticker := time.NewTicker(20 * time.Millisecond)
	defer ticker.Stop()
	pause := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			return nil
		}
	}
	for !done(submitted) {
		if unfinished >= backlog {
			if err := pause(); err != nil {
				return submitted, failures, err
			}
			n, err := st.unfinishedRuns(ctx)
			switch {
			case err == nil:
				unfinished = n
			case tolerate:
				// The database is away: try a submission, which is what
				// an application would be doing meanwhile.
				unfinished = 0
			default:
				return submitted, failures, fmt.Errorf("count unfinished runs: %w", err)
			}
			continue
		}
		if _, err := r.ExecuteAsync(ctx, workflowName, nil); err != nil {
			if !tolerate || ctx.Err() != nil {
				return submitted, failures, fmt.Errorf("submit run %d: %w", submitted+1, err)
			}
			failures++
			if err := pause(); err != nil {
				return submitted, failures, err
			}
			continue
		}
		submitted++
		unfinished++
	}
	return submitted, failures, nil
}

// heartbeatSampleInterval is how often the sampler reads the registry.
const heartbeatSampleInterval = 50 * time.Millisecond

// heartbeatSampler reads the runner registry while a soak runs, to show
// how stale a live runner's heartbeat gets: a runner whose heartbeat is
// older than RunnerTimeout is declared dead while it works.
type heartbeatSampler struct {
	cancel  context.CancelFunc
	done    chan struct{}
	samples []heartbeatSample
	err     error
}

type heartbeatSample struct {
	at       time.Time
	runnerID string
	age      time.Duration
}

func startHeartbeatSampler(ctx context.Context, st *store) *heartbeatSampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &heartbeatSampler{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		ticker := time.NewTicker(heartbeatSampleInterval)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
			beats, err := st.heartbeats(ctx)
			// Taken after the read, so an age is never understated.
			at := time.Now()
			if err != nil {
				if ctx.Err() == nil {
					s.err = fmt.Errorf("sample heartbeats: %w", err)
				}
				return
			}
			for id, beat := range beats {
				s.samples = append(s.samples, heartbeatSample{at: at, runnerID: id, age: at.Sub(beat)})
			}
		}
	}()
	return s
}

// stop stops sampling; the samples may be read afterwards.
func (s *heartbeatSampler) stop() {
	s.cancel()
	<-s.done
}

// live returns the ages sampled while their runner was alive: samples of a
// killed runner taken after its kill are left out.
func (s *heartbeatSampler) live(kills []kill) []time.Duration {
	killedAt := map[string]time.Time{}
	for _, k := range kills {
		killedAt[k.runnerID] = k.at
	}
	var out []time.Duration
	for _, smp := range s.samples {
		if at, ok := killedAt[smp.runnerID]; ok && !smp.at.Before(at) {
			continue
		}
		out = append(out, smp.age)
	}
	return out
}

func (s *heartbeatSampler) ages(kills []kill) durationStats { return statsOf(s.live(kills)) }

func (s *heartbeatSampler) over(kills []kill, limit time.Duration) int {
	n := 0
	for _, age := range s.live(kills) {
		if age > limit {
			n++
		}
	}
	return n
}
