package cloacina

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// Retention keeps every event of a run still going, however old, so Replay
// of them still gives each of its tasks' status; the old events of a
// finished run go. IncludeUnfinishedRuns deletes by age alone. The count
// is, each time, what the deletion with the same options deletes.
func TestRetentionKeepsUnfinishedRuns(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started, release := make(chan struct{}, 1), make(chan struct{})
		releaseOnce := sync.OnceFunc(func() { close(release) })
		long := MustWorkflow("long",
			Task{Name: "hold", Run: func(ctx context.Context, _ *Context) error {
				select {
				case started <- struct{}{}:
				default:
				}
				select {
				case <-release:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}},
			Task{Name: "after", DependsOn: []string{"hold"}, Run: ok},
		)
		quick := MustWorkflow("quick", Task{Name: "a", Run: ok}, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})

		// The runner lives 40 days in the past (see TestEventQueries), so
		// every event it records is old enough for retention. One slot: a
		// second long run waits in the outbox while the first one holds it.
		old := openRunner(t, url, &Config{Workflows: []*Workflow{long, quick}, MaxConcurrentTasks: 1})
		old.now = func() time.Time { return time.Now().UTC().Add(-40 * 24 * time.Hour) }
		t.Cleanup(releaseOnce) // runs before the runner closes, should the test fail
		require.NoError(t, old.Start(ctx))
		finished, err := old.Execute(ctx, "quick", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, finished.Status)
		running, err := old.ExecuteAsync(ctx, "long", nil)
		require.NoError(t, err)
		waitFor(t, started, "the long run's first task to start")
		paused, err := old.ExecuteAsync(ctx, "long", nil)
		require.NoError(t, err)
		require.NoError(t, old.Pause(ctx, paused.ID()))

		// Another process prunes.
		r := openRunner(t, url, nil)
		eventsOf := func(id uuid.UUID) []*Event {
			t.Helper()
			evs, err := r.RunEvents(ctx, id)
			require.NoError(t, err)
			return evs
		}
		ids := func(evs []*Event) []uuid.UUID {
			out := make([]uuid.UUID, len(evs))
			for i, e := range evs {
				out[i] = e.ID
			}
			return out
		}
		unfinished := map[uuid.UUID][]*Event{running.ID(): eventsOf(running.ID()), paused.ID(): eventsOf(paused.ID())}
		finishedEvents := eventsOf(finished.ID)
		require.NotEmpty(t, finishedEvents)

		cutoff := time.Now().UTC().Add(-30 * 24 * time.Hour)
		count, err := r.CountEventsBefore(ctx, cutoff, nil)
		require.NoError(t, err)
		require.EqualValues(t, len(finishedEvents), count)
		deleted, err := r.DeleteEventsBefore(ctx, cutoff, &DeleteEventsOpts{BatchSize: 2})
		require.NoError(t, err)
		require.Equal(t, count, deleted)
		require.Empty(t, eventsOf(finished.ID), "the finished run's old events")

		// The unfinished runs keep every event, and Replay of them still
		// gives each task the status the engine stored.
		for id, before := range unfinished {
			kept := eventsOf(id)
			require.Equal(t, ids(before), ids(kept))
			for _, e := range kept {
				require.True(t, e.CreatedAt.Before(cutoff), "an event the old code would have deleted")
			}
			stored, err := r.Get(ctx, id)
			require.NoError(t, err)
			replayed := Replay(kept)
			require.Equal(t, stored.Status, replayed.Runs[id])
			require.Len(t, replayed.Tasks, len(stored.Tasks))
			for _, tr := range stored.Tasks {
				require.Equal(t, tr.Status, replayed.Tasks[tr.ID], tr.Name)
			}
		}
		got, err := r.Get(ctx, running.ID())
		require.NoError(t, err)
		require.Equal(t, PipelineRunning, got.Status)
		require.Equal(t, TaskStatusRunning, got.Task("hold").Status)
		got, err = r.Get(ctx, paused.ID())
		require.NoError(t, err)
		require.Equal(t, PipelinePaused, got.Status)

		// By age alone, the unfinished runs' old events go too.
		everyOld := &DeleteEventsOpts{IncludeUnfinishedRuns: true, BatchSize: 2}
		count, err = r.CountEventsBefore(ctx, cutoff, everyOld)
		require.NoError(t, err)
		require.EqualValues(t, len(unfinished[running.ID()])+len(unfinished[paused.ID()]), count)
		deleted, err = r.DeleteEventsBefore(ctx, cutoff, everyOld)
		require.NoError(t, err)
		require.Equal(t, count, deleted)
		require.Empty(t, eventsOf(running.ID()))
		require.Empty(t, eventsOf(paused.ID()))

		// Bad options fail the count as they fail the deletion.
		_, err = r.CountEventsBefore(ctx, cutoff, &DeleteEventsOpts{BatchSize: -1})
		require.ErrorContains(t, err, "DeleteEventsOpts.BatchSize must be positive")
		_, err = r.DeleteEventsBefore(ctx, cutoff, &DeleteEventsOpts{BatchSize: -1})
		require.ErrorContains(t, err, "DeleteEventsOpts.BatchSize must be positive")

		releaseOnce()
		res, err := running.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
	})
}

