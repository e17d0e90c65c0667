package cloacina

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// subStatusLiarTx lies (see lyingDriver) about the commit of a
// transaction that set a task's sub-status.
type subStatusLiarTx struct {
	driver.Tx
	d   *lyingDriver
	set bool
}

func (tx *subStatusLiarTx) TaskSubStatusSet(ctx context.Context, p *driver.TaskSubStatusParams) (bool, error) {
	held, err := tx.Tx.TaskSubStatusSet(ctx, p)
	tx.set = tx.set || (err == nil && held)
	return held, err
}

func (tx *subStatusLiarTx) Commit(ctx context.Context) error { return tx.d.commit(ctx, tx.Tx, tx.set) }

// A deferral whose commit is reported lost, though it committed, is
// retried; the retry records nothing again: one task_deferred and one
// task_resumed per wait, as for every other transition.
func TestDeferUntilRecordsEachTransitionOnceWhenACommitIsReportedLost(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var ready atomic.Bool
		wf := MustWorkflow("waiting", Task{Name: "await", Run: func(ctx context.Context, tc *Context) error {
			return DeferUntil(ctx, 5*time.Millisecond, func(context.Context) (bool, error) { return ready.Load(), nil })
		}})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		liar := &lyingDriver{}
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &subStatusLiarTx{Tx: tx, d: liar} })
		require.NoError(t, r.Start(ctx))
		liar.armed.Store(2) // the deferral and the resumption
		exec, err := r.ExecuteAsync(ctx, "waiting", nil)
		require.NoError(t, err)
		// The commit that recorded the deferral reported failure: no
		// commit hook sees its event, the database does.
		require.Eventually(t, func() bool {
			evs, err := r.Events(ctx, &EventQuery{RunID: ptr(exec.ID()), Types: []EventType{EventTaskDeferred}})
			require.NoError(t, err)
			return len(evs) > 0 && liar.lied.Load() == 1
		}, testTimeout, 5*time.Millisecond, "the task to defer")
		ready.Store(true)
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, int64(2), liar.lied.Load(), "every armed lie was told")
		require.Equal(t, []string{"task_created await", "task_marked_ready await", "pipeline_started",
			"task_claimed await", "task_started await", "task_deferred await", "task_resumed await",
			"task_completed await", "pipeline_completed"}, eventTypes(t, r, res.ID))
	})
}

// Several runners work many runs while they are paused, resumed and
// cancelled at random: once every run has ended and every task returned,
// the log alone, listed or followed as it was written, replays to the
// stored status of every run and task, each run has one pipeline_started
// at most and one terminal event, last, and sequence numbers never repeat.
func TestReplayMatchesUnderControlChurn(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := churnWorkflow("churn")
		var runners []*Runner
		for range 3 {
			runners = append(runners, startRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 4}))
		}
		// Two followers, from the start of the log: all of it, and the
		// completions only.
		all := startStream(t, runners[1], &EventQuery{Follow: true})
		completions := startStream(t, runners[2], &EventQuery{Follow: true, Types: []EventType{EventTaskCompleted}})
		const n = 30
		ids := make([]uuid.UUID, n)
		for i := range ids {
			exec, err := runners[i%len(runners)].ExecuteAsync(ctx, "churn", nil)
			require.NoError(t, err)
			ids[i] = exec.ID()
		}
		controlChurn(t, runners, ids, 1, 40, func(err error) bool { return errors.Is(err, ErrRunFinished) })
		// Whatever is still paused goes on.
		for _, id := range ids {
			if err := runners[0].Resume(ctx, id); err != nil && !errors.Is(err, ErrRunFinished) {
				require.NoError(t, err)
			}
		}
		results := waitRunsEnded(t, runners[0], ids)

		events, err := runners[0].Events(ctx, nil)
		require.NoError(t, err)
		seen := map[int64]bool{}
		for _, e := range events {
			require.False(t, seen[e.SequenceNum], "sequence number %d twice", e.SequenceNum)
			seen[e.SequenceNum] = true
		}
		var want []int64
		for _, e := range events {
			if e.Type == EventTaskCompleted {
				want = append(want, e.SequenceNum)
			}
		}
		gotAll := all.take(t, len(events))
		gotCompletions := completions.take(t, len(want))
		require.ElementsMatch(t, seqsOf(events), seqsOf(gotAll), "the followed log is the log")
		require.ElementsMatch(t, want, seqsOf(gotCompletions), "the followed completions are the log's")
		replayed, streamed := Replay(events), Replay(gotAll)
		for _, id := range ids {
			res := results[id]
			require.Equal(t, res.Status, replayed.Runs[id], "run %s", id)
			require.Equal(t, res.Status, streamed.Runs[id], "run %s, from the followed log", id)
			for _, tr := range res.Tasks {
				require.Equal(t, tr.Status, replayed.Tasks[tr.ID], "task %s of run %s", tr.Name, id)
				require.Equal(t, tr.Status, streamed.Tasks[tr.ID], "task %s of run %s, from the followed log", tr.Name, id)
			}
			var started, terminal int
			var runEvents []*Event
			for _, e := range events {
				if e.PipelineID == id {
					runEvents = append(runEvents, e)
				}
			}
			for i, e := range runEvents {
				switch e.Type {
				case EventPipelineStarted:
					started++
				case EventPipelineCompleted, EventPipelineFailed, EventPipelineCancelled:
					terminal++
					// Only the outcomes of tasks that were running may follow.
					for _, later := range runEvents[i+1:] {
						require.Contains(t, []EventType{EventTaskCompleted, EventTaskFailed, EventTaskDeferred, EventTaskResumed},
							later.Type, "run %s: %s after its end", id, later.Type)
					}
				}
			}
			require.LessOrEqual(t, started, 1, "run %s started twice", id)
			require.Equal(t, 1, terminal, "run %s ended once", id)
		}
	})
}

