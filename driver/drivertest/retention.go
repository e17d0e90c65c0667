package drivertest

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// endRun moves Pending run p to status, ended at at.
func (b *bundle) endRun(t *testing.T, p *driver.PipelineInsertParams, status driver.PipelineStatus, at time.Time) {
	t.Helper()
	b.apply(t, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
		{ID: p.ID, FromStatus: driver.PipelinePending, Status: status, StartedAt: &at, CompletedAt: &at, Now: at},
	}})
}

func (b *bundle) countFinished(t *testing.T, before time.Time) int64 {
	t.Helper()
	n, err := b.drv.Reader().PipelineCountFinished(b.ctx, &driver.PipelineCountParams{Before: before})
	require.NoError(t, err)
	return n
}

func (b *bundle) deleteFinished(t *testing.T, before time.Time, limit int) int {
	t.Helper()
	var n int
	b.inTx(t, func(tx driver.Tx) {
		ids, err := tx.PipelineDeleteFinished(b.ctx, &driver.PipelineDeleteParams{Before: before, Limit: limit})
		require.NoError(t, err)
		n = len(ids)
		// The ids returned are those of the runs deleted, each once.
		seen := map[uuid.UUID]bool{}
		for _, id := range ids {
			require.False(t, seen[id], "run %s returned twice", id)
			seen[id] = true
			_, err := tx.PipelineGet(b.ctx, id)
			require.ErrorIs(t, err, driver.ErrNotFound, "a run returned as deleted")
		}
	})
	return n
}

