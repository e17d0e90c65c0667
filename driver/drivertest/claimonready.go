package drivertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// testClaimOnReady pins the writes of a runner that claims the tasks it
// makes ready in the same transaction: a task updated or created Running
// holds the claim like one claimed from the outbox, and a run created
// Running has started.
func testClaimOnReady(t *testing.T, s *suite) {
	// fenceHolds finishes task under runner's first claim and tells whether
	// the fence held.
	fenceHolds := func(t *testing.T, b *bundle, id uuid.UUID, runner string) bool {
		t.Helper()
		done := b.finish(t, driver.TaskFinish{Fence: driver.Fence{TaskID: id, RunnerID: runner, Attempt: 1},
			Status: driver.TaskCompleted, Attempt: 1, Now: b.at(time.Minute)})
		return len(done) == 1
	}

	t.Run("TaskUpdateToRunning", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t, withStatus(driver.PipelineRunning))
		next, other := b.newTask(p, 0), b.newTask(p, 1)
		b.insertTasks(t, next, other)
		at := roundTripTime
		b.apply(t, &driver.ChangeSet{Tasks: []driver.TaskUpdate{
			{ID: next.ID, FromStatus: driver.TaskNotStarted, Status: driver.TaskRunning, Attempt: 1,
				Input: json.RawMessage(roundTripJSON), RunnerID: "r1", Now: at},
			{ID: other.ID, FromStatus: driver.TaskNotStarted, Status: driver.TaskSkipped, Error: "no", RunnerID: "ignored", Now: at},
		}})
		got := b.getTask(t, next.ID)
		require.Equal(t, driver.TaskRunning, got.Status)
		require.Equal(t, "r1", got.RunnerID)
		require.Equal(t, 1, got.Attempt)
		requireJSON(t, roundTripJSON, got.Input)
		requireTimePtr(t, truncated(at), got.StartedAt, "the attempt starts with the claim")
		require.Nil(t, got.CompletedAt)
		require.Empty(t, b.getTask(t, other.ID).RunnerID, "only a Running task takes the runner")
		require.Nil(t, b.getTask(t, other.ID).StartedAt)
		require.False(t, b.peek(t, b.at(time.Hour), "wf").Claimable, "no outbox row")

		require.Empty(t, b.lost(t, driver.Fence{TaskID: next.ID, RunnerID: "r1", Attempt: 1}))
		require.False(t, fenceHolds(t, b, next.ID, "r2"), "another runner's fence does not hold")
		require.True(t, fenceHolds(t, b, next.ID, "r1"))
		require.Equal(t, driver.TaskCompleted, b.getTask(t, next.ID).Status)
	})

	t.Run("TaskInsertRunning", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t, withStatus(driver.PipelineRunning))
		root := b.readyTask(p, 0)
		root.Status, root.RunnerID = driver.TaskRunning, "r1"
		b.insertTasks(t, root)
		got := b.getTask(t, root.ID)
		require.Equal(t, driver.TaskRunning, got.Status)
		require.Equal(t, "r1", got.RunnerID)
		requireTimePtr(t, b.now, got.StartedAt)
		require.True(t, fenceHolds(t, b, root.ID, "r1"))
	})

	t.Run("NewRowsInTheChangeSet", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		run := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
			Status: driver.PipelineRunning, Input: json.RawMessage(`{"run":2}`), Now: b.now}
		queued := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
			Status: driver.PipelinePending, Input: json.RawMessage(`{}`), Now: b.now}
		root, later := b.readyTask(run, 0), b.newTask(run, 1)
		root.Status, root.RunnerID = driver.TaskRunning, "r1"
		waiting := b.readyTask(queued, 0)
		// The change set creates the rows before it writes what refers to
		// them: an outbox row and events.
		b.apply(t, &driver.ChangeSet{
			NewPipelines: []*driver.PipelineInsertParams{run, queued},
			NewTasks:     []driver.TaskInsert{root, later, waiting},
			Outbox:       []driver.OutboxInsert{outboxFor(waiting, b.now)},
			Events: []driver.EventInsert{{ID: uuid.New(), PipelineID: run.ID, TaskID: &root.ID, Type: "task_claimed",
				WorkerID: "r1", CreatedAt: b.now}},
		})
		p := b.getPipeline(t, run.ID)
		require.Equal(t, driver.PipelineRunning, p.Status)
		requireTimePtr(t, b.now, p.StartedAt)
		requireJSON(t, `{"run":2}`, p.Input)
		require.Nil(t, b.getPipeline(t, queued.ID).StartedAt)
		require.Equal(t, "r1", b.getTask(t, root.ID).RunnerID)
		require.Equal(t, driver.TaskNotStarted, b.getTask(t, later.ID).Status)
		require.Equal(t, []uuid.UUID{waiting.ID}, taskIDs(b.claim(t, "r2", 10)))
		require.Len(t, b.events(t, &driver.EventListParams{PipelineID: &run.ID}), 1)

		// A run that exists already fails the whole change set as a
		// conflict, and nothing of it is written.
		again := *run
		fresh := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
			Status: driver.PipelinePending, Input: json.RawMessage(`{}`), Now: b.now}
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		defer tx.Rollback(context.WithoutCancel(b.ctx))
		err = tx.ChangeSetApply(b.ctx, &driver.ChangeSet{
			NewPipelines: []*driver.PipelineInsertParams{fresh, &again},
			NewTasks:     []driver.TaskInsert{b.newTask(fresh, 0)},
		})
		if err == nil {
			err = tx.Commit(b.ctx)
		}
		require.True(t, errors.Is(err, driver.ErrConflict), "got %v", err)
		_, err = b.drv.Reader().PipelineGet(b.ctx, fresh.ID)
		require.ErrorIs(t, err, driver.ErrNotFound)
	})

	// A finish that locks the runs returns them as they were, and holds
	// their locks for the rest of the transaction.
	t.Run("FinishLocksRuns", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t, withStatus(driver.PipelineRunning))
		idle := b.insertPipeline(t)
		b.enqueue(t, b.now, b.readyTask(p, 0), b.readyTask(p, 1))
		tasks := b.claimAs(t, "r1", 2)

		tx1, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		defer tx1.Rollback(context.WithoutCancel(b.ctx))
		res, err := tx1.TaskFinishMany(b.ctx, &driver.TaskFinishParams{
			Finishes: []driver.TaskFinish{{Fence: fenceOf(tasks[0]), Status: driver.TaskCompleted,
				Output: json.RawMessage(`{"x":1}`), Attempt: 1, Now: b.at(time.Second)}},
			ListPipelineIDs: []uuid.UUID{p.ID},
			LockPipelineIDs: []uuid.UUID{idle.ID, uuid.New(), p.ID},
		})
		require.NoError(t, err)
		require.Equal(t, []uuid.UUID{tasks[0].ID}, res.Finished)
		require.Len(t, res.Tasks, 2)
		require.Equal(t, driver.TaskCompleted, res.Tasks[0].Status)
		require.Equal(t, driver.TaskRunning, res.Tasks[1].Status)
		want := []uuid.UUID{p.ID, idle.ID}
		if bytes.Compare(idle.ID[:], p.ID[:]) < 0 {
			want = []uuid.UUID{idle.ID, p.ID}
		}
		require.Equal(t, want, pipelineIDs(res.Pipelines), "in id order; unknown ids are left out")
		for _, got := range res.Pipelines {
			if got.ID == p.ID {
				require.Equal(t, driver.PipelineRunning, got.Status)
			}
		}

		// Without a list, only the finish and the lock.
		res, err = tx1.TaskFinishMany(b.ctx, &driver.TaskFinishParams{LockPipelineIDs: []uuid.UUID{p.ID}})
		require.NoError(t, err)
		require.Empty(t, res.Finished)
		require.Empty(t, res.Tasks)
		require.Equal(t, []uuid.UUID{p.ID}, pipelineIDs(res.Pipelines))

		if !s.opts.ConcurrentTx {
			require.NoError(t, tx1.Commit(b.ctx))
			return
		}
		// A second locker waits for the first transaction, then sees its
		// decision.
		locked := make(chan []*driver.Pipeline, 1)
		failed := make(chan error, 1)
		go func() {
			tx2, err := b.drv.Begin(b.ctx)
			if err != nil {
				failed <- err
				return
			}
			defer tx2.Rollback(context.WithoutCancel(b.ctx))
			ps, err := tx2.PipelineLock(b.ctx, []uuid.UUID{p.ID})
			if err != nil {
				failed <- err
				return
			}
			locked <- ps
		}()
		require.NoError(t, tx1.ChangeSetApply(b.ctx, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
			{ID: p.ID, FromStatus: driver.PipelineRunning, Status: driver.PipelinePaused, Now: b.now}}}))
		require.NoError(t, tx1.Commit(b.ctx))
		select {
		case ps := <-locked:
			require.Len(t, ps, 1)
			require.Equal(t, driver.PipelinePaused, ps[0].Status)
		case err := <-failed:
			t.Fatal(err)
		case <-b.ctx.Done():
			t.Fatal("second locker did not get the lock")
		}
	})
}