// rollbackDriver makes the commit of a transaction that deleted events
// fail, once it is armed, after skipping as many such commits as skip
// says: the transaction rolls back and the caller hears a transient error.
type rollbackDriver struct {
	skip, armed, failed atomic.Int64
}

type rollbackTx struct {
	driver.Tx
	d       *rollbackDriver
	deletes bool
}

func (tx *rollbackTx) EventDelete(ctx context.Context, p *driver.EventDeleteParams) (*driver.EventDeleteResult, error) {
	tx.deletes = true
	return tx.Tx.EventDelete(ctx, p)
}

func (tx *rollbackTx) Commit(ctx context.Context) error {
	if tx.deletes && tx.d.skip.Add(-1) < 0 && tx.d.armed.Add(-1) >= 0 {
		tx.d.failed.Add(1)
		if err := tx.Tx.Rollback(ctx); err != nil {
			return err
		}
		return fmt.Errorf("%w: the connection broke before COMMIT", driver.ErrTransient)
	}
	return tx.Tx.Commit(ctx)
}

// A batch whose transaction rolls back is deleted again by the retry: the
// pass moves on past a batch only once it committed.
func TestRetentionRetriesABatchThatRolledBack(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		seedOldRuns(t, url, 3)

		r := openRunner(t, url, nil)
		rollback := &rollbackDriver{}
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &rollbackTx{Tx: tx, d: rollback} })
		rollback.skip.Store(1)
		rollback.armed.Store(2)
		cutoff := time.Now().UTC().Add(-30 * 24 * time.Hour)
		count, err := r.CountEventsBefore(ctx, cutoff, nil)
		require.NoError(t, err)
		require.Greater(t, count, int64(6), "old events in several batches")
		deleted, err := r.DeleteEventsBefore(ctx, cutoff, &DeleteEventsOpts{BatchSize: 3})
		require.NoError(t, err)
		require.EqualValues(t, 2, rollback.failed.Load(), "two commits failed")
		require.Equal(t, count, deleted)
		left, err := r.CountEventsBefore(ctx, cutoff, nil)
		require.NoError(t, err)
		require.Zero(t, left, "no old event was skipped")
	})
}

// DeleteRunsBefore deletes finished runs with their tasks, in batches,
// and keeps unfinished ones; the events of the deleted runs stay until
// event retention, which then counts them as those of finished runs.
func TestDeleteRunsBefore(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("r", Task{Name: "a", Run: ok}, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})
		fails := MustWorkflow("f", Task{Name: "a", Retry: &RetryPolicy{MaxAttempts: 1}, Run: func(context.Context, *Context) error {
			return errString("no")
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf, fails}})
		var finished []*ExecutionResult
		for range 5 {
			res, err := r.Execute(ctx, "r", nil)
			require.NoError(t, err)
			finished = append(finished, res)
		}
		res, err := r.Execute(ctx, "f", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		finished = append(finished, res)
		// An unfinished run, paused, of a workflow the started runner does
		// not run (so it cannot finish first): kept however old.
		writer := openRunner(t, url, &Config{Workflows: []*Workflow{MustWorkflow("u", Task{Name: "a", Run: ok})}})
		paused, err := writer.ExecuteAsync(ctx, "u", nil)
		require.NoError(t, err)
		require.NoError(t, writer.Pause(ctx, paused.ID()))

		cutoff := time.Now().Add(time.Hour)
		n, err := r.CountRunsBefore(ctx, cutoff, nil)
		require.NoError(t, err)
		require.Equal(t, int64(6), n)
		none, err := r.CountRunsBefore(ctx, finished[0].CreatedAt.Add(-time.Hour), nil)
		require.NoError(t, err)
		require.Zero(t, none, "nothing ended an hour before the first run")
		eventsBefore, err := r.CountEventsBefore(ctx, cutoff, nil)
		require.NoError(t, err)

		var progress []int64
		deleted, err := r.DeleteRunsBefore(ctx, cutoff, &DeleteRunsOpts{BatchSize: 4, Progress: func(n int64) { progress = append(progress, n) }})
		require.NoError(t, err)
		require.Equal(t, int64(6), deleted)
		require.Equal(t, []int64{4, 6}, progress, "in batches")
		for _, res := range finished {
			_, err := r.Get(ctx, res.ID)
			require.ErrorIs(t, err, ErrRunNotFound)
			_, err = r.GetTask(ctx, res.Tasks[0].ID)
			require.ErrorIs(t, err, ErrTaskNotFound, "its tasks go with it")
			events, err := r.RunEvents(ctx, res.ID)
			require.NoError(t, err)
			require.NotEmpty(t, events, "its events stay, for event retention")
		}
		st, err := paused.Status(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelinePaused, st)
		runs, err := r.List(ctx, nil)
		require.NoError(t, err)
		require.Len(t, runs, 1)

		eventsAfter, err := r.CountEventsBefore(ctx, cutoff, nil)
		require.NoError(t, err)
		require.Equal(t, eventsBefore, eventsAfter, "the deleted runs' events count as those of finished runs")

		_, err = r.DeleteRunsBefore(ctx, cutoff, &DeleteRunsOpts{BatchSize: -1})
		require.ErrorContains(t, err, "DeleteRunsOpts.BatchSize must be positive")
	})
}