// A run claimed by a runner whose definition of its workflow differs (a
// rolling deploy that changed a timeout) records, in pipeline_started, the
// workflow version the run was started with: the one stored with it.
func TestPipelineStartedNamesTheRunsWorkflowVersion(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		before := MustWorkflow("deploy", Task{Name: "a", Run: ok})
		after := MustWorkflow("deploy", Task{Name: "a", Run: ok, Timeout: time.Minute})
		require.NotEqual(t, before.Version(), after.Version())
		old := openRunner(t, url, &Config{Workflows: []*Workflow{before}}) // not started: it only starts runs
		exec, err := old.ExecuteAsync(ctx, "deploy", nil)
		require.NoError(t, err)
		current := startRunner(t, url, &Config{Workflows: []*Workflow{after}})
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, before.Version(), res.WorkflowVersion)
		evs, err := current.Events(ctx, &EventQuery{RunID: &res.ID, Types: []EventType{EventPipelineStarted}})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		data, err := evs[0].Payload()
		require.NoError(t, err)
		require.Equal(t, res.Workflow, data.Workflow)
		require.Equal(t, res.WorkflowVersion, data.WorkflowVersion, "the run's version, not the claimer's")
	})
}

// churnWorkflow is a workflow whose runs retry (b fails its first
// attempt), wait (c defers twice) and join (d): every kind of transition
// a churn test exercises.
func churnWorkflow(name string) *Workflow {
	var flaky sync.Map
	retry := &RetryPolicy{MaxAttempts: 3, Backoff: BackoffFixed, InitialDelay: 5 * time.Millisecond}
	return MustWorkflow(name,
		Task{Name: "a", Run: ok},
		Task{Name: "b", DependsOn: []string{"a"}, Retry: retry, Run: func(ctx context.Context, _ *Context) error {
			info, _ := TaskInfoFrom(ctx)
			if _, again := flaky.LoadOrStore(info.RunID, true); !again {
				return errors.New("first attempt fails")
			}
			return nil
		}},
		Task{Name: "c", DependsOn: []string{"a"}, Run: func(ctx context.Context, _ *Context) error {
			polls := 0
			return DeferUntil(ctx, 2*time.Millisecond, func(context.Context) (bool, error) { polls++; return polls > 2, nil })
		}},
		Task{Name: "d", DependsOn: []string{"b", "c"}, Run: ok},
	)
}

// controlChurn has each runner Pause, Resume and Cancel (one call in
// fifteen) ops of the runs ids picked at random (seeded by seed), at once,
// and fails the test on an error that expected does not allow.
func controlChurn(t *testing.T, runners []*Runner, ids []uuid.UUID, seed uint64, ops int, expected func(error) bool) {
	t.Helper()
	ctx := testContext(t)
	n := len(ids)
	rnd := rand.New(rand.NewPCG(seed, seed+1))
	var wg sync.WaitGroup
	for _, r := range runners {
		picks := make([]int, ops)
		for i := range picks {
			picks[i] = rnd.IntN(n * 3)
		}
		wg.Go(func() {
			for _, op := range picks {
				id := ids[op%n]
				var err error
				switch op / n {
				case 0:
					err = r.Pause(ctx, id)
				case 1:
					err = r.Resume(ctx, id)
				default:
					if op%5 == 0 {
						err = r.Cancel(ctx, id)
					} else {
						err = r.Resume(ctx, id)
					}
				}
				if err != nil && !expected(err) {
					t.Errorf("control of run %s: %v", id, err)
				}
			}
		})
	}
	wg.Wait()
}

// waitRunsEnded waits until every run of ids has ended with no task
// running, and returns their results. A read that fails transiently (a
// fault test's) is tried again.
func waitRunsEnded(t *testing.T, r *Runner, ids []uuid.UUID) map[uuid.UUID]*ExecutionResult {
	t.Helper()
	ctx := testContext(t)
	results := make(map[uuid.UUID]*ExecutionResult, len(ids))
	require.Eventually(t, func() bool {
		for _, id := range ids {
			res, err := r.Get(ctx, id)
			if errors.Is(err, driver.ErrTransient) {
				return false
			}
			require.NoError(t, err)
			if !res.Status.Terminal() {
				return false
			}
			for _, tr := range res.Tasks {
				if tr.Status == TaskStatusRunning {
					return false
				}
			}
			results[id] = res
		}
		return true
	}, testTimeout, 20*time.Millisecond, "every run ended with no task running")
	return results
}
