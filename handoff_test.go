package cloacina

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// commitLog records every change set a runner commits.
type commitLog struct {
	mu   sync.Mutex
	sets []driver.ChangeSet
}

func logCommits(r *Runner) *commitLog {
	l := &commitLog{}
	prev := r.commitHook.Load()
	hook := func(c *changes) {
		if prev != nil {
			(*prev)(c)
		}
		l.mu.Lock()
		l.sets = append(l.sets, c.cs)
		l.mu.Unlock()
	}
	r.commitHook.Store(&hook)
	return l
}

// outboxRows counts the outbox rows written by the logged commits.
func (l *commitLog) outboxRows() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, cs := range l.sets {
		n += len(cs.Outbox)
	}
	return n
}

// startRuns starts n runs of workflow.
func startRuns(t *testing.T, r *Runner, workflow string, n int) []*Execution {
	t.Helper()
	execs := make([]*Execution, n)
	for i := range execs {
		exec, err := r.ExecuteAsync(testContext(t), workflow, nil)
		require.NoError(t, err)
		execs[i] = exec
	}
	return execs
}

// startWithoutClaimer starts r and returns once its claimer has made its
// first claim, and keeps the claimer from claiming again until r stops:
// while a claim is in flight the claimer holds the free slots, and work
// made ready meanwhile would go to the outbox instead of to the runner
// that made it ready.
func startWithoutClaimer(t *testing.T, r *Runner) {
	t.Helper()
	idle := make(chan struct{})
	var once sync.Once
	hook := func(ctx context.Context) {
		once.Do(func() { close(idle) })
		<-ctx.Done()
	}
	r.idleHook.Store(&hook)
	require.NoError(t, r.Start(testContext(t)))
	waitFor(t, idle, "the claimer's first claim")
}

// eventTypes lists the types of a run's events in sequence order.
func eventTypes(t *testing.T, r *Runner, run uuid.UUID) []string {
	t.Helper()
	events, err := r.Events(testContext(t), &EventQuery{RunID: &run})
	require.NoError(t, err)
	var out []string
	for _, e := range events {
		name := string(e.Type)
		if e.TaskName != "" {
			name += " " + e.TaskName
		}
		out = append(out, name)
	}
	return out
}

// A started runner with free slots claims the first tasks of the runs it
// starts and the successors of the tasks it completes in the same
// transactions: no outbox row, no claim transaction, and the same events
// in the same order as a claim from the outbox.
func TestRunnerClaimsWhatItMakesReady(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("chain",
			Task{Name: "a", Run: setKey("a", 1)},
			Task{Name: "b", Run: setKey("b", 2), DependsOn: []string{"a"}},
			Task{Name: "c", Run: ok, DependsOn: []string{"b"}})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 8})
		startWithoutClaimer(t, r)
		commits := logCommits(r)

		res, err := r.Execute(ctx, "chain", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Zero(t, commits.outboxRows(), "every task was claimed where it became ready")
		require.Equal(t, []string{
			"task_created a", "task_created b", "task_created c",
			"task_marked_ready a", "pipeline_started", "task_claimed a", "task_started a",
			"task_completed a", "task_marked_ready b", "task_claimed b", "task_started b",
			"task_completed b", "task_marked_ready c", "task_claimed c", "task_started c",
			"task_completed c", "pipeline_completed",
		}, eventTypes(t, r, res.ID))

		events, err := r.Events(ctx, &EventQuery{RunID: &res.ID})
		require.NoError(t, err)
		for _, e := range events {
			require.Equal(t, r.ID(), e.WorkerID)
		}
		replayed := Replay(events)
		require.Equal(t, PipelineCompleted, replayed.Runs[res.ID])
		tasks, err := r.drv.Reader().TaskList(ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{res.ID}})
		require.NoError(t, err)
		for _, task := range tasks {
			require.Equal(t, driver.TaskCompleted, task.Status)
			require.Equal(t, r.ID(), task.RunnerID, "task %s ran under this runner's claim", task.Name)
			require.NotNil(t, task.StartedAt)
		}
		run, err := r.Get(ctx, res.ID)
		require.NoError(t, err)
		require.NotNil(t, run.StartedAt)
	})
}