// PipelineDeleteFinished deletes the runs that ended before the cutoff,
// in batches, with their tasks, outbox rows and schedule ticks; it keeps
// unfinished runs, runs that ended later, and runs with a task still
// running. PipelineCountFinished counts the same runs.
func testPipelineDeleteFinished(t *testing.T, s *suite) {
	t.Run("DeletesOldFinishedRunsOnly", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		cutoff := b.at(-time.Hour)
		old := createdAt(b.at(-3 * time.Hour))

		var gone []*driver.PipelineInsertParams
		for _, st := range []driver.PipelineStatus{driver.PipelineCompleted, driver.PipelineFailed, driver.PipelineCancelled} {
			p := b.insertPipeline(t, old)
			b.endRun(t, p, st, b.at(-2*time.Hour))
			gone = append(gone, p)
		}
		// A task of each (a finished one, one skipped with an outbox row
		// left over) and a tick of the first go with the runs.
		done, left := b.newTask(gone[0], 0), b.readyTask(gone[1], 0)
		done.Status = driver.TaskCompleted
		b.insertTasks(t, done)
		b.enqueue(t, b.now, left)
		def := b.scheduleDef("s")
		def.NextFireAt = b.at(-3 * time.Hour)
		b.syncSchedules(t, b.now, def)
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.ScheduleFire(b.ctx, &driver.ScheduleFireParams{Name: "s", Expect: b.at(-3 * time.Hour),
				Ticks: []driver.ScheduleTick{{At: b.at(-3 * time.Hour), PipelineID: &gone[0].ID}}, NextFireAt: b.now, Now: b.now}))
		})

		// Kept: an unfinished old run, a run that ended after the cutoff,
		// a recent run, and a cancelled run whose task has not returned.
		running := b.insertPipeline(t, old)
		endedLate := b.insertPipeline(t, old)
		b.endRun(t, endedLate, driver.PipelineCompleted, b.at(-30*time.Minute))
		recent := b.insertPipeline(t)
		b.endRun(t, recent, driver.PipelineCompleted, b.now)
		cancelled := b.insertPipeline(t, old)
		b.endRun(t, cancelled, driver.PipelineCancelled, b.at(-2*time.Hour))
		stillRunning := b.newTask(cancelled, 0)
		stillRunning.Status, stillRunning.Attempt, stillRunning.RunnerID = driver.TaskRunning, 1, "r1"
		b.insertTasks(t, stillRunning)

		require.Equal(t, int64(3), b.countFinished(t, cutoff))
		require.Zero(t, b.countFinished(t, b.at(-3*time.Hour)), "nothing ended before that")
		require.Equal(t, 2, b.deleteFinished(t, cutoff, 2), "one batch")
		require.Equal(t, 1, b.deleteFinished(t, cutoff, 2))
		require.Zero(t, b.deleteFinished(t, cutoff, 2))
		require.Zero(t, b.countFinished(t, cutoff))

		for _, p := range gone {
			_, err := b.drv.Reader().PipelineGet(b.ctx, p.ID)
			require.ErrorIs(t, err, driver.ErrNotFound)
		}
		tasks, err := b.drv.Reader().TaskList(b.ctx, &driver.TaskListParams{IDs: []uuid.UUID{done.ID, left.ID}})
		require.NoError(t, err)
		require.Empty(t, tasks, "their tasks go with them")
		require.False(t, b.peek(t, b.now, "wf").Claimable, "and their outbox rows")
		require.Empty(t, b.ticks(t, "s", 0), "and their ticks")
		require.Len(t, b.schedules(t), 1, "not their schedule")
		for _, p := range []*driver.PipelineInsertParams{running, endedLate, recent, cancelled} {
			require.Equal(t, p.ID, b.getPipeline(t, p.ID).ID)
		}
		require.Equal(t, driver.TaskRunning, b.getTask(t, stillRunning.ID).Status)
	})

	// The events of deleted runs stay, and still name their tasks, on
	// every read: the name comes from the task row while it exists, then
	// from the copy a deleting batch keeps on the events.
	t.Run("KeptEventsStillNameTheirTasks", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		cutoff := b.at(-time.Hour)
		names := map[uuid.UUID]string{} // event id: its task's name, "" for a run's event
		var runs []*driver.PipelineInsertParams
		for i, status := range []driver.PipelineStatus{driver.PipelineFailed, driver.PipelineCompleted, driver.PipelineCompleted} {
			old := i < 2
			p := b.insertPipeline(t, createdAt(b.at(-4*time.Hour)))
			if old {
				b.endRun(t, p, status, b.at(-2*time.Hour))
			} else {
				b.endRun(t, p, status, b.now)
			}
			runs = append(runs, p)
			first, second := b.newTask(p, 0), b.newTask(p, 1)
			first.Name, second.Name = fmt.Sprintf("run%d_first", i), fmt.Sprintf("run%d_second", i)
			b.insertTasks(t, first, second)
			evs := []driver.EventInsert{
				event(p.ID, nil, driver.EventPipelineStarted, b.at(-3*time.Hour)),
				event(p.ID, &first.ID, driver.EventTaskCompleted, b.at(-3*time.Hour)),
				event(p.ID, &second.ID, driver.EventTaskFailed, b.at(-3*time.Hour)),
				event(p.ID, &second.ID, driver.EventTaskReset, b.at(-3*time.Hour)),
				event(p.ID, nil, driver.EventPipelineFailed, b.at(-3*time.Hour)),
			}
			b.apply(t, &driver.ChangeSet{Events: evs})
			for _, ev := range evs {
				switch {
				case ev.TaskID == nil:
					names[ev.ID] = ""
				case *ev.TaskID == first.ID:
					names[ev.ID] = first.Name
				default:
					names[ev.ID] = second.Name
				}
			}
		}
		requireNames := func(t *testing.T, evs []*driver.Event, want int) {
			t.Helper()
			if want >= 0 {
				require.Len(t, evs, want)
			}
			for _, ev := range evs {
				require.Equal(t, names[ev.ID], ev.TaskName, "event %s (%s)", ev.ID, ev.Type)
			}
		}
		requireAllNamed := func(t *testing.T) {
			t.Helper()
			all := b.events(t, &driver.EventListParams{})
			requireNames(t, all, len(names))
			requireNames(t, b.events(t, &driver.EventListParams{Newest: true, Limit: 4}), 4)
			// (Following stops, on PostgreSQL, below the oldest transaction
			// still open, which another test may hold: not a count.)
			requireNames(t, b.events(t, &driver.EventListParams{AfterSeq: all[0].SequenceNum}), -1)
			for _, p := range runs {
				requireNames(t, b.events(t, &driver.EventListParams{PipelineID: &p.ID}), 5)
			}
			requireNames(t, b.events(t, &driver.EventListParams{TaskID: all[1].TaskID}), 1)
			requireNames(t, b.events(t, &driver.EventListParams{Types: []driver.EventType{driver.EventTaskFailed}}), len(runs))
		}

		requireAllNamed(t)
		require.Equal(t, 1, b.deleteFinished(t, cutoff, 1), "one run a batch")
		requireAllNamed(t)
		require.Equal(t, 1, b.deleteFinished(t, cutoff, 10))
		require.Zero(t, b.deleteFinished(t, cutoff, 10))
		for _, p := range runs[:2] {
			_, err := b.drv.Reader().PipelineGet(b.ctx, p.ID)
			require.ErrorIs(t, err, driver.ErrNotFound)
		}
		requireAllNamed(t)
	})

	t.Run("SkippedTickRecords", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		def := b.scheduleDef("s")
		def.NextFireAt = b.at(-3 * time.Hour)
		b.syncSchedules(t, b.now, def)
		run := b.insertPipeline(t)
		fire := func(expect, next time.Time, firedAt time.Time, ticks ...driver.ScheduleTick) {
			b.inTx(t, func(tx driver.Tx) {
				require.NoError(t, tx.ScheduleFire(b.ctx, &driver.ScheduleFireParams{Name: "s", Expect: expect, Ticks: ticks,
					NextFireAt: next, Now: firedAt}))
			})
		}
		fire(b.at(-3*time.Hour), b.at(-2*time.Hour), b.at(-3*time.Hour),
			driver.ScheduleTick{At: b.at(-3 * time.Hour), PipelineID: &run.ID})
		fire(b.at(-2*time.Hour), b.now, b.at(-2*time.Hour),
			driver.ScheduleTick{At: b.at(-2 * time.Hour), Skipped: "busy"}, driver.ScheduleTick{At: b.at(-90 * time.Minute), Skipped: "busy"})
		fire(b.now, b.at(time.Hour), b.now, driver.ScheduleTick{At: b.now, Skipped: "busy"})

		del := func(limit int) int {
			var n int
			b.inTx(t, func(tx driver.Tx) {
				var err error
				n, err = tx.ScheduleTickDeleteSkipped(b.ctx, &driver.ScheduleTickDeleteParams{Before: b.at(-time.Hour), Limit: limit})
				require.NoError(t, err)
			})
			return n
		}
		require.Equal(t, 1, del(1))
		require.Equal(t, 1, del(1))
		require.Zero(t, del(1))
		ticks := b.ticks(t, "s", 0)
		require.Len(t, ticks, 2, "the recent skipped tick, and the one with a run (it goes with its run)")
		requireTime(t, b.now, ticks[0].At)
		require.Equal(t, &run.ID, ticks[1].PipelineID)
		require.Equal(t, int64(3), b.schedule(t, "s").Skipped, "the counts stay")
	})

	t.Run("RefusesANonPositiveLimit", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.inTx(t, func(tx driver.Tx) {
			_, err := tx.PipelineDeleteFinished(b.ctx, &driver.PipelineDeleteParams{Before: b.now})
			require.ErrorContains(t, err, "pass a positive Limit")
			_, err = tx.ScheduleTickDeleteSkipped(b.ctx, &driver.ScheduleTickDeleteParams{Before: b.now})
			require.ErrorContains(t, err, "pass a positive Limit")
		})
	})
}
