package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// status shows the live runner and the work waiting, running and paused,
// as a table and as JSON.
func TestStatus(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ctx := t.Context()
		ok(t, url, "migrate")
		require.Equal(t, "no runners\n\nno unfinished work\n", ok(t, url, "status"))

		r, started, _ := startGateRunner(t, url)
		require.Eventually(t, r.IsLeader, followDeadline, 5*time.Millisecond, "the only runner takes the vacant lease")
		startGate(t, r, started)
		paused, err := openRunner(t, url, heldWorkflow()).ExecuteAsync(ctx, "held", nil)
		require.NoError(t, err)
		require.NoError(t, r.Pause(ctx, paused.ID()))
		_, err = openRunner(t, url, heldWorkflow()).ExecuteAsync(ctx, "held", nil)
		require.NoError(t, err)

		out := ok(t, url, "status")
		runnersOut, backlogOut, found := strings.Cut(out, "\n\n")
		require.True(t, found, out)
		header, rows := parseTable(t, runnersOut)
		require.Equal(t, row{"RUNNER", "NAME", "HOST", "PID", "STARTED", "HEARTBEAT", "HEARTBEAT AGE", "LEADER", "WORKFLOWS"}, header)
		require.Len(t, rows, 1, "the started runner; runners that only submit are not registered")
		require.Equal(t, r.ID(), rows[0][0])
		require.Regexp(t, `^(?:\d+ms|[0-9.]+s|\d+m[0-9.]+s)$`, rows[0][6], "how long ago it heartbeated")
		require.Equal(t, row{"yes", "gate,quick"}, rows[0][7:])

		header, rows = parseTable(t, backlogOut)
		require.Equal(t, row{"WORKFLOW", "READY", "OLDEST WAIT", "DELAYED", "RUNNING", "DEFERRED", "PENDING RUNS", "RUNNING RUNS", "PAUSED RUNS"}, header)
		require.Len(t, rows, 2)
		require.Equal(t, row{"gate", "0", "-", "0", "1", "0", "0", "1", "0"}, rows[0])
		require.Equal(t, row{"held", "1", rows[1][2], "0", "0", "0", "1", "0", "1"}, rows[1],
			"the pending run's first task waits (no runner runs held); the paused run's is held back")
		require.Regexp(t, `^(?:\d+ms|[0-9.]+s|\d+m[0-9.]+s)$`, rows[1][2])

		st := jsonObject(t, ok(t, url, "status", "--json"))
		runners := st["runners"].([]any)
		require.Len(t, runners, 1)
		require.Equal(t, r.ID(), runners[0].(map[string]any)["id"])
		require.Equal(t, true, runners[0].(map[string]any)["leader"])
		backlog := st["backlog"].([]any)
		require.Len(t, backlog, 2)
		held := backlog[1].(map[string]any)
		require.Equal(t, "held", held["workflow"])
		require.Equal(t, float64(1), held["ready"])
		require.Equal(t, float64(1), held["paused_runs"])
		oldest, err := time.Parse(time.RFC3339Nano, held["oldest_ready_at"].(string))
		require.NoError(t, err)
		require.WithinDuration(t, time.Now(), oldest, time.Minute)
	})
}

// status ends with the stored schedules: active or paused, the next tick
// and how late it is — a late tick means no started runner declares it.
func TestStatusSchedules(t *testing.T) {
	t.Parallel()
	t.Run("stored", func(t *testing.T) {
		t.Parallel()
		url := "sqlite://" + testdb.SQLitePath(t)
		twoSchedules(t, url)
		ok(t, url, "schedules", "pause", "hourly")
		nightly := storedSchedule(t, url, "nightly")

		parts := strings.Split(ok(t, url, "status"), "\n\n")
		require.Len(t, parts, 3)
		require.Equal(t, "no runners", parts[0])
		header, rows := parseTable(t, parts[2])
		require.Equal(t, row{"SCHEDULE", "WORKFLOW", "STATE", "NEXT TICK", "LATE"}, header)
		require.Equal(t, []row{
			{"hourly", "report", "paused", "-", "-"},
			{"nightly", "report", "active", formatTime(nightly.NextFireAt), "-"},
		}, rows)

		st := jsonObject(t, ok(t, url, "status", "--json"))
		schedules := st["schedules"].([]any)
		require.Len(t, schedules, 2)
		require.Equal(t, map[string]any{"name": "hourly", "workflow": "report", "state": "paused", "next_fire_at": nil, "late_ms": float64(0)},
			schedules[0])
		require.Equal(t, "nightly", schedules[1].(map[string]any)["name"])
		require.Equal(t, float64(0), schedules[1].(map[string]any)["late_ms"])
	})

	t.Run("late", func(t *testing.T) {
		t.Parallel()
		now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
		schedules := []cloacina.ScheduleInfo{
			{Name: "due", Workflow: "w", NextFireAt: now.Add(-90 * time.Second)},
			{Name: "paused", Workflow: "w", Paused: true, NextFireAt: now.Add(-time.Hour)},
			{Name: "soon", Workflow: "w", NextFireAt: now.Add(time.Minute)},
		}
		var out strings.Builder
		require.NoError(t, writeStatus(&app{stdout: &out}, nil, nil, schedules, now))
		parts := strings.Split(out.String(), "\n\n")
		require.Len(t, parts, 3)
		_, rows := parseTable(t, parts[2])
		require.Equal(t, []row{
			{"due", "w", "active", formatTime(now.Add(-90 * time.Second)), formatDuration(90 * time.Second)},
			{"paused", "w", "paused", "-", "-"},
			{"soon", "w", "active", formatTime(now.Add(time.Minute)), "-"},
		}, rows)
		j := newStatusJSON(nil, nil, schedules, now)
		require.Equal(t, []int64{90000, 0, 0}, []int64{j.Schedules[0].LateMS, j.Schedules[1].LateMS, j.Schedules[2].LateMS})
	})
}
