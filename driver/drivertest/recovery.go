package drivertest

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// claimAs enqueues n Ready tasks of a new pipeline and claims them under
// runner, in position order.
func (b *bundle) claimAs(t *testing.T, runner string, n int) []*driver.Task {
	t.Helper()
	p := b.insertPipeline(t)
	var tasks []driver.TaskInsert
	for i := range n {
		tasks = append(tasks, b.readyTask(p, i))
	}
	b.enqueue(t, b.now, tasks...)
	got := b.claim(t, runner, n)
	require.Len(t, got, n)
	slices.SortFunc(got, func(x, y *driver.Task) int { return x.Position - y.Position })
	return got
}

func (b *bundle) finish(t *testing.T, fs ...driver.TaskFinish) []uuid.UUID {
	t.Helper()
	var done []uuid.UUID
	b.inTx(t, func(tx driver.Tx) {
		res, err := tx.TaskFinishMany(b.ctx, &driver.TaskFinishParams{Finishes: fs})
		require.NoError(t, err)
		done = res.Finished
	})
	return done
}

// reset hands a Running task back to Ready the way the leader recovers a
// dead runner's task: fenced on its claim, recovery count + 1, and
// claimable again at once.
func (b *bundle) reset(t *testing.T, task *driver.Task) {
	t.Helper()
	require.Len(t, b.finish(t, driver.TaskFinish{Fence: fenceOf(task), Status: driver.TaskReady, Error: "runner died",
		Attempt: task.Attempt, RecoveryCount: task.RecoveryCount + 1, AvailableAt: &b.now, Now: b.now}), 1)
	b.apply(t, &driver.ChangeSet{Outbox: []driver.OutboxInsert{{TaskID: task.ID, Attempt: task.Attempt, WorkflowName: task.WorkflowName, AvailableAt: b.now, Now: b.now}}})
}

func (b *bundle) setSubStatus(t *testing.T, fence driver.Fence, sub string, at time.Time) bool {
	t.Helper()
	var ok bool
	b.inTx(t, func(tx driver.Tx) {
		var err error
		ok, err = tx.TaskSubStatusSet(b.ctx, &driver.TaskSubStatusParams{Fence: fence, SubStatus: sub, Now: at})
		require.NoError(t, err)
	})
	return ok
}

// orphans lists the Running tasks of runners gone for timeout.
func (b *bundle) orphans(t *testing.T, timeout time.Duration, limit int) []*driver.Task {
	t.Helper()
	got, err := b.drv.Reader().TaskListOrphaned(b.ctx, &driver.TaskListOrphanedParams{Timeout: timeout, Limit: limit})
	require.NoError(t, err)
	return got
}

func (b *bundle) lost(t *testing.T, fences ...driver.Fence) []uuid.UUID {
	t.Helper()
	res, err := b.drv.Reader().TaskFenceCheck(b.ctx, &driver.TaskFenceCheckParams{Fences: fences})
	require.NoError(t, err)
	require.NotNil(t, res)
	return res.Lost
}