// The events a run keeps after run retention still name their task: the
// audit log of a task_failed says which task failed. Reads named an
// event's task by joining its row, which run retention deletes, so the
// kept events had lost their task names.
func TestEventsKeepTaskNamesAfterRunRetention(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("w", Task{Name: "charge_card", Run: func(context.Context, *Context) error { return errors.New("declined") }})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(ctx, "w", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		before, err := r.Events(ctx, &EventQuery{RunID: &res.ID, Types: []EventType{EventTaskFailed}})
		require.NoError(t, err)
		require.Len(t, before, 1)
		require.Equal(t, "charge_card", before[0].TaskName)
		n, err := r.DeleteRunsBefore(ctx, time.Now().Add(time.Hour), nil)
		require.NoError(t, err)
		require.EqualValues(t, 1, n)
		after, err := r.Events(ctx, &EventQuery{RunID: &res.ID, Types: []EventType{EventTaskFailed}})
		require.NoError(t, err)
		require.Len(t, after, 1, "the run's events stay")
		require.Equal(t, "charge_card", after[0].TaskName, "the audit log no longer names the task that failed")
	})
}

// Event retention keeps the events of a cancelled run whose task has not
// returned yet, as run retention keeps the run: its outcome is still to
// be recorded. It used to delete them all, and the task's late
// task_completed, alone in the log, replayed the run as Pending.
func TestEventRetentionKeepsACancelledRunWithATaskRunning(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started, release := make(chan struct{}), make(chan struct{})
		wf := MustWorkflow("slow_to_stop", Task{Name: "a", Run: func(context.Context, *Context) error {
			close(started)
			<-release // ignores the cancel for a while
			return nil
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		var once sync.Once
		unblock := func() { once.Do(func() { close(release) }) }
		t.Cleanup(unblock) // before the runner's Close
		exec, err := r.ExecuteAsync(ctx, "slow_to_stop", nil)
		require.NoError(t, err)
		waitFor(t, started, "the task to start")
		require.NoError(t, r.Cancel(ctx, exec.ID()))

		later := time.Now().Add(time.Hour)
		n, err := r.CountEventsBefore(ctx, later, nil)
		require.NoError(t, err)
		require.Zero(t, n, "nothing to delete while the task runs")
		n, err = r.DeleteEventsBefore(ctx, later, nil)
		require.NoError(t, err)
		require.Zero(t, n)

		ended := onEvent(r, eventOf(EventTaskCompleted))
		unblock()
		waitFor(t, ended, "the task's outcome to be recorded")
		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		require.Equal(t, PipelineCancelled, res.Status)
		requireReplays(t, r, res)
		n, err = r.DeleteEventsBefore(ctx, later, nil)
		require.NoError(t, err)
		require.Positive(t, n, "once the task has returned, the run's events go")
	})
}

// Retention's cutoffs are "before cutoff" at full precision, as List's and
// Events' bounds are: the backends store microseconds and used to cut a
// finer cutoff down, so the run and the newest event, stored half a
// microsecond before it, were kept.
func TestRetentionCutoffFinerThanAMicrosecond(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("w", Task{Name: "a", Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(ctx, "w", nil)
		require.NoError(t, err)
		require.NoError(t, r.Stop(ctx))
		events, err := r.RunEvents(ctx, res.ID)
		require.NoError(t, err)
		newest := events[0].CreatedAt
		for _, e := range events {
			if e.CreatedAt.After(newest) {
				newest = e.CreatedAt
			}
		}
		require.Zero(t, newest.Nanosecond()%1000, "stored to the microsecond")

		runCutoff := res.CompletedAt.Add(500 * time.Nanosecond)
		n, err := r.CountRunsBefore(ctx, runCutoff, nil)
		require.NoError(t, err)
		require.EqualValues(t, 1, n, "the run finished before the cutoff")
		evCutoff := newest.Add(500 * time.Nanosecond)
		n, err = r.CountEventsBefore(ctx, evCutoff, nil)
		require.NoError(t, err)
		require.EqualValues(t, len(events), n, "every event was created before the cutoff")
		n, err = r.DeleteEventsBefore(ctx, evCutoff, nil)
		require.NoError(t, err)
		require.EqualValues(t, len(events), n)
		n, err = r.DeleteRunsBefore(ctx, runCutoff, nil)
		require.NoError(t, err)
		require.EqualValues(t, 1, n)
	})
}

// lostReplyTx lies (see lyingDriver) about the commit of a transaction
// that deleted events or runs.
type lostReplyTx struct {
	driver.Tx
	d       *lyingDriver
	deletes bool
}

func (tx *lostReplyTx) EventDelete(ctx context.Context, p *driver.EventDeleteParams) (*driver.EventDeleteResult, error) {
	res, err := tx.Tx.EventDelete(ctx, p)
	tx.deletes = tx.deletes || (err == nil && res.Deleted > 0)
	return res, err
}

func (tx *lostReplyTx) PipelineDeleteFinished(ctx context.Context, p *driver.PipelineDeleteParams) ([]uuid.UUID, error) {
	ids, err := tx.Tx.PipelineDeleteFinished(ctx, p)
	tx.deletes = tx.deletes || (err == nil && len(ids) > 0)
	return ids, err
}

func (tx *lostReplyTx) Commit(ctx context.Context) error { return tx.d.commit(ctx, tx.Tx, tx.deletes) }

// A batch whose commit reply is lost was deleted all the same: the total
// DeleteEventsBefore returns, and its progress, count it. The retry used
// to delete the next batch and return its count alone, so the total
// omitted the batch that had committed.
func TestRetentionCountsABatchWhoseCommitReplyWasLost(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		seedOldRuns(t, url, 3)

		r := openRunner(t, url, nil)
		lost := &lyingDriver{}
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &lostReplyTx{Tx: tx, d: lost} })
		lost.skip.Store(1)
		lost.armed.Store(1)
		cutoff := time.Now().UTC().Add(-30 * 24 * time.Hour)
		count, err := r.CountEventsBefore(ctx, cutoff, nil)
		require.NoError(t, err)
		require.Greater(t, count, int64(9), "old events in several batches")
		var progress []int64
		deleted, err := r.DeleteEventsBefore(ctx, cutoff, &DeleteEventsOpts{BatchSize: 3, Progress: func(n int64) { progress = append(progress, n) }})
		require.NoError(t, err)
		require.EqualValues(t, 1, lost.lied.Load(), "a commit's reply was lost")
		left, err := r.CountEventsBefore(ctx, cutoff, nil)
		require.NoError(t, err)
		require.Zero(t, left, "every old event was deleted")
		require.Equal(t, count, deleted, "the total counts every batch deleted")
		require.Equal(t, count, progress[len(progress)-1])
	})
}

