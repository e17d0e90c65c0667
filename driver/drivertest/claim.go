package drivertest

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func testTaskClaim(t *testing.T, s *suite) {
	claimAt := func(t *testing.T, b *bundle, params *driver.TaskClaimParams) []*driver.Task {
		t.Helper()
		var out []*driver.Task
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.TaskClaim(b.ctx, params)
			require.NoError(t, err)
			out = res.Tasks
		})
		return out
	}

	t.Run("FlipsToRunning", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		task := b.readyTask(p, 3)
		task.Input = []byte(roundTripJSON)
		b.enqueue(t, b.now, task)
		at := b.at(24*time.Hour + 987654321).In(time.FixedZone("UTC-3", -3*3600))

		got := claimAt(t, b, &driver.TaskClaimParams{RunnerID: "runner-1", Workflows: []string{"wf"}, Limit: 10, Now: at})
		require.Len(t, got, 1)
		c := got[0]
		require.Equal(t, task.ID, c.ID)
		require.Equal(t, p.ID, c.PipelineID)
		require.Equal(t, "wf", c.WorkflowName)
		require.Equal(t, task.Name, c.Name)
		require.Equal(t, 3, c.Position)
		require.Equal(t, driver.TaskRunning, c.Status)
		require.Equal(t, "runner-1", c.RunnerID)
		require.Equal(t, 1, c.Attempt)
		require.Equal(t, 3, c.MaxAttempts)
		require.Zero(t, c.RecoveryCount)
		requireJSON(t, roundTripJSON, c.Input)
		requireTimePtr(t, truncated(at), c.StartedAt)
		requireTime(t, truncated(at), c.UpdatedAt)
		require.Nil(t, c.CompletedAt)

		require.Equal(t, c, b.getTask(t, task.ID), "the returned task is the stored row")
		res := b.peek(t, at, "wf")
		require.False(t, res.Claimable, "the outbox row is deleted")
		require.Nil(t, res.NextAvailableAt)
		require.Empty(t, claimAt(t, b, &driver.TaskClaimParams{RunnerID: "runner-2", Workflows: []string{"wf"}, Limit: 10, Now: at}),
			"a claimed task is not claimed again")
	})

	t.Run("Limit", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		var tasks []driver.TaskInsert
		for i := range 5 {
			tasks = append(tasks, b.readyTask(p, i))
		}
		b.enqueue(t, b.now, tasks...)
		require.Empty(t, b.claim(t, "r", 0), "limit 0 claims nothing")
		require.Len(t, b.claim(t, "r", 2), 2)
		require.Len(t, b.claim(t, "r", 2), 2)
		require.Len(t, b.claim(t, "r", 2), 1)
		require.Empty(t, b.claim(t, "r", 2))
	})

	t.Run("OldestDueFirst", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		first, second, third := b.readyTask(p, 0), b.readyTask(p, 1), b.readyTask(p, 2)
		// Inserted in neither due order nor position order.
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.TaskInsertMany(b.ctx, []driver.TaskInsert{first, second, third}))
			require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Outbox: []driver.OutboxInsert{
				outboxFor(second, b.at(-2*time.Second)),
				outboxFor(third, b.at(-1*time.Second)),
				outboxFor(first, b.at(-3*time.Second)),
			}}))
		})
		for _, want := range []driver.TaskInsert{first, second, third} {
			got := b.claim(t, "r", 1)
			require.Len(t, got, 1)
			require.Equal(t, want.ID, got[0].ID)
		}
	})

	t.Run("OnlyDue", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		due, later := b.readyTask(p, 0), b.readyTask(p, 1)
		b.enqueue(t, b.now, due)
		b.enqueue(t, b.at(time.Second), later)
		params := &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{"wf"}, Limit: 10, Now: b.now}
		got := claimAt(t, b, params)
		require.Equal(t, []uuid.UUID{due.ID}, taskIDs(got), "a row due exactly now is claimable; a later one is not")
		require.Equal(t, driver.TaskReady, b.getTask(t, later.ID).Status)
		params.Now = b.at(time.Second - time.Microsecond)
		require.Empty(t, claimAt(t, b, params))
		params.Now = b.at(time.Second)
		require.Equal(t, []uuid.UUID{later.ID}, taskIDs(claimAt(t, b, params)))
	})

	t.Run("OnlyRegisteredWorkflows", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		pa := b.insertPipeline(t, withWorkflow("a"))
		pb := b.insertPipeline(t, withWorkflow("b"))
		pc := b.insertPipeline(t, withWorkflow("c"))
		ta, tb, tc := b.readyTask(pa, 0), b.readyTask(pb, 0), b.readyTask(pc, 0)
		b.enqueue(t, b.now, ta, tb, tc)
		claim := func(workflows ...string) []uuid.UUID {
			return taskIDs(claimAt(t, b, &driver.TaskClaimParams{RunnerID: "r", Workflows: workflows, Limit: 10, Now: b.now}))
		}
		require.Empty(t, claim(), "a runner without workflows claims nothing")
		require.Empty(t, claim("other"))
		require.Equal(t, []uuid.UUID{tb.ID}, claim("b"))
		require.ElementsMatch(t, []uuid.UUID{ta.ID, tc.ID}, claim("a", "c", "other"))
	})

	t.Run("OnlyGivenRuns", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p1, p2, p3 := b.insertPipeline(t), b.insertPipeline(t), b.insertPipeline(t)
		t1a, t1b, t2, t3 := b.readyTask(p1, 0), b.readyTask(p1, 1), b.readyTask(p2, 0), b.readyTask(p3, 0)
		b.enqueue(t, b.now, t1a, t1b, t2, t3)
		claim := func(limit int, runs ...uuid.UUID) []uuid.UUID {
			return taskIDs(claimAt(t, b, &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{"wf"}, RunIDs: runs,
				Limit: limit, Now: b.now}))
		}
		require.Empty(t, claim(10, uuid.New()), "a run without queued tasks")
		require.Equal(t, []uuid.UUID{t1a.ID}, claim(1, p1.ID), "the limit holds")
		require.ElementsMatch(t, []uuid.UUID{t1b.ID, t3.ID}, claim(10, p3.ID, p1.ID, uuid.New()))
		other := b.insertPipeline(t, withWorkflow("other"))
		b.enqueue(t, b.now, b.readyTask(other, 0))
		require.Empty(t, claim(10, other.ID), "only rows of the given workflows")
		require.Equal(t, []uuid.UUID{t2.ID}, claim(10), "no runs: any run")
	})

	// An outbox row whose task is no longer Ready (a stale row) is
	// consumed without claiming anything: it must neither flip the task
	// nor stay claimable forever.
	t.Run("OnlyReadyTasks", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		notStarted := b.newTask(p, 0)
		notStarted.Attempt = 1
		skipped := b.newTask(p, 1)
		skipped.Status, skipped.Attempt = driver.TaskSkipped, 1
		ready := b.readyTask(p, 2)
		b.enqueue(t, b.now, notStarted, skipped, ready)
		got := b.claim(t, "r", 10)
		require.Equal(t, []uuid.UUID{ready.ID}, taskIDs(got))
		require.Equal(t, driver.TaskNotStarted, b.getTask(t, notStarted.ID).Status)
		require.Empty(t, b.getTask(t, notStarted.ID).RunnerID)
		require.Equal(t, driver.TaskSkipped, b.getTask(t, skipped.ID).Status)
		require.False(t, b.peek(t, b.now, "wf").Claimable)
	})

	t.Run("AttemptMismatchIsAnError", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		task := b.readyTask(p, 0)
		task.Attempt = 2
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.TaskInsertMany(b.ctx, []driver.TaskInsert{task}))
			row := outboxFor(task, b.now)
			row.Attempt = 1
			require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Outbox: []driver.OutboxInsert{row}}))
		})
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		_, err = tx.TaskClaim(b.ctx, &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{"wf"}, Limit: 10, Now: b.now})
		require.Error(t, err, "an outbox row of another attempt than the task's means corrupt state")
		require.NoError(t, tx.Rollback(b.ctx))
		require.Equal(t, driver.TaskReady, b.getTask(t, task.ID).Status)
	})

	t.Run("RolledBackClaimIsClaimableAgain", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		task := b.readyTask(p, 0)
		b.enqueue(t, b.now, task)
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		res, err := tx.TaskClaim(b.ctx, &driver.TaskClaimParams{RunnerID: "r1", Workflows: []string{"wf"}, Limit: 1, Now: b.now})
		require.NoError(t, err)
		require.Len(t, res.Tasks, 1)
		require.NoError(t, tx.Rollback(b.ctx))
		got := b.claim(t, "r2", 1)
		require.Len(t, got, 1)
		require.Equal(t, "r2", got[0].RunnerID)
	})

	t.Run("SkipsRowsLockedByAnotherTx", func(t *testing.T) {
		t.Parallel()
		if !s.opts.ConcurrentTx {
			t.Skip("write transactions of this backend are serialised: no row is held by another open transaction")
		}
		b := s.setup(t)
		p := b.insertPipeline(t)
		var tasks []driver.TaskInsert
		for i := range 4 {
			tasks = append(tasks, b.readyTask(p, i))
		}
		b.enqueue(t, b.now, tasks...)
		params := func(runner string, limit int) *driver.TaskClaimParams {
			return &driver.TaskClaimParams{RunnerID: runner, Workflows: []string{"wf"}, Limit: limit, Now: b.now}
		}
		tx1, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		defer tx1.Rollback(context.WithoutCancel(b.ctx))
		heldRes, err := tx1.TaskClaim(b.ctx, params("r1", 1))
		require.NoError(t, err)
		held := heldRes.Tasks
		require.Len(t, held, 1)

		// Waiting on tx1's rows would run into this deadline.
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		defer cancel()
		tx2, err := b.drv.Begin(ctx)
		require.NoError(t, err)
		defer tx2.Rollback(context.WithoutCancel(b.ctx))
		restRes, err := tx2.TaskClaim(ctx, params("r2", 10))
		require.NoError(t, err)
		rest := restRes.Tasks
		require.Len(t, rest, 3)
		require.NotContains(t, taskIDs(rest), held[0].ID)
		require.NoError(t, tx2.Commit(ctx))

		require.NoError(t, tx1.Rollback(b.ctx))
		again := b.claim(t, "r3", 10)
		require.Equal(t, []uuid.UUID{held[0].ID}, taskIDs(again), "the row of the rolled-back claim is claimable again")
	})
}
