package drivertest

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func testOutboxPeek(t *testing.T, s *suite) {
	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		res := b.peek(t, b.now, "wf")
		require.False(t, res.Claimable)
		require.Nil(t, res.NextAvailableAt)
	})

	t.Run("ClaimableAndNextDue", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		due, soon, later := b.readyTask(p, 0), b.readyTask(p, 1), b.readyTask(p, 2)
		b.enqueue(t, b.at(time.Minute), later)
		b.enqueue(t, b.at(time.Second), soon)

		res := b.peek(t, b.now, "wf")
		require.False(t, res.Claimable)
		requireTimePtr(t, b.at(time.Second), res.NextAvailableAt, "the earliest row not yet due")

		b.enqueue(t, b.now, due)
		res = b.peek(t, b.now, "wf")
		require.True(t, res.Claimable, "a row due exactly now is claimable")
		requireTimePtr(t, b.at(time.Second), res.NextAvailableAt, "a claimable row is not the next due one")

		res = b.peek(t, b.at(time.Second), "wf")
		require.True(t, res.Claimable)
		requireTimePtr(t, b.at(time.Minute), res.NextAvailableAt)

		res = b.peek(t, b.at(time.Hour), "wf")
		require.True(t, res.Claimable)
		require.Nil(t, res.NextAvailableAt)

		// Peeking takes nothing.
		require.Len(t, b.claim(t, "r", 10), 1)
	})

	t.Run("OnlyRegisteredWorkflows", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		pa, pb := b.insertPipeline(t, withWorkflow("a")), b.insertPipeline(t, withWorkflow("b"))
		b.enqueue(t, b.now, b.readyTask(pa, 0))
		b.enqueue(t, b.at(time.Second), b.readyTask(pb, 0))

		res := b.peek(t, b.now)
		require.False(t, res.Claimable, "a runner without workflows sees nothing")
		require.Nil(t, res.NextAvailableAt)
		res = b.peek(t, b.now, "b", "c")
		require.False(t, res.Claimable)
		requireTimePtr(t, b.at(time.Second), res.NextAvailableAt)
		res = b.peek(t, b.now, "a")
		require.True(t, res.Claimable)
		require.Nil(t, res.NextAvailableAt)
	})

	t.Run("InsideTx", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		task := b.readyTask(p, 0)
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.TaskInsertMany(b.ctx, []driver.TaskInsert{task}))
			require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Outbox: []driver.OutboxInsert{outboxFor(task, b.now)}}))
			res, err := tx.OutboxPeek(b.ctx, &driver.OutboxPeekParams{Workflows: []string{"wf"}, Now: b.now})
			require.NoError(t, err)
			require.True(t, res.Claimable, "a transaction sees its own outbox rows")
		})
	})
}

func testOutboxDelete(t *testing.T, s *suite) {
	t.Run("OnlyThePipelinesRows", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p, other := b.insertPipeline(t), b.insertPipeline(t)
		var tasks []driver.TaskInsert
		for i := range 3 {
			tasks = append(tasks, b.readyTask(p, i))
		}
		b.enqueue(t, b.now, tasks[:2]...)
		b.enqueue(t, b.at(time.Hour), tasks[2]) // not yet due: deleted too
		kept := b.readyTask(other, 0)
		b.enqueue(t, b.now, kept)

		del := func(id uuid.UUID) int {
			var n int
			b.inTx(t, func(tx driver.Tx) {
				var err error
				n, err = tx.OutboxDelete(b.ctx, &driver.OutboxDeleteParams{PipelineID: id})
				require.NoError(t, err)
			})
			return n
		}
		require.Equal(t, 3, del(p.ID))
		require.Equal(t, 0, del(p.ID))
		require.Equal(t, 0, del(uuid.New()))
		for _, task := range tasks {
			require.Equal(t, driver.TaskReady, b.getTask(t, task.ID).Status, "tasks stay Ready")
		}
		res := b.peek(t, b.now, "wf")
		require.True(t, res.Claimable)
		require.Nil(t, res.NextAvailableAt, "the not-yet-due row is gone")
		require.Equal(t, []uuid.UUID{kept.ID}, taskIDs(b.claim(t, "r", 10)))
	})

	t.Run("ResumeReinserts", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		task := b.readyTask(p, 0)
		b.enqueue(t, b.now, task)
		b.inTx(t, func(tx driver.Tx) {
			n, err := tx.OutboxDelete(b.ctx, &driver.OutboxDeleteParams{PipelineID: p.ID})
			require.NoError(t, err)
			require.Equal(t, 1, n)
		})
		require.Empty(t, b.claim(t, "r", 10))
		// The same (task, attempt) can be enqueued again once its row is gone.
		b.apply(t, &driver.ChangeSet{Outbox: []driver.OutboxInsert{outboxFor(task, b.now)}})
		require.Equal(t, []uuid.UUID{task.ID}, taskIDs(b.claim(t, "r", 10)))
	})
}