// A batch of runs whose commit reply is lost was deleted all the same:
// DeleteRunsBefore counts it.
func TestRunRetentionCountsABatchWhoseCommitReplyWasLost(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("r", Task{Name: "a", Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		for range 7 {
			res, err := r.Execute(ctx, "r", nil)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status)
		}
		require.NoError(t, r.Stop(ctx))
		lost := &lyingDriver{}
		r.drv = hookTxs(r.drv, func(tx driver.Tx) driver.Tx { return &lostReplyTx{Tx: tx, d: lost} })
		lost.skip.Store(1)
		lost.armed.Store(1)
		cutoff := time.Now().Add(time.Hour)
		count, err := r.CountRunsBefore(ctx, cutoff, nil)
		require.NoError(t, err)
		require.EqualValues(t, 7, count)
		deleted, err := r.DeleteRunsBefore(ctx, cutoff, &DeleteRunsOpts{BatchSize: 2})
		require.NoError(t, err)
		require.EqualValues(t, 1, lost.lied.Load(), "a commit's reply was lost")
		left, err := r.CountRunsBefore(ctx, cutoff, nil)
		require.NoError(t, err)
		require.Zero(t, left)
		require.Equal(t, count, deleted, "the total counts every batch deleted")
	})
}

// seedOldRuns completes n runs of a two-task workflow "old" by a runner
// that lives 40 days in the past (see TestEventQueries): their events are
// old enough for retention.
func seedOldRuns(t *testing.T, url string, n int) {
	t.Helper()
	ctx := testContext(t)
	wf := MustWorkflow("old", Task{Name: "a", Run: ok}, Task{Name: "b", DependsOn: []string{"a"}, Run: ok})
	old := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
	old.now = func() time.Time { return time.Now().UTC().Add(-40 * 24 * time.Hour) }
	require.NoError(t, old.Start(ctx))
	for range n {
		res, err := old.Execute(ctx, "old", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
	}
	require.NoError(t, old.Stop(ctx))
}
