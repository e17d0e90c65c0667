package cloacina

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// Seed case 2 at the level of runners: ready tasks and 16 runners on one
// database (each its own connections, or its own SQLite driver on the same
// file) claiming at once. Every task runs exactly once and the outbox ends
// empty. The full-size case (2,000 tasks, 16 claimers, a second OS process)
// is in driver/drivertest; this one keeps to 600 runs because the race
// detector slows the transpiled SQLite about fifteenfold.
func TestManyRunnersClaimEachTaskOnce(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		const runs, runners = 600, 16
		var mu sync.Mutex
		ranBy := map[uuid.UUID][]string{}
		wf := MustWorkflow("burst", Task{Name: "only", Run: func(ctx context.Context, _ *Context) error {
			info, _ := TaskInfoFrom(ctx)
			mu.Lock()
			ranBy[info.TaskID] = append(ranBy[info.TaskID], info.RunnerID)
			mu.Unlock()
			return nil
		}})
		submitter := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		execs := make([]*Execution, runs)
		for i := range execs {
			exec, err := submitter.ExecuteAsync(ctx, "burst", nil)
			require.NoError(t, err)
			execs[i] = exec
		}
		peek, err := submitter.Driver().Reader().OutboxPeek(ctx, &driver.OutboxPeekParams{Workflows: []string{"burst"}, Now: time.Now()})
		require.NoError(t, err)
		require.True(t, peek.Claimable)

		var all []*Runner
		for range runners {
			all = append(all, openRunner(t, url, &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 4, ClaimBatchSize: 4}))
		}
		for _, r := range all {
			require.NoError(t, r.Start(ctx))
		}
		for _, exec := range execs {
			res, err := exec.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status)
		}
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, ranBy, runs)
		used := map[string]bool{}
		for id, by := range ranBy {
			require.Len(t, by, 1, "task %s ran more than once", id)
			used[by[0]] = true
		}
		require.Greater(t, len(used), runners/2, "the work was spread over the runners")
		peek, err = submitter.Driver().Reader().OutboxPeek(ctx, &driver.OutboxPeekParams{Workflows: []string{"burst"}, Now: time.Now().Add(time.Hour)})
		require.NoError(t, err)
		require.False(t, peek.Claimable)
		require.Nil(t, peek.NextAvailableAt, "the outbox is empty")
		claimed, err := submitter.Events(ctx, &EventQuery{Types: []EventType{EventTaskClaimed}})
		require.NoError(t, err)
		require.Len(t, claimed, runs, "one claim per task")
	})
}

// A claim does not wait for a run another transaction holds (a control
// operation, say): it takes the run's task and leaves the run Pending. The
// runner then starts the run as soon as that transaction ends, before the
// task runs, so no task runs under a Pending run. On PostgreSQL only:
// SQLite's claims never meet another writer.
func TestClaimStartsARunAnotherTransactionHeld(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	running, release := make(chan struct{}), make(chan struct{})
	wf := MustWorkflow("w", Task{Name: "a", Run: func(context.Context, *Context) error {
		close(running)
		<-release
		return nil
	}})
	r := openRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}})
	exec, err := r.ExecuteAsync(ctx, "w", nil)
	require.NoError(t, err)
	d := r.Driver().(*postgres.Driver)
	holder, err := d.Pool().Begin(ctx)
	require.NoError(t, err)
	_, err = holder.Exec(ctx, "SELECT 1 FROM "+pgx.Identifier{d.Schema(), "pipeline_executions"}.Sanitize()+" WHERE id = $1 FOR UPDATE", exec.ID())
	require.NoError(t, err)

	claimed := onEvent(r, eventOf(EventTaskClaimed))
	require.NoError(t, r.Start(ctx))
	waitFor(t, claimed, "the claim of task a")
	select {
	case <-running:
		t.Fatal("task a ran before its run started")
	default:
	}
	require.NoError(t, holder.Commit(ctx))
	waitFor(t, running, "task a to run")
	res, err := r.Get(ctx, exec.ID())
	require.NoError(t, err)
	require.Equal(t, TaskStatusRunning, res.Task("a").Status)
	require.Equal(t, PipelineRunning, res.Status, "the run of a running task has started")
	close(release)

	res, err = exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
	events, err := r.RunEvents(ctx, res.ID)
	require.NoError(t, err)
	var types []EventType
	for _, e := range events {
		types = append(types, e.Type)
	}
	require.Equal(t, []EventType{EventTaskCreated, EventTaskMarkedReady, EventTaskClaimed, EventTaskStarted, EventPipelineStarted,
		EventTaskCompleted, EventPipelineCompleted}, types)
	require.Equal(t, PipelineCompleted, Replay(events).Runs[res.ID])
}

// Two dependencies of a join that end at the same moment on two runners
// decide the join once: each completion locks the run, so the second sees
// the first's committed end and neither misses the join nor fires it
// twice. Each runner has one slot, so the two roots, which wait for each
// other, must run on different runners and return together; runs go one
// after another so that every run forces the race.
func TestJoinOfDependenciesEndingTogetherIsDecidedOnce(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		testCtx := ctx
		const runs = 10
		var mu sync.Mutex
		arrived := map[uuid.UUID]chan struct{}{}
		joins := map[uuid.UUID]int{}
		rootRunners := map[uuid.UUID]map[string]bool{}
		// meet returns when the other root of the same run has arrived
		// too, or when the test's deadline passes (a root that never met
		// its partner fails its run instead of hanging).
		meet := func(ctx context.Context, tc *Context) error {
			info, _ := TaskInfoFrom(ctx)
			mu.Lock()
			if rootRunners[info.RunID] == nil {
				rootRunners[info.RunID] = map[string]bool{}
			}
			rootRunners[info.RunID][info.RunnerID] = true
			ch, found := arrived[info.RunID]
			if !found {
				ch = make(chan struct{})
				arrived[info.RunID] = ch
			} else {
				close(ch)
			}
			mu.Unlock()
			select {
			case <-ch:
			case <-testCtx.Done():
				return testCtx.Err()
			}
			return tc.Set(info.Task, true)
		}
		wf := MustWorkflow("together",
			Task{Name: "left", Run: meet},
			Task{Name: "right", Run: meet},
			Task{Name: "join", DependsOn: []string{"left", "right"}, Run: func(ctx context.Context, _ *Context) error {
				info, _ := TaskInfoFrom(ctx)
				mu.Lock()
				joins[info.RunID]++
				mu.Unlock()
				return nil
			}},
		)
		cfg := func() *Config { return &Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 1} }
		r1 := startRunner(t, url, cfg())
		startRunner(t, url, cfg())
		for range runs {
			exec, err := r1.ExecuteAsync(ctx, "together", nil)
			require.NoError(t, err)
			res, err := exec.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status, res.Error)
			require.Equal(t, TaskStatusCompleted, res.Task("join").Status)
			require.True(t, res.Context.Has("left") && res.Context.Has("right"), "the join received both outputs")
			ready, err := r1.Events(ctx, &EventQuery{TaskID: &res.Task("join").ID, Types: []EventType{EventTaskMarkedReady}})
			require.NoError(t, err)
			require.Len(t, ready, 1, "the join is made ready once")
			mu.Lock()
			require.Equal(t, 1, joins[res.ID], "the join ran once")
			require.Len(t, rootRunners[res.ID], 2, "the roots ran on both runners")
			mu.Unlock()
		}
	})
}
