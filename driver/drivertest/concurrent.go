package drivertest

import (
	"fmt"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// Sizes of the concurrent claiming test.
const (
	concurrentTasks    = 2000
	concurrentPerRun   = 50 // tasks per pipeline
	concurrentClaimers = 16 // in this process, each on its own Driver
	concurrentLimit    = 10 // tasks per claim transaction
)

// testTaskClaimConcurrent lets many claimers, each with its own
// connections, and optionally another OS process, drain one outbox at
// once. Every task must be claimed exactly once, by the claimer the row
// says, with its events recorded, and no claimer may see an error.
func testTaskClaimConcurrent(t *testing.T, s *suite) {
	t.Run("ExactlyOnce", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		wf := []string{"wf"}

		var all []uuid.UUID
		var pipelines []uuid.UUID
		b.inTx(t, func(tx driver.Tx) {
			cs := &driver.ChangeSet{}
			var tasks []driver.TaskInsert
			for range concurrentTasks / concurrentPerRun {
				p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
					Status: driver.PipelinePending, Input: []byte(`{}`), Now: b.now}
				ok, err := insertOne(b.ctx, tx, p)
				require.NoError(t, err)
				require.True(t, ok)
				pipelines = append(pipelines, p.ID)
				for pos := range concurrentPerRun {
					ti := b.readyTask(p, pos)
					tasks = append(tasks, ti)
					all = append(all, ti.ID)
					cs.Outbox = append(cs.Outbox, outboxFor(ti, b.now))
				}
			}
			require.NoError(t, tx.TaskInsertMany(b.ctx, tasks))
			require.NoError(t, tx.ChangeSetApply(b.ctx, cs))
		})

		drivers := []driver.Driver{b.drv}
		for len(drivers) < concurrentClaimers {
			drivers = append(drivers, s.opts.OpenSibling(t, b.drv))
		}
		var proc *ClaimerProcess
		if s.opts.SpawnClaimer != nil {
			proc = s.opts.SpawnClaimer(t, b.drv, ClaimerConfig{RunnerID: "process", Workflows: wf, Limit: concurrentLimit})
		} else {
			t.Log("no Options.SpawnClaimer: claiming from this process only")
		}

		var (
			mu      sync.Mutex
			claims  = map[uuid.UUID][]string{} // task → runners that claimed it
			starts  = map[uuid.UUID][]string{} // pipeline → runners that started it
			retried []string                   // transient errors retried
			perRun  = map[string]int{}
			errs    = make([]error, len(drivers))
			start   = make(chan struct{})
			wg      sync.WaitGroup
			claimed = func(runner string) func(*claimResult) {
				return func(res *claimResult) {
					mu.Lock()
					defer mu.Unlock()
					for _, id := range res.tasks {
						claims[id] = append(claims[id], runner)
					}
					for _, id := range res.started {
						starts[id] = append(starts[id], runner)
					}
					perRun[runner] += len(res.tasks)
					if res.transient != nil {
						retried = append(retried, runner+": "+res.transient.Error())
					}
				}
			}
		)
		for i, drv := range drivers {
			runner := fmt.Sprintf("claimer-%02d", i)
			wg.Go(func() {
				<-start
				errs[i] = claimUntilEmpty(b.ctx, drv, ClaimerConfig{RunnerID: runner, Workflows: wf, Limit: concurrentLimit}, claimed(runner))
			})
		}
		if proc != nil {
			require.NoError(t, proc.Go())
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			require.NoError(t, err, "claimer %d", i)
		}
		if proc != nil {
			tasks, started, transients := proc.Wait(t)
			claimed("process")(&claimResult{tasks: tasks, started: started})
			for _, msg := range transients {
				retried = append(retried, "process: "+msg)
			}
		}
		t.Logf("tasks claimed per runner: %v", perRun)
		// Row locks never make a claim fail, and neither does contention
		// between Drivers of one process. A database-wide write lock
		// shared with another process can outlast the busy timeout
		// under a load that never lets go of it; the engine retries that.
		if s.opts.ConcurrentTx || proc == nil {
			require.Empty(t, retried, "transient errors")
		} else if len(retried) > 0 {
			t.Logf("transient errors retried (cross-process contention): %q", retried)
		}

		for id, runners := range claims {
			require.Len(t, runners, 1, "task %s claimed by %v", id, runners)
		}
		require.Len(t, claims, concurrentTasks, "every task claimed")
		for _, id := range all {
			if _, ok := claims[id]; !ok {
				require.Failf(t, "task never claimed", "task %s", id)
			}
		}

		res := b.peek(t, b.now.AddDate(10, 0, 0), "wf")
		require.False(t, res.Claimable, "the outbox is empty")
		require.Nil(t, res.NextAvailableAt)

		tasks, err := b.drv.Reader().TaskList(b.ctx, &driver.TaskListParams{PipelineIDs: pipelines})
		require.NoError(t, err)
		require.Len(t, tasks, concurrentTasks)
		for _, task := range tasks {
			require.Equal(t, driver.TaskRunning, task.Status)
			require.Equal(t, claims[task.ID][0], task.RunnerID, "the row names the claimer that got the task")
			require.Equal(t, 1, task.Attempt)
		}

		// Claimers of one run race to start it; exactly one does.
		for _, pid := range pipelines {
			require.Len(t, starts[pid], 1, "pipeline %s started by %v", pid, starts[pid])
			require.Equal(t, driver.PipelineRunning, b.getPipeline(t, pid).Status)
		}

		evs := b.events(t, &driver.EventListParams{})
		require.Len(t, evs, concurrentTasks+len(pipelines), "the events of every committed claim, and no others")
		claimEvents := map[uuid.UUID]int{}
		for i, ev := range evs {
			if i > 0 {
				require.Greater(t, ev.SequenceNum, evs[i-1].SequenceNum)
			}
			if ev.Type == driver.EventPipelineStarted {
				require.Equal(t, starts[ev.PipelineID][0], ev.WorkerID)
				continue
			}
			require.Equal(t, claims[*ev.TaskID][0], ev.WorkerID)
			claimEvents[*ev.TaskID]++
		}
		require.Len(t, claimEvents, concurrentTasks, "one claim event per task")
	})
}