// A runner that is not started, or that does not claim, leaves new work
// in the outbox for any runner.
func TestRunsStartedWithoutClaimingGoThroughTheOutbox(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("wf", Task{Name: "a", Run: ok}, Task{Name: "b", Run: ok, DependsOn: []string{"a"}})
		submitter := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		commits := logCommits(submitter)
		exec, err := submitter.ExecuteAsync(ctx, "wf", nil)
		require.NoError(t, err)
		require.Equal(t, 1, commits.outboxRows())
		run, err := submitter.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, PipelinePending, run.Status)
		require.Nil(t, run.StartedAt)

		worker := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, []string{
			"task_created a", "task_created b", "task_marked_ready a",
			"pipeline_started", "task_claimed a", "task_started a",
			"task_completed a", "task_marked_ready b", "task_claimed b", "task_started b",
			"task_completed b", "pipeline_completed",
		}, eventTypes(t, worker, res.ID))
	})
}

// Claims where work becomes ready never exceed the runner's slots: what
// does not fit goes to the outbox and is claimed as slots free up.
func TestClaimsOnReadyRespectTheSlots(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var running, peak atomic.Int64
		body := func(context.Context, *Context) error {
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			running.Add(-1)
			return nil
		}
		tasks := []Task{{Name: "root", Run: body}}
		var mids []string
		for i := range 6 {
			name := fmt.Sprintf("m%d", i)
			mids = append(mids, name)
			tasks = append(tasks, Task{Name: name, Run: body, DependsOn: []string{"root"}})
		}
		tasks = append(tasks, Task{Name: "join", Run: body, DependsOn: mids})
		wf := MustWorkflow("fan", tasks...)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 2})
		commits := logCommits(r)
		for _, exec := range startRuns(t, r, "fan", 5) {
			res, err := exec.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status)
		}
		require.LessOrEqual(t, peak.Load(), int64(2), "never more tasks at once than slots")
		require.Positive(t, commits.outboxRows(), "what did not fit waited in the outbox")
		slotsFree(t, r)
	})
}

// Stopping while runs are being started and advanced loses nothing: Stop
// waits for the tasks it claimed, and a runner started again finishes the
// rest.
func TestStopWhileClaimingOnReady(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("chain", Task{Name: "a", Run: ok}, Task{Name: "b", Run: ok, DependsOn: []string{"a"}},
			Task{Name: "c", Run: ok, DependsOn: []string{"b"}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 16})
		started := onEvent(r, eventOf(EventTaskCompleted))

		var ids sync.Map
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					exec, err := r.ExecuteAsync(ctx, "chain", nil)
					if err != nil {
						t.Errorf("start: %v", err)
						return
					}
					ids.Store(exec.ID(), true)
				}
			})
		}
		for range 20 {
			waitFor(t, started, "tasks to complete")
		}
		require.NoError(t, r.Stop(ctx))
		close(stop)
		wg.Wait()
		require.Zero(t, len(r.runningTasks()))

		require.NoError(t, r.Start(ctx))
		n := 0
		ids.Range(func(key, _ any) bool {
			n++
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			res, err := r.wait(wctx, key.(uuid.UUID))
			if err != nil {
				id := key.(uuid.UUID)
				tasks, _ := r.drv.Reader().TaskList(ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{id}})
				for _, tk := range tasks {
					t.Logf("task %s %s runner=%s attempt=%d", tk.Name, tk.Status, tk.RunnerID, tk.Attempt)
				}
				t.Logf("events: %v runner %s", eventTypes(t, r, id), r.ID())
			}
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status)
			return true
		})
		require.Positive(t, n)
		events, err := r.Events(ctx, &EventQuery{Types: []EventType{EventTaskCompleted}})
		require.NoError(t, err)
		require.Len(t, events, 3*n, "each task completed once")
	})
}

// lyingDriver reports a failure after committing, once it is armed, for
// a transaction that claims tasks (from the outbox, or where they became
// ready): the reply to COMMIT was lost, the commit was not.
type lyingDriver struct {
	skip  atomic.Int64 // commits to let through before lying
	armed atomic.Int64 // commits left to lie about
	lied  atomic.Int64
}

type lyingTx struct {
	driver.Tx
	d      *lyingDriver
	claims bool
}

func (tx *lyingTx) TaskClaim(ctx context.Context, p *driver.TaskClaimParams) (*driver.TaskClaimResult, error) {
	res, err := tx.Tx.TaskClaim(ctx, p)
	tx.claims = tx.claims || (err == nil && len(res.Tasks) > 0)
	return res, err
}

func (tx *lyingTx) ChangeSetApply(ctx context.Context, cs *driver.ChangeSet) error {
	for _, u := range cs.Tasks {
		tx.claims = tx.claims || u.Status == driver.TaskRunning
	}
	for _, ti := range cs.NewTasks {
		tx.claims = tx.claims || ti.Status == driver.TaskRunning
	}
	return tx.Tx.ChangeSetApply(ctx, cs)
}

