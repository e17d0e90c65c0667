package drivertest

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func testTaskInsertMany(t *testing.T, s *suite) {
	t.Run("RoundTrip", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		due := roundTripTime.Add(time.Minute)
		full := driver.TaskInsert{ID: uuid.New(), PipelineID: p.ID, WorkflowName: "wf", Name: "extract ✓", Position: 7,
			Status: driver.TaskReady, Attempt: 2, MaxAttempts: 5, Input: json.RawMessage(roundTripJSON),
			Error: "previous failure", AvailableAt: &due, Now: roundTripTime}
		bare := driver.TaskInsert{ID: uuid.New(), PipelineID: p.ID, WorkflowName: "wf", Name: "load", Position: 8,
			Status: driver.TaskNotStarted, MaxAttempts: 1, Now: roundTripTime}
		b.insertTasks(t, full, bare)

		got := b.getTask(t, full.ID)
		require.Equal(t, full.ID, got.ID)
		require.Equal(t, p.ID, got.PipelineID)
		require.Equal(t, "wf", got.WorkflowName)
		require.Equal(t, "extract ✓", got.Name)
		require.Equal(t, 7, got.Position)
		require.Equal(t, driver.TaskReady, got.Status)
		require.Equal(t, 2, got.Attempt)
		require.Equal(t, 5, got.MaxAttempts)
		requireJSON(t, roundTripJSON, got.Input)
		require.Nil(t, got.Output)
		require.Equal(t, "previous failure", got.Error)
		require.Empty(t, got.RunnerID)
		require.Zero(t, got.RecoveryCount)
		requireTimePtr(t, truncated(due), got.AvailableAt)
		requireTime(t, truncated(roundTripTime), got.CreatedAt)
		requireTime(t, truncated(roundTripTime), got.UpdatedAt)
		require.Nil(t, got.StartedAt)
		require.Nil(t, got.CompletedAt)

		got = b.getTask(t, bare.ID)
		require.Equal(t, driver.TaskNotStarted, got.Status)
		require.Zero(t, got.Attempt)
		require.Nil(t, got.Input, "a task created without input has nil Input")
		require.Nil(t, got.AvailableAt)
		require.Empty(t, got.Error)
	})

	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.TaskInsertMany(b.ctx, nil))
		})
	})

	t.Run("Many", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		// More rows than a backend may send in one statement.
		var tasks []driver.TaskInsert
		for i := range 600 {
			tasks = append(tasks, b.newTask(p, i))
		}
		b.insertTasks(t, tasks...)
		got, err := b.drv.Reader().TaskList(b.ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{p.ID}})
		require.NoError(t, err)
		require.Len(t, got, len(tasks))
		for i, task := range got {
			require.Equal(t, tasks[i].ID, task.ID)
		}
	})

	t.Run("DuplicateNameInPipeline", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		a, dup := b.newTask(p, 0), b.newTask(p, 1)
		dup.Name = a.Name
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		require.Error(t, tx.TaskInsertMany(b.ctx, []driver.TaskInsert{a, dup}))
		require.NoError(t, tx.Rollback(b.ctx))
	})
}

