package drivertest

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// batchSizes are the batch sizes the hot path is checked at: around the
// sizes a backend may write its batch statements in (SQLite pads IN lists
// to powers of two up to 1,024 and splits multi-row INSERTs into chunks of
// powers of two up to 512) and past the largest.
var batchSizes = []int{0, 1, 2, 3, 4, 5, 15, 16, 17, 511, 512, 513, 1023, 1024, 1025}

// testBatchSizes pins that a batch of any size is written and read back
// whole, once each and in order: inserting runs, tasks, outbox rows and
// events; claiming; locking and listing runs; finishing tasks; ending
// runs. A backend that pads or splits its statements by size must return
// and count exactly what the unsplit statement would.
func testBatchSizes(t *testing.T, s *suite) {
	for _, n := range batchSizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			b := s.setup(t)
			workflow := fmt.Sprintf("wf-%d", n)
			cs := &driver.ChangeSet{}
			var pids, tids, evids []uuid.UUID
			for i := range n {
				p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: workflow, WorkflowVersion: "v1",
					Status: driver.PipelinePending, Input: json.RawMessage(`{}`), Now: b.now}
				task := b.readyTask(p, i)
				ev := event(p.ID, &task.ID, driver.EventTaskCreated, b.now)
				cs.NewPipelines = append(cs.NewPipelines, p)
				cs.NewTasks = append(cs.NewTasks, task)
				cs.Outbox = append(cs.Outbox, outboxFor(task, b.now))
				cs.Events = append(cs.Events, ev)
				pids, tids, evids = append(pids, p.ID), append(tids, task.ID), append(evids, ev.ID)
			}
			b.apply(t, cs)

			if n > 0 {
				listed, err := b.drv.Reader().TaskList(b.ctx, &driver.TaskListParams{PipelineIDs: pids})
				require.NoError(t, err)
				require.ElementsMatch(t, tids, taskIDs(listed), "every task of the runs, once")
				require.True(t, slices.IsSortedFunc(listed, func(a, b *driver.Task) int {
					return strings.Compare(a.PipelineID.String(), b.PipelineID.String())
				}), "tasks are listed in run order")
				listed, err = b.drv.Reader().TaskList(b.ctx, &driver.TaskListParams{IDs: tids})
				require.NoError(t, err)
				require.ElementsMatch(t, tids, taskIDs(listed), "every task asked for, once")
			}
			var evs []uuid.UUID
			for _, ev := range b.events(t, &driver.EventListParams{}) {
				evs = append(evs, ev.ID)
			}
			require.Equal(t, evids, evs, "the events, once each, in the order given")

			var claimed *driver.TaskClaimResult
			b.inTx(t, func(tx driver.Tx) {
				var err error
				claimed, err = tx.TaskClaim(b.ctx, &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{workflow},
					Limit: n + 1, Now: b.now})
				require.NoError(t, err)
			})
			require.ElementsMatch(t, tids, taskIDs(claimed.Tasks), "every task claimed, once")
			require.ElementsMatch(t, pids, claimed.Started, "every run started, once")
			require.Len(t, claimed.StartedVersions, len(claimed.Started), "a version for each run started")

			finish := &driver.TaskFinishParams{LockPipelineIDs: pids, ListPipelineIDs: pids}
			end := &driver.ChangeSet{}
			for _, task := range claimed.Tasks {
				finish.Finishes = append(finish.Finishes, driver.TaskFinish{
					Fence:  driver.Fence{TaskID: task.ID, RunnerID: "r", Attempt: task.Attempt},
					Status: driver.TaskCompleted, Attempt: task.Attempt, Now: b.now})
				end.Pipelines = append(end.Pipelines, driver.PipelineUpdate{ID: task.PipelineID, FromStatus: driver.PipelineRunning,
					Status: driver.PipelineCompleted, CompletedAt: &b.now, Now: b.now})
			}
			b.inTx(t, func(tx driver.Tx) {
				res, err := tx.TaskFinishMany(b.ctx, finish)
				require.NoError(t, err)
				require.ElementsMatch(t, tids, res.Finished, "every fence held, once")
				var locked []uuid.UUID
				for _, p := range res.Pipelines {
					require.Equal(t, driver.PipelineRunning, p.Status)
					locked = append(locked, p.ID)
				}
				require.True(t, slices.IsSortedFunc(locked, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) }),
					"runs are locked in id order")
				require.ElementsMatch(t, pids, locked, "every run locked, once")
				require.ElementsMatch(t, tids, taskIDs(res.Tasks), "every task of the runs listed, once")
				for _, task := range res.Tasks {
					require.Equal(t, driver.TaskCompleted, task.Status)
				}
				require.NoError(t, tx.ChangeSetApply(b.ctx, end))
			})
			if n > 0 {
				require.Equal(t, driver.PipelineCompleted, b.getPipeline(t, pids[n-1]).Status)
			}
		})
	}
}