func testTaskListOrphaned(t *testing.T, s *suite) {
	// Running tasks of a runner whose row is gone or whose heartbeat is
	// more than Timeout old by the database's clock are listed with their
	// claims as stored; those of a live runner, and tasks that are not
	// Running, never are.
	t.Run("MissingAndStaleRunners", func(t *testing.T) {
		t.Parallel()
		inTime(t, func(int) bool {
			b := s.setup(t)
			staleRow := b.upsertRunner(t, "stale")
			stale := b.claimAs(t, "stale", 2)
			gone := b.claimAs(t, "gone", 4)

			// Not Running, though claimed by the dead runner at some point:
			// completed, failed, handed back for a retry.
			b.finish(t,
				driver.TaskFinish{Fence: fenceOf(gone[1]), Status: driver.TaskCompleted, Output: json.RawMessage(`{}`), Attempt: 1, Now: b.now},
				driver.TaskFinish{Fence: fenceOf(gone[2]), Status: driver.TaskFailed, Error: "e", Attempt: 1, Now: b.now},
				driver.TaskFinish{Fence: fenceOf(stale[1]), Status: driver.TaskReady, Attempt: 2, AvailableAt: &b.now, Now: b.now})
			// Ready and never claimed.
			b.enqueue(t, b.now, b.readyTask(b.insertPipeline(t), 0))
			// A recovered task, reclaimed by the dead runner: its claim has
			// recovery count 1.
			b.reset(t, gone[3])
			reclaimed := b.claim(t, "gone", 10)
			require.Len(t, reclaimed, 2, "the reset task and the never-claimed one")
			for _, task := range reclaimed {
				if task.ID == gone[3].ID {
					require.Equal(t, 1, task.RecoveryCount)
					gone[3] = task
				}
			}
			other := reclaimed[0]
			if other.ID == gone[3].ID {
				other = reclaimed[1]
			}

			// Only time passing on the database's clock ages a heartbeat.
			b.awaitAge(t, staleRow.HeartbeatAt, heartbeatTimeout)
			freshRow := b.upsertRunner(t, "fresh")
			fresh := b.claimAs(t, "fresh", 2)
			got := b.orphans(t, heartbeatTimeout, 0)
			// The listed claim fences the reset: recovery count + 1, and
			// the task is claimable again.
			b.reset(t, gone[3])
			afterReset := b.orphans(t, heartbeatTimeout, 0)
			// Registering again does not bring a runner's old claims back:
			// they are listed until reset, by runner row state alone.
			b.upsertRunner(t, "gone")
			afterReturn := b.orphans(t, heartbeatTimeout, 0)
			if !b.fresh(t, freshRow.HeartbeatAt) {
				return false
			}

			want := map[uuid.UUID]*driver.Task{stale[0].ID: stale[0], gone[0].ID: gone[0], gone[3].ID: gone[3], other.ID: other}
			require.ElementsMatch(t, []uuid.UUID{stale[0].ID, gone[0].ID, gone[3].ID, other.ID}, taskIDs(got))
			for _, task := range got {
				w := want[task.ID]
				require.Equal(t, driver.TaskRunning, task.Status)
				require.Equal(t, fenceOf(w), fenceOf(task), "the claim as stored")
				require.Equal(t, w.PipelineID, task.PipelineID)
				require.Equal(t, w.Name, task.Name)
			}
			for _, task := range fresh {
				require.NotContains(t, taskIDs(got), task.ID, "a runner heartbeating within the timeout is alive")
			}
			again := b.getTask(t, gone[3].ID)
			require.Equal(t, driver.TaskReady, again.Status)
			require.Equal(t, 2, again.RecoveryCount)
			require.Empty(t, again.RunnerID)
			require.ElementsMatch(t, []uuid.UUID{stale[0].ID, gone[0].ID, other.ID}, taskIDs(afterReset))
			require.ElementsMatch(t, []uuid.UUID{stale[0].ID}, taskIDs(afterReturn))
			return true
		})
	})

	// A runner starting up lists the claims left under its own id, live
	// row or not, and nothing else; Timeout plays no part.
	t.Run("OwnClaims", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.upsertRunner(t, "me")
		b.upsertRunner(t, "other")
		mine := b.claimAs(t, "me", 3)
		b.claimAs(t, "other", 2)
		gone := b.claimAs(t, "gone", 1)
		b.finish(t, driver.TaskFinish{Fence: fenceOf(mine[2]), Status: driver.TaskCompleted, Output: json.RawMessage(`{}`),
			Attempt: 1, Now: b.now})
		own := func(limit int) []*driver.Task {
			got, err := b.drv.Reader().TaskListOrphaned(b.ctx, &driver.TaskListOrphanedParams{RunnerID: "me", Limit: limit})
			require.NoError(t, err)
			return got
		}
		got := own(0)
		require.ElementsMatch(t, taskIDs(mine[:2]), taskIDs(got), "Running under the id, whatever the heartbeat")
		for _, task := range got {
			require.Equal(t, driver.TaskRunning, task.Status)
			require.Equal(t, "me", task.RunnerID)
		}
		require.Len(t, own(1), 1)
		require.ElementsMatch(t, taskIDs(gone), taskIDs(b.orphans(t, time.Hour, 0)),
			"without RunnerID, live runners' claims stay out")

		b.reset(t, got[0])
		require.Len(t, own(0), 1, "a reset claim is no longer listed")
	})

	t.Run("Limit", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		tasks := b.claimAs(t, "gone", 5)
		got := b.orphans(t, time.Hour, 2)
		require.Len(t, got, 2)
		require.Subset(t, taskIDs(tasks), taskIDs(got))
		require.Len(t, b.orphans(t, time.Hour, 0), 5, "0 means the backend's default batch")
		require.Empty(t, b.orphans(t, time.Hour, 0)[0].Input, "claims only, no contexts")
	})

	// Without RunnerID, a timeout of zero or less would orphan every
	// running task: it is refused, with the fix in the message.
	t.Run("RefusesNonPositiveTimeout", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.upsertRunner(t, "r-1")
		b.claimAs(t, "r-1", 1)
		for _, d := range []time.Duration{0, -time.Second} {
			_, err := b.drv.Reader().TaskListOrphaned(b.ctx, &driver.TaskListOrphanedParams{Timeout: d})
			require.ErrorContains(t, err, "pass a positive Timeout", "timeout %s", d)
		}
	})
}