func testTaskList(t *testing.T, s *suite) {
	t.Run("OrderedByPipelineThenPosition", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p1, p2 := b.insertPipeline(t), b.insertPipeline(t)
		var tasks []driver.TaskInsert
		for _, p := range []*driver.PipelineInsertParams{p2, p1} {
			for pos := range 6 {
				tasks = append(tasks, b.newTask(p, pos))
			}
		}
		want := slices.Clone(tasks)
		slices.SortStableFunc(want, func(x, y driver.TaskInsert) int {
			if c := bytes.Compare(x.PipelineID[:], y.PipelineID[:]); c != 0 {
				return c
			}
			return x.Position - y.Position
		})
		// Insert in an order that is neither.
		rand.New(rand.NewPCG(1, 2)).Shuffle(len(tasks), func(i, j int) { tasks[i], tasks[j] = tasks[j], tasks[i] })
		b.insertTasks(t, tasks...)

		got, err := b.drv.Reader().TaskList(b.ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{p1.ID, p2.ID}})
		require.NoError(t, err)
		require.Equal(t, ids(want, func(ti driver.TaskInsert) uuid.UUID { return ti.ID }), taskIDs(got))
	})

	t.Run("Filters", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p1, p2 := b.insertPipeline(t), b.insertPipeline(t)
		a, bb, c := b.newTask(p1, 0), b.newTask(p1, 1), b.newTask(p2, 0)
		b.insertTasks(t, a, bb, c)
		list := func(params *driver.TaskListParams) []uuid.UUID {
			t.Helper()
			got, err := b.drv.Reader().TaskList(b.ctx, params)
			require.NoError(t, err)
			return taskIDs(got)
		}
		require.Equal(t, []uuid.UUID{a.ID, bb.ID}, list(&driver.TaskListParams{PipelineIDs: []uuid.UUID{p1.ID}}))
		require.Equal(t, []uuid.UUID{c.ID}, list(&driver.TaskListParams{IDs: []uuid.UUID{c.ID, uuid.New()}}))
		require.Equal(t, []uuid.UUID{bb.ID}, list(&driver.TaskListParams{PipelineIDs: []uuid.UUID{p1.ID}, IDs: []uuid.UUID{bb.ID, c.ID}}),
			"filters combine with AND")
		require.Empty(t, list(&driver.TaskListParams{PipelineIDs: []uuid.UUID{uuid.New()}}))
		// Listing every task of the database is refused rather than
		// done by accident.
		_, err := b.drv.Reader().TaskList(b.ctx, &driver.TaskListParams{})
		require.Error(t, err)
	})

	t.Run("WithContexts", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		task := b.readyTask(p, 0)
		b.enqueue(t, b.now, task)
		claimed := b.claim(t, "r1", 1)
		require.Len(t, claimed, 1)
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.TaskFinishMany(b.ctx, &driver.TaskFinishParams{Finishes: []driver.TaskFinish{{Fence: fenceOf(claimed[0]), Status: driver.TaskCompleted,
				Output: json.RawMessage(`{"out":true}`), Attempt: 1, Now: b.now}}})
			require.NoError(t, err)
			require.Len(t, res.Finished, 1)
		})
		got, err := b.drv.Reader().TaskList(b.ctx, &driver.TaskListParams{IDs: []uuid.UUID{task.ID}})
		require.NoError(t, err)
		require.Len(t, got, 1)
		require.Nil(t, got[0].Input, "without WithContexts, Input is left nil")
		require.Nil(t, got[0].Output, "without WithContexts, Output is left nil")
		require.Equal(t, driver.TaskCompleted, got[0].Status, "the other columns are read")

		got, err = b.drv.Reader().TaskList(b.ctx, &driver.TaskListParams{IDs: []uuid.UUID{task.ID}, WithContexts: true})
		require.NoError(t, err)
		requireJSON(t, `{"pos":0}`, got[0].Input)
		requireJSON(t, `{"out":true}`, got[0].Output)
		b.inTx(t, func(tx driver.Tx) {
			got, err := tx.TaskList(b.ctx, &driver.TaskListParams{IDs: []uuid.UUID{task.ID}})
			require.NoError(t, err)
			require.Nil(t, got[0].Input)
		})
	})
}

func fenceOf(t *driver.Task) driver.Fence {
	return driver.Fence{TaskID: t.ID, RunnerID: t.RunnerID, Attempt: t.Attempt, RecoveryCount: t.RecoveryCount}
}