func (tx *lyingTx) Commit(ctx context.Context) error { return tx.d.commit(ctx, tx.Tx, tx.claims) }

// commit commits tx and, when the transaction is one to lie about and the
// driver is armed, reports that the reply to COMMIT was lost.
func (d *lyingDriver) commit(ctx context.Context, tx driver.Tx, lie bool) error {
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	if lie && d.skip.Add(-1) < 0 && d.armed.Add(-1) >= 0 {
		d.lied.Add(1)
		return fmt.Errorf("%w: connection lost while reading the reply to COMMIT", driver.ErrTransient)
	}
	return nil
}

// A transaction that claimed tasks where they became ready and then saw
// its commit fail may have committed after all: the runner checks, and
// runs the tasks it holds exactly once.
func TestClaimsOnReadyOfAnUncertainCommit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var runs sync.Map
		count := func(name string) TaskFunc {
			return func(ctx context.Context, _ *Context) error {
				info, _ := TaskInfoFrom(ctx)
				n, _ := runs.LoadOrStore(fmt.Sprint(info.RunID, name), new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				return nil
			}
		}
		wf := MustWorkflow("chain", Task{Name: "a", Run: count("a")}, Task{Name: "b", Run: count("b"), DependsOn: []string{"a"}})
		r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		lying := &lyingDriver{}
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &lyingTx{Tx: tx, d: lying} })
		startWithoutClaimer(t, r)
		lying.armed.Store(4)

		execs := startRuns(t, r, "chain", 6)
		for _, exec := range execs {
			res, err := exec.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status)
			for _, name := range []string{"a", "b"} {
				n, ok := runs.Load(fmt.Sprint(exec.ID(), name))
				require.True(t, ok, "task %s of run %s ran", name, exec.ID())
				require.Equal(t, int64(1), n.(*atomic.Int64).Load(), "task %s of run %s ran once", name, exec.ID())
			}
		}
		require.Equal(t, int64(4), lying.lied.Load(), "every armed lie was told")
		for _, exec := range execs {
			require.Equal(t, []string{
				"task_created a", "task_created b", "task_marked_ready a",
				"pipeline_started", "task_claimed a", "task_started a",
				"task_completed a", "task_marked_ready b", "task_claimed b", "task_started b",
				"task_completed b", "pipeline_completed",
			}, eventTypes(t, r, exec.ID()), "one claim and one completion per task")
		}
		slotsFree(t, r)
	})
}

// A runner that leaves new work to its own claimer (and sends no NOTIFY
// for it) takes the free slots for it in the transaction, so two
// transactions cannot both count on the same slot: here two runs resumed
// while the claimer of A (one slot) is busy elsewhere. The first takes A's
// slot, the second wakes B. Both used to count on A's one slot, and the
// second task waited for A's task to end or for a poll (an hour here).
func TestWakeUpsCountEachFreeSlotOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		starts := make(chan string, 2)
		release := make(chan struct{})
		wf := MustWorkflow("slot", Task{Name: "hold", Run: func(ctx context.Context, _ *Context) error {
			info, _ := TaskInfoFrom(ctx)
			starts <- info.RunnerID
			<-release
			return nil
		}})
		a := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 1, PollInterval: time.Hour})
		b := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, PollInterval: time.Hour})
		t.Cleanup(func() { close(release) }) // before the runners' Close
		a.claimsPaused.Store(true)
		b.claimsPaused.Store(true)
		require.NoError(t, a.Start(ctx))
		require.NoError(t, b.Start(ctx))
		var runs []*Execution
		for range 2 {
			exec, err := a.ExecuteAsync(ctx, "slot", nil)
			require.NoError(t, err)
			require.NoError(t, a.Pause(ctx, exec.ID()))
			runs = append(runs, exec)
		}
		a.claimsPaused.Store(false)
		b.claimsPaused.Store(false)

		letGo := holdClaimer(t, a)
		for _, exec := range runs {
			require.NoError(t, a.Resume(ctx, exec.ID()))
		}
		letGo()
		// Whichever runner claims first, both tasks start while A's runs:
		// B, once woken, may claim both.
		got := []string{waitFor(t, starts, "a task to start"), waitFor(t, starts, "the other task to start while A's runs")}
		require.Contains(t, got, b.ID())
	})
}
