package cloacina

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/internal/testdb"
)

// Seed case 1: every transition emits its event exactly once, in order,
// with its data, and the events alone replay to the final statuses.
func TestEventEmission(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		var flakyCalls atomic.Int32
		retry := &RetryPolicy{MaxAttempts: 3, Backoff: BackoffFixed, InitialDelay: 20 * time.Millisecond}
		wf := MustWorkflow("audit",
			Task{Name: "setup", Run: setKey("ready", true)},
			Task{Name: "flaky", DependsOn: []string{"setup"}, Retry: retry, Run: func(ctx context.Context, tc *Context) error {
				if flakyCalls.Add(1) == 1 {
					return errors.New("flaky: first attempt fails")
				}
				return tc.Set("flaky", "done")
			}},
			Task{Name: "broken", DependsOn: []string{"setup"}, Retry: &RetryPolicy{MaxAttempts: 2, Backoff: BackoffFixed, InitialDelay: 20 * time.Millisecond},
				Run: func(context.Context, *Context) error { return errors.New("broken: always fails") }},
			Task{Name: "after_flaky", DependsOn: []string{"flaky"}, Run: ok},
			Task{Name: "after_broken", DependsOn: []string{"broken"}, Run: ok},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		before := time.Now().UTC()
		res, err := r.Execute(ctx, "audit", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		require.Contains(t, res.Error, `task "broken" failed: broken: always fails`)
		require.ErrorContains(t, res.Err(), "failed")

		events, err := r.RunEvents(ctx, res.ID)
		require.NoError(t, err)

		// sequence_num strictly increases; every event names its runner.
		for i, e := range events {
			require.Equal(t, r.ID(), e.WorkerID)
			require.Equal(t, res.ID, e.PipelineID)
			if i > 0 {
				require.Greater(t, e.SequenceNum, events[i-1].SequenceNum)
			}
		}

		byTask := map[string][]*Event{}
		var pipelineTypes []EventType
		for _, e := range events {
			if e.TaskID == nil {
				pipelineTypes = append(pipelineTypes, e.Type)
				continue
			}
			byTask[e.TaskName] = append(byTask[e.TaskName], e)
		}
		require.Equal(t, []EventType{EventPipelineStarted, EventPipelineFailed}, pipelineTypes)

		types := func(evs []*Event) []EventType {
			out := make([]EventType, len(evs))
			for i, e := range evs {
				out[i] = e.Type
			}
			return out
		}
		run := []EventType{EventTaskClaimed, EventTaskStarted}
		seq := func(parts ...[]EventType) []EventType {
			var out []EventType
			for _, p := range parts {
				out = append(out, p...)
			}
			return out
		}
		created := []EventType{EventTaskCreated, EventTaskMarkedReady}
		require.Equal(t, seq(created, run, []EventType{EventTaskCompleted}), types(byTask["setup"]))
		require.Equal(t, seq(created, run, []EventType{EventTaskRetryScheduled}, run, []EventType{EventTaskCompleted}), types(byTask["flaky"]))
		require.Equal(t, seq(created, run, []EventType{EventTaskRetryScheduled}, run, []EventType{EventTaskFailed}), types(byTask["broken"]))
		require.Equal(t, seq(created, run, []EventType{EventTaskCompleted}), types(byTask["after_flaky"]))
		require.Equal(t, []EventType{EventTaskCreated, EventTaskSkipped}, types(byTask["after_broken"]))

		// Event data carries the error, attempt, retry due time and skip reason.
		retryEv := byTask["flaky"][4]
		data, err := retryEv.Payload()
		require.NoError(t, err)
		require.Equal(t, "flaky: first attempt fails", data.Error)
		require.Equal(t, 1, data.Attempt)
		require.Equal(t, 2, data.NextAttempt)
		require.NotNil(t, data.RetryAt)
		require.False(t, data.RetryAt.Before(retryEv.CreatedAt.Add(20*time.Millisecond)), "retry due after the fixed delay")
		require.Equal(t, int64(20), *data.DelayMS)

		claimData, err := byTask["flaky"][5].Payload()
		require.NoError(t, err)
		require.Equal(t, 2, claimData.Attempt, "the retry runs attempt 2")

		failData, err := byTask["broken"][7].Payload()
		require.NoError(t, err)
		require.Equal(t, "broken: always fails", failData.Error)
		require.Equal(t, 2, failData.Attempt)
		require.NotNil(t, failData.DurationMS)

		skipData, err := byTask["after_broken"][1].Payload()
		require.NoError(t, err)
		require.Equal(t, `upstream task "broken" failed`, skipData.Reason)

		for _, e := range events {
			require.False(t, e.CreatedAt.Before(before.Add(-time.Second)), "timestamps are current and UTC")
			require.Equal(t, time.UTC, e.CreatedAt.Location())
		}

		// Replaying the events alone reproduces every final status.
		replayed := Replay(events)
		require.Equal(t, PipelineFailed, replayed.Runs[res.ID])
		require.Len(t, replayed.Tasks, len(res.Tasks))
		for _, tr := range res.Tasks {
			require.Equal(t, tr.Status, replayed.Tasks[tr.ID], tr.Name)
		}
		require.Equal(t, TaskStatusSkipped, res.Task("after_broken").Status)
		require.Equal(t, 2, res.Task("flaky").Attempts)
		require.Equal(t, 2, res.Task("broken").Attempts)
	})
}