func testTaskFinishMany(t *testing.T, s *suite) {
	// claimed returns a task claimed by runner "r1" at attempt 1.
	claimed := func(t *testing.T, b *bundle, n int) []*driver.Task {
		t.Helper()
		p := b.insertPipeline(t)
		var tasks []driver.TaskInsert
		for i := range n {
			tasks = append(tasks, b.readyTask(p, i))
		}
		b.enqueue(t, b.now, tasks...)
		got := b.claim(t, "r1", n)
		require.Len(t, got, n)
		slices.SortFunc(got, func(x, y *driver.Task) int { return x.Position - y.Position })
		return got
	}
	finish := func(t *testing.T, b *bundle, fs ...driver.TaskFinish) []uuid.UUID {
		t.Helper()
		var done []uuid.UUID
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.TaskFinishMany(b.ctx, &driver.TaskFinishParams{Finishes: fs})
			require.NoError(t, err)
			done = res.Finished
		})
		return done
	}

	// Asked for, the finish reads back every task of some runs as they are
	// after it: the finished ones with their new state, the rest as stored.
	t.Run("ListsRunsAfterwards", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		tasks := claimed(t, b, 3)
		other := b.insertPipeline(t)
		idle := b.newTask(other, 0)
		b.insertTasks(t, idle)
		lost := *tasks[2]
		lost.RunnerID = "someone-else"
		var res *driver.TaskFinishResult
		b.inTx(t, func(tx driver.Tx) {
			var err error
			res, err = tx.TaskFinishMany(b.ctx, &driver.TaskFinishParams{
				Finishes: []driver.TaskFinish{
					{Fence: fenceOf(tasks[1]), Status: driver.TaskCompleted, Output: json.RawMessage(`{"done":1}`), Attempt: 1, Now: b.now},
					{Fence: fenceOf(tasks[0]), Status: driver.TaskFailed, Error: "boom", Attempt: 1, Now: b.now},
					{Fence: fenceOf(&lost), Status: driver.TaskCompleted, Attempt: 1, Now: b.now},
				},
				ListPipelineIDs: []uuid.UUID{tasks[0].PipelineID, other.ID},
			})
			require.NoError(t, err)
		})
		require.ElementsMatch(t, []uuid.UUID{tasks[0].ID, tasks[1].ID}, res.Finished, "a lost fence is not finished")
		require.Len(t, res.Tasks, 4)
		byID := map[uuid.UUID]*driver.Task{}
		for i, task := range res.Tasks {
			byID[task.ID] = task
			if i > 0 && res.Tasks[i-1].PipelineID == task.PipelineID {
				require.Less(t, res.Tasks[i-1].Position, task.Position, "ordered by run, then position")
			}
		}
		require.Equal(t, driver.TaskFailed, byID[tasks[0].ID].Status)
		require.Equal(t, "boom", byID[tasks[0].ID].Error)
		require.Equal(t, driver.TaskCompleted, byID[tasks[1].ID].Status)
		requireJSON(t, `{"done":1}`, byID[tasks[1].ID].Output)
		requireJSON(t, `{"pos":1}`, byID[tasks[1].ID].Input, "contexts are read")
		require.Equal(t, driver.TaskRunning, byID[tasks[2].ID].Status)
		require.Equal(t, driver.TaskNotStarted, byID[idle.ID].Status)

		// ListStatusOnly reads the same rows without their contexts.
		var lean *driver.TaskFinishResult
		b.inTx(t, func(tx driver.Tx) {
			var err error
			lean, err = tx.TaskFinishMany(b.ctx, &driver.TaskFinishParams{
				Finishes:        []driver.TaskFinish{{Fence: fenceOf(tasks[2]), Status: driver.TaskCompleted, Output: json.RawMessage(`{"done":3}`), Attempt: 1, Now: b.now}},
				ListPipelineIDs: []uuid.UUID{tasks[0].PipelineID, other.ID}, ListStatusOnly: true,
			})
			require.NoError(t, err)
		})
		require.Equal(t, []uuid.UUID{tasks[2].ID}, lean.Finished)
		require.Len(t, lean.Tasks, 4)
		for _, task := range lean.Tasks {
			require.Nil(t, task.Input, "status only: no input")
			require.Nil(t, task.Output, "status only: no output")
			want := byID[task.ID].Status
			if task.ID == tasks[2].ID {
				want = driver.TaskCompleted
			}
			require.Equal(t, want, task.Status)
		}
		require.Equal(t, "boom", lean.Tasks[slices.IndexFunc(lean.Tasks, func(x *driver.Task) bool { return x.ID == tasks[0].ID })].Error)
	})

	t.Run("Completed", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		task := claimed(t, b, 1)[0]
		end := roundTripTime
		done := finish(t, b, driver.TaskFinish{Fence: fenceOf(task), Status: driver.TaskCompleted,
			Output: json.RawMessage(roundTripJSON), Attempt: 1, Now: end})
		require.Equal(t, []uuid.UUID{task.ID}, done)
		got := b.getTask(t, task.ID)
		require.Equal(t, driver.TaskCompleted, got.Status)
		requireJSON(t, roundTripJSON, got.Output)
		requireJSON(t, `{"pos":0}`, got.Input, "input is kept")
		require.Empty(t, got.Error)
		require.Equal(t, 1, got.Attempt)
		requireTimePtr(t, truncated(end), got.CompletedAt)
		requireTime(t, truncated(end), got.UpdatedAt)
		requireTimePtr(t, b.now, got.StartedAt, "start of the attempt is kept")
		require.Nil(t, got.AvailableAt)
	})

	t.Run("Failed", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		task := claimed(t, b, 1)[0]
		done := finish(t, b, driver.TaskFinish{Fence: fenceOf(task), Status: driver.TaskFailed,
			Error: "boom: ✗", Attempt: 1, Now: b.at(time.Second)})
		require.Equal(t, []uuid.UUID{task.ID}, done)
		got := b.getTask(t, task.ID)
		require.Equal(t, driver.TaskFailed, got.Status)
		require.Equal(t, "boom: ✗", got.Error)
		require.Nil(t, got.Output)
		requireTimePtr(t, b.at(time.Second), got.CompletedAt)
	})

	t.Run("ReadyForRetry", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		task := claimed(t, b, 1)[0]
		due := b.at(time.Minute)
		done := finish(t, b, driver.TaskFinish{Fence: fenceOf(task), Status: driver.TaskReady,
			Error: "transient", Attempt: 2, AvailableAt: &due, Now: b.at(time.Second)})
		require.Equal(t, []uuid.UUID{task.ID}, done)
		got := b.getTask(t, task.ID)
		require.Equal(t, driver.TaskReady, got.Status)
		require.Equal(t, 2, got.Attempt)
		requireTimePtr(t, due, got.AvailableAt)
		require.Empty(t, got.RunnerID, "a task handed back holds no claim")
		require.Equal(t, "transient", got.Error)
		require.Nil(t, got.CompletedAt)
		requireTime(t, b.at(time.Second), got.UpdatedAt)

		// The retry is claimable through its own outbox row, once due.
		b.apply(t, &driver.ChangeSet{Outbox: []driver.OutboxInsert{{TaskID: task.ID, Attempt: 2, WorkflowName: "wf", AvailableAt: due, Now: b.now}}})
		require.Empty(t, b.claim(t, "r2", 10))
		var again []*driver.Task
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.TaskClaim(b.ctx, &driver.TaskClaimParams{RunnerID: "r2", Workflows: []string{"wf"}, Limit: 10, Now: due})
			require.NoError(t, err)
			again = res.Tasks
		})
		require.Len(t, again, 1)
		require.Equal(t, 2, again[0].Attempt)
		require.Equal(t, "r2", again[0].RunnerID)

		// The first claim is fenced out for good.
		require.Empty(t, finish(t, b, driver.TaskFinish{Fence: fenceOf(task), Status: driver.TaskCompleted, Attempt: 1, Now: due}))
		require.NotEmpty(t, finish(t, b, driver.TaskFinish{Fence: fenceOf(again[0]), Status: driver.TaskCompleted, Attempt: 2, Now: due}))
	})

	t.Run("Fencing", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		tasks := claimed(t, b, 5)
		wrongRunner, wrongAttempt, wrongRecovery, held, notRunning := fenceOf(tasks[0]), fenceOf(tasks[1]), fenceOf(tasks[2]), fenceOf(tasks[3]), fenceOf(tasks[4])
		wrongRunner.RunnerID = "r2"
		wrongAttempt.Attempt = 2
		wrongRecovery.RecoveryCount = 1
		// tasks[4] is handed back first, so it is Ready, not Running.
		require.Len(t, finish(t, b, driver.TaskFinish{Fence: notRunning, Status: driver.TaskReady, Attempt: 1, AvailableAt: &b.now, Now: b.now}), 1)
		before := map[uuid.UUID]*driver.Task{}
		for _, task := range tasks {
			before[task.ID] = b.getTask(t, task.ID)
		}

		later := b.at(time.Hour)
		var fs []driver.TaskFinish
		for _, fence := range []driver.Fence{wrongRunner, wrongAttempt, wrongRecovery, held, notRunning} {
			fs = append(fs, driver.TaskFinish{Fence: fence, Status: driver.TaskCompleted, Output: json.RawMessage(`{"x":1}`), Attempt: fence.Attempt, Now: later})
		}
		require.Equal(t, []uuid.UUID{held.TaskID}, finish(t, b, fs...), "only the held fence is applied and returned")
		for _, task := range tasks {
			got := b.getTask(t, task.ID)
			if task.ID == held.TaskID {
				require.Equal(t, driver.TaskCompleted, got.Status)
				continue
			}
			require.Equal(t, before[task.ID], got, "a write under a lost claim changes nothing")
		}
		// A finished task is not Running: finishing it again is fenced out too.
		require.Empty(t, finish(t, b, driver.TaskFinish{Fence: held, Status: driver.TaskFailed, Attempt: 1, Now: later}))
		require.Equal(t, driver.TaskCompleted, b.getTask(t, held.TaskID).Status)
		require.Empty(t, finish(t, b, driver.TaskFinish{Fence: driver.Fence{TaskID: uuid.New(), RunnerID: "r1", Attempt: 1},
			Status: driver.TaskCompleted, Attempt: 1, Now: later}), "an unknown task is not applied")
	})

	t.Run("Many", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		tasks := claimed(t, b, 3)
		due := b.at(time.Minute)
		done := finish(t, b,
			driver.TaskFinish{Fence: fenceOf(tasks[0]), Status: driver.TaskCompleted, Output: json.RawMessage(`{"a":1}`), Attempt: 1, Now: b.now},
			driver.TaskFinish{Fence: fenceOf(tasks[1]), Status: driver.TaskFailed, Error: "e", Attempt: 1, Now: b.now},
			driver.TaskFinish{Fence: fenceOf(tasks[2]), Status: driver.TaskReady, Error: "r", Attempt: 2, AvailableAt: &due, Now: b.now})
		require.ElementsMatch(t, taskIDs(tasks), done)
		require.Equal(t, driver.TaskCompleted, b.getTask(t, tasks[0].ID).Status)
		require.Equal(t, driver.TaskFailed, b.getTask(t, tasks[1].ID).Status)
		require.Equal(t, driver.TaskReady, b.getTask(t, tasks[2].ID).Status)

		require.Empty(t, finish(t, b), "no finishes, nothing done")
	})
}