func testTaskSubStatusSet(t *testing.T, s *suite) {
	t.Run("Fenced", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		tasks := b.claimAs(t, "r1", 2)
		task := tasks[0]
		before := b.getTask(t, task.ID)
		require.Empty(t, before.SubStatus, "a claimed task has no sub-status")

		wrongRunner, wrongAttempt, wrongRecovery := fenceOf(task), fenceOf(task), fenceOf(task)
		wrongRunner.RunnerID = "r2"
		wrongAttempt.Attempt = 2
		wrongRecovery.RecoveryCount = 1
		for _, f := range []driver.Fence{wrongRunner, wrongAttempt, wrongRecovery, {TaskID: uuid.New(), RunnerID: "r1", Attempt: 1}} {
			require.False(t, b.setSubStatus(t, f, "deferred", b.at(time.Second)), "fence %+v", f)
		}
		require.Equal(t, before, b.getTask(t, task.ID), "a write under a lost claim changes nothing")

		require.True(t, b.setSubStatus(t, fenceOf(task), "deferred", b.at(time.Second)))
		got, err := b.drv.Reader().TaskList(b.ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{task.PipelineID}})
		require.NoError(t, err)
		require.Equal(t, "deferred", got[0].SubStatus, "visible through TaskList")
		require.Empty(t, got[1].SubStatus, "other tasks untouched")
		require.Equal(t, driver.TaskRunning, got[0].Status, "the task stays Running")
		requireTime(t, b.at(time.Second), got[0].UpdatedAt)

		require.True(t, b.setSubStatus(t, fenceOf(task), "", b.at(2*time.Second)), "and back")
		require.Empty(t, b.getTask(t, task.ID).SubStatus)

		// Only a Running task has a sub-status.
		b.finish(t, driver.TaskFinish{Fence: fenceOf(tasks[1]), Status: driver.TaskCompleted, Attempt: 1, Now: b.now})
		require.False(t, b.setSubStatus(t, fenceOf(tasks[1]), "deferred", b.now))
		require.Empty(t, b.getTask(t, tasks[1].ID).SubStatus)
	})

	// Every fenced transition clears the sub-status and sets the recovery
	// count to TaskFinish.RecoveryCount.
	t.Run("ClearedByFinish", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		tasks := b.claimAs(t, "r1", 3)
		for _, task := range tasks {
			require.True(t, b.setSubStatus(t, fenceOf(task), "deferred", b.now))
		}
		due := b.at(time.Minute)
		done := b.finish(t,
			driver.TaskFinish{Fence: fenceOf(tasks[0]), Status: driver.TaskCompleted, Attempt: 1, Now: b.now},
			driver.TaskFinish{Fence: fenceOf(tasks[1]), Status: driver.TaskReady, Attempt: 2, AvailableAt: &due, Now: b.now},
			driver.TaskFinish{Fence: fenceOf(tasks[2]), Status: driver.TaskReady, Attempt: 1, RecoveryCount: 1, AvailableAt: &b.now, Now: b.now})
		require.Len(t, done, 3)
		for i, want := range []int{0, 0, 1} {
			got := b.getTask(t, tasks[i].ID)
			require.Empty(t, got.SubStatus, "task %d", i)
			require.Equal(t, want, got.RecoveryCount, "task %d", i)
		}

		// A recovered task's next claim carries the recovery count, and
		// only a fence with it holds.
		b.apply(t, &driver.ChangeSet{Outbox: []driver.OutboxInsert{outboxFor(driver.TaskInsert{ID: tasks[2].ID, Attempt: 1, WorkflowName: "wf"}, b.now)}})
		reclaimed := b.claim(t, "r2", 10)
		require.Len(t, reclaimed, 1)
		require.Equal(t, 1, reclaimed[0].RecoveryCount)
		require.Equal(t, 1, reclaimed[0].Attempt)
		require.Empty(t, b.finish(t, driver.TaskFinish{Fence: fenceOf(tasks[2]), Status: driver.TaskCompleted, Attempt: 1, Now: b.now}),
			"the dead runner's claim is fenced out")
		require.NotEmpty(t, b.finish(t, driver.TaskFinish{Fence: fenceOf(reclaimed[0]), Status: driver.TaskCompleted, Attempt: 1,
			RecoveryCount: 1, Now: b.now}))
		require.Equal(t, 1, b.getTask(t, tasks[2].ID).RecoveryCount)
	})
}