// Seed case 3: event queries.
func TestEventQueries(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("q",
			Task{Name: "a", Run: ok},
			Task{Name: "b", DependsOn: []string{"a"}, Run: ok},
		)
		// The first runner lives 40 days in the past, so its run's events
		// are old enough for retention. Its recording clock is replaced
		// outright: a skewed local clock would be corrected by the
		// database's.
		old := openRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		old.now = func() time.Time { return time.Now().UTC().Add(-40 * 24 * time.Hour) }
		require.NoError(t, old.Start(ctx))
		oldRun, err := old.Execute(ctx, "q", nil)
		require.NoError(t, err)
		require.NoError(t, old.Stop(ctx))

		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		run1, err := r.Execute(ctx, "q", nil)
		require.NoError(t, err)
		run2, err := r.Execute(ctx, "q", nil)
		require.NoError(t, err)

		all, err := r.Events(ctx, nil)
		require.NoError(t, err)
		perRun := map[uuid.UUID]int{}
		for _, e := range all {
			perRun[e.PipelineID]++
		}
		require.Len(t, perRun, 3)
		// Two pipeline events and five per task.
		require.Equal(t, 12, perRun[run1.ID])

		// By run: all of it, nothing of the others.
		byRun, err := r.RunEvents(ctx, run1.ID)
		require.NoError(t, err)
		require.Len(t, byRun, perRun[run1.ID])
		for _, e := range byRun {
			require.Equal(t, run1.ID, e.PipelineID)
		}
		n, err := r.CountRunEvents(ctx, run1.ID)
		require.NoError(t, err)
		require.Equal(t, int64(len(byRun)), n)

		// By task: only that task, in order.
		taskB := run2.Task("b").ID
		byTask, err := r.TaskEvents(ctx, taskB)
		require.NoError(t, err)
		require.Len(t, byTask, 5)
		for i, e := range byTask {
			require.Equal(t, taskB, *e.TaskID)
			require.Equal(t, "b", e.TaskName)
			if i > 0 {
				require.Greater(t, e.SequenceNum, byTask[i-1].SequenceNum)
			}
		}

		// By type.
		completed, err := r.Events(ctx, &EventQuery{Types: []EventType{EventPipelineCompleted}})
		require.NoError(t, err)
		require.Len(t, completed, 3)
		mixed, err := r.Events(ctx, &EventQuery{Types: []EventType{EventTaskClaimed, EventTaskStarted}, RunID: &run2.ID})
		require.NoError(t, err)
		require.Len(t, mixed, 4)

		// Recent N: newest first, the tail of the log reversed.
		recent, err := r.RecentEvents(ctx, 4)
		require.NoError(t, err)
		require.Len(t, recent, 4)
		for i := range recent {
			require.Equal(t, all[len(all)-1-i].SequenceNum, recent[i].SequenceNum)
		}
		_, err = r.RecentEvents(ctx, 0)
		require.Error(t, err)

		// Following the log from a sequence number. On PostgreSQL a follower
		// is held back while any write transaction of the cluster that may
		// still add earlier events is open (other tests' among them), so it
		// catches up rather than answering at once.
		after := all[len(all)-3].SequenceNum
		var tail []*Event
		for deadline := time.Now().Add(testTimeout); len(tail) < 2; {
			require.False(t, time.Now().After(deadline), "the follower never caught up")
			got, err := r.Events(ctx, &EventQuery{AfterSeq: after})
			require.NoError(t, err)
			tail = append(tail, got...)
			if len(got) > 0 {
				after = got[len(got)-1].SequenceNum
			} else {
				time.Sleep(5 * time.Millisecond) // a poll interval: nothing can signal this
			}
		}
		require.ElementsMatch(t, []int64{all[len(all)-2].SequenceNum, all[len(all)-1].SequenceNum},
			[]int64{tail[0].SequenceNum, tail[1].SequenceNum})

		// A cutoff beyond year 9999 covers every event (SQLite's text
		// timestamps used to sort it before them).
		everything, err := r.CountEventsBefore(ctx, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), nil)
		require.NoError(t, err)
		require.EqualValues(t, len(all), everything)

		// Count and delete older than a cutoff, in batches.
		cutoff := time.Now().UTC().Add(-30 * 24 * time.Hour)
		oldCount, err := r.CountEventsBefore(ctx, cutoff, nil)
		require.NoError(t, err)
		require.Equal(t, int64(perRun[oldRun.ID]), oldCount)
		var progress []int64
		deleted, err := r.DeleteEventsBefore(ctx, cutoff, &DeleteEventsOpts{BatchSize: 5, Progress: func(n int64) { progress = append(progress, n) }})
		require.NoError(t, err)
		require.Equal(t, oldCount, deleted)
		require.Greater(t, len(progress), 1, "deleted in several batches")
		require.Equal(t, deleted, progress[len(progress)-1])
		left, err := r.Events(ctx, nil)
		require.NoError(t, err)
		require.Len(t, left, len(all)-int(deleted))
		for _, e := range left {
			require.NotEqual(t, oldRun.ID, e.PipelineID)
		}
		again, err := r.DeleteEventsBefore(ctx, cutoff, nil)
		require.NoError(t, err)
		require.Zero(t, again)
	})
}

