package cli

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
)

// runs cleanup deletes finished runs older than the age, keeps unfinished
// ones, and leaves the events to events cleanup, still naming their tasks
// in events list; --dry-run only counts.
func TestRunsCleanup(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ctx := t.Context()
		r, err := cloacina.Open(ctx, url, &cloacina.Config{Workflows: []*cloacina.Workflow{quick, heldWorkflow()}})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, r.Close()) })
		require.NoError(t, r.Start(ctx))
		var first *cloacina.ExecutionResult
		for range 3 {
			res, err := r.Execute(ctx, "quick", nil)
			require.NoError(t, err)
			require.Equal(t, cloacina.PipelineCompleted, res.Status)
			if first == nil {
				first = res
			}
		}
		require.NoError(t, r.Stop(ctx))
		// Not started again: this run stays pending.
		pending, err := r.ExecuteAsync(ctx, "held", nil)
		require.NoError(t, err)

		require.Regexp(t, `^no finished runs that ended more than 1h ago \(before .*\) to delete\n$`,
			ok(t, url, "runs", "cleanup", "--older-than", "1h"))
		require.Regexp(t, `^would delete 3 finished runs that ended more than 1ms ago \(before .*\); nothing deleted \(dry run\)\n$`,
			ok(t, url, "runs", "cleanup", "--older-than", "1ms", "--dry-run"))
		_, rows := parseTable(t, ok(t, url, "runs", "list"))
		require.Len(t, rows, 4, "a dry run deletes nothing")

		require.Regexp(t, `^deleted 2 of 3 runs\ndeleted 3 of 3 runs\n`+
			`deleted 3 finished runs that ended more than 1ms ago \(before .*\); their events stay until `+"`cloacina events cleanup`"+`\n$`,
			ok(t, url, "runs", "cleanup", "--older-than", "1ms", "--batch-size", "2"))
		_, rows = parseTable(t, ok(t, url, "runs", "list"))
		require.Len(t, rows, 1)
		require.Equal(t, pending.ID().String(), rows[0][0], "the unfinished run stays")

		// The deleted runs' events stay, and still name their task.
		header, rows := parseTable(t, ok(t, url, "events", "list", "--run", first.ID.String(), "--type", "task_completed"))
		require.Len(t, rows, 1)
		require.Equal(t, "TASK", header[4])
		require.Equal(t, "only", rows[0][4], "the task's name outlives its row")

		// The deleted runs' events are old events of finished runs now.
		require.Contains(t, ok(t, url, "events", "cleanup", "--older-than", "1ms", "--dry-run"), "would delete ")
		require.NotContains(t, ok(t, url, "events", "cleanup", "--older-than", "1ms", "--dry-run"), "would delete 0 ")

		requireOneLineError(t, cli(t, "--database-url", url, "runs", "cleanup"), ExitUsage,
			"--older-than is required, e.g. --older-than 90d")
		requireOneLineError(t, cli(t, "--database-url", url, "runs", "cleanup", "--older-than", "1d", "--batch-size", "0"), ExitUsage,
			`"0" is not a count`)
	})
}

// runs cleanup deletes the records of skipped schedule ticks as old even
// when no run is old enough to go: behind a run that never ends, an
// OverlapSkip schedule records a skipped tick every tick, and the command
// used to stop at "no finished runs" and leave them all.
func TestRunsCleanupDeletesSkippedTicksWithNoRunToDelete(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ctx := t.Context()
		r, _ := startBusySchedule(t, url)
		busy := func() cloacina.ScheduleInfo { // through r: a runner per call would use up the connections
			all, err := r.Schedules(ctx)
			require.NoError(t, err)
			require.Len(t, all, 1)
			return all[0]
		}
		require.Eventually(t, func() bool {
			return busy().Skipped >= 2
		}, followDeadline, 10*time.Millisecond, "two ticks skipped behind the first run")
		require.NoError(t, r.PauseSchedule(ctx, "busy")) // no tick recorded after this
		before := busy()
		ticks, err := r.ScheduleTicks(ctx, "busy", 0)
		require.NoError(t, err)
		require.Greater(t, len(ticks), 2)

		require.Regexp(t, `^no finished runs that ended more than 1ms ago \(before .*\) to delete\n$`,
			ok(t, url, "runs", "cleanup", "--older-than", "1ms"))
		ticks, err = r.ScheduleTicks(ctx, "busy", 0)
		require.NoError(t, err)
		require.Len(t, ticks, 1, "only the tick that started the unfinished run stays")
		require.Empty(t, ticks[0].Skipped)
		require.Equal(t, *before.LastRunID, ticks[0].RunID)
		_, rows := parseTable(t, ok(t, url, "runs", "list"))
		require.Len(t, rows, 1, "the unfinished run stays")
		after := busy()
		require.Equal(t, before.Skipped, after.Skipped, "the schedule's count of skipped ticks stays")
		require.Equal(t, before.Fired, after.Fired)
	})
}
