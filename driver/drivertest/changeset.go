package drivertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func testChangeSetApply(t *testing.T, s *suite) {
	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.apply(t, &driver.ChangeSet{})
	})

	t.Run("TaskUpdates", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		toReady, toSkip, cancelled := b.newTask(p, 0), b.newTask(p, 1), b.readyTask(p, 2)
		b.insertTasks(t, toReady, toSkip, cancelled)
		at := roundTripTime
		due := at.Add(time.Minute)
		b.apply(t, &driver.ChangeSet{
			Tasks: []driver.TaskUpdate{
				{ID: toReady.ID, FromStatus: driver.TaskNotStarted, Status: driver.TaskReady, Attempt: 1,
					Input: json.RawMessage(roundTripJSON), AvailableAt: &due, Now: at},
				{ID: toSkip.ID, FromStatus: driver.TaskNotStarted, Status: driver.TaskSkipped, Error: "upstream failed", Now: at},
				{ID: cancelled.ID, FromStatus: driver.TaskReady, Status: driver.TaskSkipped, Attempt: 1, Error: "cancelled", Now: at},
			},
			// The outbox row of a task made Ready in the same change set.
			Outbox: []driver.OutboxInsert{{TaskID: toReady.ID, Attempt: 1, WorkflowName: "wf", AvailableAt: due, Now: at}},
		})

		got := b.getTask(t, toReady.ID)
		require.Equal(t, driver.TaskReady, got.Status)
		require.Equal(t, 1, got.Attempt)
		requireJSON(t, roundTripJSON, got.Input)
		requireTimePtr(t, truncated(due), got.AvailableAt)
		requireTime(t, truncated(at), got.UpdatedAt)
		require.Nil(t, got.CompletedAt)
		requireTime(t, b.now, got.CreatedAt)

		got = b.getTask(t, toSkip.ID)
		require.Equal(t, driver.TaskSkipped, got.Status)
		require.Equal(t, "upstream failed", got.Error)
		requireTimePtr(t, truncated(at), got.CompletedAt, "a terminal task gets completed_at")
		require.Nil(t, got.Input)

		got = b.getTask(t, cancelled.ID)
		require.Equal(t, driver.TaskSkipped, got.Status)
		requireJSON(t, `{"pos":2}`, got.Input, "an update without input keeps the input")

		var claimed []*driver.Task
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.TaskClaim(b.ctx, &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{"wf"}, Limit: 10, Now: due})
			require.NoError(t, err)
			claimed = res.Tasks
		})
		require.Equal(t, []uuid.UUID{toReady.ID}, taskIDs(claimed))
	})

	t.Run("PipelineUpdates", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		started := b.at(time.Second)
		b.apply(t, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
			{ID: p.ID, FromStatus: driver.PipelinePending, Status: driver.PipelineRunning, StartedAt: &started, Now: started}}})
		got := b.getPipeline(t, p.ID)
		require.Equal(t, driver.PipelineRunning, got.Status)
		requireTimePtr(t, started, got.StartedAt)
		requireTime(t, started, got.UpdatedAt)

		// Running ↔ Paused keeps the first start time.
		again := b.at(2 * time.Second)
		b.apply(t, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
			{ID: p.ID, FromStatus: driver.PipelineRunning, Status: driver.PipelinePaused, StartedAt: &again, Now: again}}})
		b.apply(t, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
			{ID: p.ID, FromStatus: driver.PipelinePaused, Status: driver.PipelineRunning, StartedAt: &again, Now: again}}})
		got = b.getPipeline(t, p.ID)
		requireTimePtr(t, started, got.StartedAt, "started_at is kept once set")

		end := roundTripTime
		b.apply(t, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
			{ID: p.ID, FromStatus: driver.PipelineRunning, Status: driver.PipelineFailed, Output: json.RawMessage(roundTripJSON),
				Error: "task load failed", CompletedAt: &end, Now: end}}})
		got = b.getPipeline(t, p.ID)
		require.Equal(t, driver.PipelineFailed, got.Status)
		requireJSON(t, roundTripJSON, got.Output)
		require.Equal(t, "task load failed", got.Error)
		requireTimePtr(t, truncated(end), got.CompletedAt)
		requireTime(t, truncated(end), got.UpdatedAt)
		requireTimePtr(t, started, got.StartedAt)
		requireJSON(t, `{"run":1}`, got.Input)
		requireTime(t, b.now, got.CreatedAt)

		// A pipeline a claim started keeps its start time too.
		q := b.insertPipeline(t)
		qt := b.readyTask(q, 0)
		b.enqueue(t, b.now, qt)
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.TaskClaim(b.ctx, &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{"wf"}, Limit: 10, Now: started})
			require.NoError(t, err)
			require.Equal(t, []uuid.UUID{q.ID}, res.Started)
			require.Equal(t, []string{q.WorkflowVersion}, res.StartedVersions, "the version stored with each run started")
		})
		b.apply(t, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
			{ID: q.ID, FromStatus: driver.PipelineRunning, Status: driver.PipelineCompleted, StartedAt: &again, CompletedAt: &again, Now: again}}})
		got = b.getPipeline(t, q.ID)
		require.Equal(t, driver.PipelineCompleted, got.Status)
		requireTimePtr(t, started, got.StartedAt)
		require.Nil(t, got.Output, "no output given, none stored")
	})

	// conflictFixture returns a change set whose every part would apply,
	// and the ids to check that none of it did.
	type conflictFixture struct {
		b       *bundle
		p       *driver.PipelineInsertParams
		task    driver.TaskInsert
		cs      *driver.ChangeSet
		eventID uuid.UUID
	}
	conflictSetup := func(t *testing.T) *conflictFixture {
		b := s.setup(t)
		p := b.insertPipeline(t)
		task := b.newTask(p, 0)
		b.insertTasks(t, task)
		ev := event(p.ID, &task.ID, driver.EventTaskMarkedReady, b.now)
		return &conflictFixture{b: b, p: p, task: task, eventID: ev.ID, cs: &driver.ChangeSet{
			Tasks: []driver.TaskUpdate{{ID: task.ID, FromStatus: driver.TaskNotStarted, Status: driver.TaskReady,
				Attempt: 1, Input: json.RawMessage(`{"in":1}`), Now: b.now}},
			Outbox:    []driver.OutboxInsert{{TaskID: task.ID, Attempt: 1, WorkflowName: "wf", AvailableAt: b.now, Now: b.now}},
			Pipelines: []driver.PipelineUpdate{{ID: p.ID, FromStatus: driver.PipelinePending, Status: driver.PipelineRunning, Now: b.now}},
			Events:    []driver.EventInsert{ev},
			Notify:    []string{"work:wf"},
		}}
	}
	requireConflictLeavesNothing := func(t *testing.T, f *conflictFixture) {
		t.Helper()
		b := f.b
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		require.ErrorIs(t, applyAndCommit(b.ctx, tx, f.cs), driver.ErrConflict)

		got := b.getTask(t, f.task.ID)
		require.Equal(t, driver.TaskNotStarted, got.Status)
		require.Nil(t, got.Input)
		require.Equal(t, driver.PipelinePending, b.getPipeline(t, f.p.ID).Status)
		require.False(t, b.peek(t, b.now, "wf").Claimable)
		require.Empty(t, b.events(t, &driver.EventListParams{}))
	}

	t.Run("TaskConflict", func(t *testing.T) {
		t.Parallel()
		f := conflictSetup(t)
		f.cs.Tasks = append(f.cs.Tasks, driver.TaskUpdate{ID: f.task.ID, FromStatus: driver.TaskNotStarted,
			Status: driver.TaskSkipped, Now: f.b.now}) // the first update already moved it
		requireConflictLeavesNothing(t, f)
	})

	t.Run("TaskConflictWrongFromStatus", func(t *testing.T) {
		t.Parallel()
		f := conflictSetup(t)
		f.cs.Tasks[0].FromStatus = driver.TaskReady
		requireConflictLeavesNothing(t, f)
	})

	t.Run("TaskConflictUnknownTask", func(t *testing.T) {
		t.Parallel()
		f := conflictSetup(t)
		f.cs.Tasks = append(f.cs.Tasks, driver.TaskUpdate{ID: uuid.New(), FromStatus: driver.TaskNotStarted, Status: driver.TaskReady, Now: f.b.now})
		requireConflictLeavesNothing(t, f)
	})

	t.Run("PipelineConflict", func(t *testing.T) {
		t.Parallel()
		f := conflictSetup(t)
		f.cs.Pipelines[0].FromStatus = driver.PipelineRunning
		requireConflictLeavesNothing(t, f)
	})

	t.Run("PipelineConflictUnknownPipeline", func(t *testing.T) {
		t.Parallel()
		f := conflictSetup(t)
		f.cs.Pipelines = append(f.cs.Pipelines, driver.PipelineUpdate{ID: uuid.New(), FromStatus: driver.PipelinePending,
			Status: driver.PipelineRunning, Now: f.b.now})
		requireConflictLeavesNothing(t, f)
	})

	t.Run("NoConflictApplies", func(t *testing.T) {
		t.Parallel()
		f := conflictSetup(t)
		f.b.apply(t, f.cs)
		require.Equal(t, driver.TaskReady, f.b.getTask(t, f.task.ID).Status)
		require.Equal(t, driver.PipelineRunning, f.b.getPipeline(t, f.p.ID).Status)
		require.True(t, f.b.peek(t, f.b.now, "wf").Claimable)
		require.Len(t, f.b.events(t, &driver.EventListParams{}), 1)
	})

	t.Run("OutboxRowOncePerAttempt", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		task := b.readyTask(p, 0)
		b.enqueue(t, b.now, task)
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		require.Error(t, applyAndCommit(b.ctx, tx, &driver.ChangeSet{Outbox: []driver.OutboxInsert{outboxFor(task, b.now)}}),
			"a (task, attempt) has at most one outbox row")
		require.Len(t, b.claim(t, "r", 10), 1)
	})

	t.Run("Events", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		task := b.newTask(p, 0)
		b.insertTasks(t, task)
		// Created-at times deliberately out of order: sequence follows
		// insertion, not time.
		evs := []driver.EventInsert{
			event(p.ID, nil, driver.EventPipelineStarted, roundTripTime),
			event(p.ID, &task.ID, driver.EventTaskMarkedReady, b.at(3*time.Second)),
			event(p.ID, &task.ID, driver.EventTaskClaimed, b.at(1*time.Second)),
			event(p.ID, &task.ID, driver.EventTaskStarted, b.at(2*time.Second)),
		}
		evs[0].Data = json.RawMessage(roundTripJSON)
		evs[0].WorkerID = "runner ✓"
		evs[3].Data = nil
		b.apply(t, &driver.ChangeSet{Events: evs[:3]})
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Events: evs[3:]}))
			require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Events: []driver.EventInsert{
				event(p.ID, nil, driver.EventPipelineCompleted, b.now)}}))
		})
		got := b.events(t, &driver.EventListParams{})
		require.Len(t, got, 5)
		for i, ev := range evs {
			require.Equal(t, ev.ID, got[i].ID, "events are listed in insertion order")
			require.Equal(t, ev.PipelineID, got[i].PipelineID)
			require.Equal(t, ev.TaskID, got[i].TaskID)
			require.Equal(t, ev.Type, got[i].Type)
			require.Equal(t, ev.WorkerID, got[i].WorkerID)
			requireTime(t, truncated(ev.CreatedAt), got[i].CreatedAt)
		}
		for i := 1; i < len(got); i++ {
			require.Greater(t, got[i].SequenceNum, got[i-1].SequenceNum, "sequence numbers strictly increase")
		}
		require.Positive(t, got[0].SequenceNum)
		requireJSON(t, roundTripJSON, got[0].Data)
		requireJSON(t, `{"n":1}`, got[1].Data)
		requireJSON(t, `{}`, got[3].Data, "an event without data reads back as {}")
		require.Equal(t, driver.EventPipelineCompleted, got[4].Type)
	})

	// The events of one change set keep their own values where the
	// values alternate or repeat from event to event (backends may bind
	// a repeated value once).
	t.Run("EventsOfOneChangeSet", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p, q := b.insertPipeline(t), b.insertPipeline(t)
		t1, t2 := b.newTask(p, 0), b.newTask(q, 0)
		b.insertTasks(t, t1, t2)
		evs := []driver.EventInsert{
			event(p.ID, &t1.ID, driver.EventTaskClaimed, b.now),
			event(p.ID, &t1.ID, driver.EventTaskStarted, b.now),
			event(q.ID, &t2.ID, driver.EventTaskClaimed, b.at(time.Second)),
			event(p.ID, nil, driver.EventPipelineStarted, b.now),
			event(q.ID, &t2.ID, driver.EventTaskStarted, b.at(time.Second)),
			event(p.ID, &t1.ID, driver.EventTaskClaimed, b.now),
		}
		data := []string{`{"attempt":1}`, "", `{"a":"<&>"}`, `{}`, "", `{"runner_name":"w ✓","attempt":12}`}
		workers := []string{"w1", "w1", "w2", "w1", "w2", "w1"}
		for i := range evs {
			evs[i].Data = nil
			if data[i] != "" {
				evs[i].Data = json.RawMessage(data[i])
			}
			evs[i].WorkerID = workers[i]
		}
		b.apply(t, &driver.ChangeSet{Events: evs})
		got := b.events(t, &driver.EventListParams{})
		require.Len(t, got, len(evs))
		for i, ev := range evs {
			require.Equal(t, ev.ID, got[i].ID)
			require.Equal(t, ev.PipelineID, got[i].PipelineID, "event %d", i)
			require.Equal(t, ev.TaskID, got[i].TaskID, "event %d", i)
			require.Equal(t, ev.Type, got[i].Type, "event %d", i)
			require.Equal(t, ev.WorkerID, got[i].WorkerID, "event %d", i)
			requireTime(t, truncated(ev.CreatedAt), got[i].CreatedAt, "event %d", i)
			want := data[i]
			if want == "" {
				want = `{}`
			}
			requireJSON(t, want, got[i].Data, fmt.Sprintf("event %d", i))
		}
	})

	t.Run("ManyEvents", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		// More rows than a backend may send in one statement.
		var evs []driver.EventInsert
		for i := range 1100 {
			evs = append(evs, event(p.ID, nil, driver.EventTaskCreated, b.at(time.Duration(i)*time.Millisecond)))
		}
		b.apply(t, &driver.ChangeSet{Events: evs})
		got := b.events(t, &driver.EventListParams{PipelineID: &p.ID})
		require.Len(t, got, len(evs))
		for i := range got {
			require.Equal(t, evs[i].ID, got[i].ID)
			if i > 0 {
				require.Greater(t, got[i].SequenceNum, got[i-1].SequenceNum)
			}
		}
	})
}

// applyAndCommit applies a change set and commits it, rolling back on an
// error. A backend may report a change set's errors (ErrConflict among
// them) from ChangeSetApply or, when it sends the writes with COMMIT, from
// Commit: callers must treat both alike.
func applyAndCommit(ctx context.Context, tx driver.Tx, cs *driver.ChangeSet) error {
	if err := tx.ChangeSetApply(ctx, cs); err != nil {
		return errors.Join(err, tx.Rollback(ctx))
	}
	if err := tx.Commit(ctx); err != nil {
		return errors.Join(err, tx.Rollback(ctx))
	}
	return nil
}