// followAll follows the log from after (0: Follow from the start) until
// stop says it has what it waits for, and returns every event it got.
func followAll(t *testing.T, r *Runner, after int64, stop func([]*Event) bool) []*Event {
	t.Helper()
	ctx := testContext(t)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var got []*Event
	for !stop(got) {
		page, err := r.Events(ctx, &EventQuery{AfterSeq: after, Follow: true})
		require.NoError(t, err)
		got = append(got, page...)
		if len(page) > 0 {
			after = page[len(page)-1].SequenceNum
		}
		select {
		case <-ctx.Done():
			t.Fatalf("follower stopped short with %d events: %v", len(got), ctx.Err())
		case <-tick.C:
		}
	}
	return got
}

// A follower started with Follow gets every event once, including those
// of a transaction that was still open, holding lower numbers, while
// later-numbered events committed (an application's transaction around
// ExecuteTx, here). Starting from a plain listing instead would pass them.
func TestFollowFromTheStartSkipsNothing(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	wf := MustWorkflow("ship", Task{Name: "a", Run: ok})
	r := startRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{wf}})
	tx, commit, _, _ := appTx(t, r)
	held, err := r.ExecuteTx(ctx, tx, "ship", nil) // numbered now, committed last
	require.NoError(t, err)
	done, err := r.Execute(ctx, "ship", nil)
	require.NoError(t, err)

	listed, err := r.Events(ctx, nil)
	require.NoError(t, err)
	for _, e := range listed {
		require.Equal(t, done.ID, e.PipelineID, "a listing sees committed events only")
	}
	first, err := r.Events(ctx, &EventQuery{Follow: true})
	require.NoError(t, err)
	require.NoError(t, commit())
	_, err = held.Wait(ctx)
	require.NoError(t, err)

	all, err := r.Events(ctx, nil)
	require.NoError(t, err)
	var after int64
	if len(first) > 0 {
		after = first[len(first)-1].SequenceNum
	}
	got := append(first, followAll(t, r, after, func(got []*Event) bool { return len(got)+len(first) >= len(all) })...)
	seen := map[int64]int{}
	for _, e := range got {
		seen[e.SequenceNum]++
	}
	for _, e := range all {
		require.Equal(t, 1, seen[e.SequenceNum], "event %d (%s of run %s)", e.SequenceNum, e.Type, e.PipelineID)
	}
	require.Len(t, got, len(all))

	// The newest followable event is a cursor to follow from now.
	now, err := r.Events(ctx, &EventQuery{Follow: true, Newest: true, Limit: 1})
	require.NoError(t, err)
	require.Len(t, now, 1)
	require.Contains(t, seen, now[0].SequenceNum)
	_, err = r.Events(ctx, &EventQuery{AfterSeq: -1})
	require.ErrorContains(t, err, "use Follow to follow from the start")
	_, err = r.Events(ctx, &EventQuery{Limit: -1})
	require.ErrorContains(t, err, "EventQuery.Limit -1 is negative: use 0 for all events, or a positive bound")
}