func testTaskFenceCheck(t *testing.T, s *suite) {
	t.Run("ListsExactlyTheLostClaims", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		tasks := b.claimAs(t, "r1", 4)
		held, finished, recovered, otherRunner := tasks[0], tasks[1], tasks[2], tasks[3]

		b.finish(t, driver.TaskFinish{Fence: fenceOf(finished), Status: driver.TaskCompleted, Attempt: 1, Now: b.now})
		b.reset(t, recovered)
		reclaimed := b.claim(t, "r1", 10) // the same runner gets it back, under a new claim
		require.Len(t, reclaimed, 1)
		foreign := fenceOf(otherRunner)
		foreign.RunnerID = "r2"
		wrongAttempt := fenceOf(held)
		wrongAttempt.Attempt = 2
		unknown := driver.Fence{TaskID: uuid.New(), RunnerID: "r1", Attempt: 1}

		require.Empty(t, b.lost(t), "no fences, nothing lost")
		require.Empty(t, b.lost(t, fenceOf(held), fenceOf(otherRunner), fenceOf(reclaimed[0])))
		require.ElementsMatch(t, []uuid.UUID{finished.ID, recovered.ID, otherRunner.ID, held.ID, unknown.TaskID},
			b.lost(t, fenceOf(held), fenceOf(finished), fenceOf(recovered), foreign, wrongAttempt, unknown, fenceOf(reclaimed[0])))

		// A task given with its lost and its held claim is listed once,
		// whatever the order: the lost claim must not pass for held.
		require.Equal(t, []uuid.UUID{recovered.ID}, b.lost(t, fenceOf(recovered), fenceOf(reclaimed[0])))
		require.Equal(t, []uuid.UUID{recovered.ID}, b.lost(t, fenceOf(reclaimed[0]), fenceOf(recovered)))
	})
}