// Since and Until select events by creation time, on both backends, and a
// range that cannot match is refused with the fix.
func TestEventsBetweenTimes(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("timed", Task{Name: "a", Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		first, err := r.Execute(ctx, "timed", nil)
		require.NoError(t, err)
		firstEvents, err := r.RunEvents(ctx, first.ID)
		require.NoError(t, err)
		// After every event of the first run, by the times recorded.
		cut := firstEvents[len(firstEvents)-1].CreatedAt.Add(time.Microsecond)
		second, err := r.Execute(ctx, "timed", nil)
		require.NoError(t, err)
		secondEvents, err := r.RunEvents(ctx, second.ID)
		require.NoError(t, err)
		require.True(t, secondEvents[0].CreatedAt.After(cut), "the runs are a round trip apart, recorded to the microsecond")

		since, err := r.Events(ctx, &EventQuery{Since: cut})
		require.NoError(t, err)
		for _, e := range since {
			require.Equal(t, second.ID, e.PipelineID, "an event of the first run came after the cut")
		}
		require.Len(t, since, len(secondEvents))
		until, err := r.Events(ctx, &EventQuery{Until: cut})
		require.NoError(t, err)
		require.Len(t, until, len(firstEvents))
		both, err := r.Events(ctx, &EventQuery{Since: firstEvents[0].CreatedAt, Until: cut, Types: []EventType{EventPipelineStarted}})
		require.NoError(t, err)
		require.Len(t, both, 1)
		require.Equal(t, first.ID, both[0].PipelineID)

		_, err = r.Events(ctx, &EventQuery{Since: cut, Until: cut})
		require.ErrorContains(t, err, "is not before Until")
	})
}

// Newest-first pages, each bounded by the oldest event of the one
// before (BeforeSeq), go back through the whole log once, alone or with a
// filter; a bound that cannot page is refused with the fix.
func TestEventsPageBack(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{MustWorkflow("w", Task{Name: "a", Run: ok})}})
		first, err := r.Execute(ctx, "w", nil)
		require.NoError(t, err)
		_, err = r.Execute(ctx, "w", nil)
		require.NoError(t, err)
		seqs := func(evs []*Event) []int64 {
			out := make([]int64, len(evs))
			for i, e := range evs {
				out[i] = e.SequenceNum
			}
			return out
		}
		pages := func(q EventQuery) []int64 {
			t.Helper()
			var got []int64
			for {
				page, err := r.Events(ctx, &q)
				require.NoError(t, err)
				if len(page) == 0 {
					return got
				}
				require.LessOrEqual(t, len(page), q.Limit)
				got = append(got, seqs(page)...)
				q.BeforeSeq = page[len(page)-1].SequenceNum
			}
		}
		for _, q := range []EventQuery{{}, {RunID: &first.ID}, {Types: []EventType{EventTaskClaimed, EventPipelineCompleted}}} {
			all, err := r.Events(ctx, &EventQuery{RunID: q.RunID, Types: q.Types, Newest: true})
			require.NoError(t, err)
			require.NotEmpty(t, all)
			q.Newest, q.Limit = true, 3
			require.Equal(t, seqs(all), pages(q), "%+v", q)
		}

		_, err = r.Events(ctx, &EventQuery{BeforeSeq: -1})
		require.ErrorContains(t, err, "EventQuery.BeforeSeq -1 is negative: pass the SequenceNum of the oldest event read so far, or 0 for no bound")
		for _, q := range []*EventQuery{{BeforeSeq: 5, AfterSeq: 1}, {BeforeSeq: 5, Follow: true}} {
			_, err = r.Events(ctx, q)
			require.ErrorContains(t, err, "leave out BeforeSeq to follow, or AfterSeq and Follow to page back")
		}
	})
}

// A time bound finer than the microsecond the backends store selects what
// the bound says: a run or event created at T is before T+1ns, and not at
// or after it. The bound used to be cut down to T, which inverted both.
func TestTimeBoundsBelowAMicrosecond(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{MustWorkflow("w", Task{Name: "a", Run: ok})}})
		res, err := r.Execute(ctx, "w", nil)
		require.NoError(t, err)
		runs, err := r.List(ctx, nil)
		require.NoError(t, err)
		require.Len(t, runs, 1)
		created := runs[0].CreatedAt
		just := created.Add(time.Nanosecond)
		runs, err = r.List(ctx, &ListOpts{Until: just})
		require.NoError(t, err)
		require.Len(t, runs, 1, "created before Until")
		runs, err = r.List(ctx, &ListOpts{Since: just})
		require.NoError(t, err)
		require.Empty(t, runs, "not created at or after Since")

		events, err := r.RunEvents(ctx, res.ID)
		require.NoError(t, err)
		first := events[0]
		evs, err := r.Events(ctx, &EventQuery{RunID: &res.ID, Until: first.CreatedAt.Add(time.Nanosecond)})
		require.NoError(t, err)
		require.NotEmpty(t, evs)
		require.Equal(t, first.SequenceNum, evs[0].SequenceNum, "created before Until")
		evs, err = r.Events(ctx, &EventQuery{RunID: &res.ID, Since: events[len(events)-1].CreatedAt.Add(time.Nanosecond)})
		require.NoError(t, err)
		require.Empty(t, evs, "none created at or after Since")
	})
}
