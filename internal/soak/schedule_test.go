package soak

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// tickerWorkflow is the workflow of the ticker schedule: one task that
// does nothing.
func tickerWorkflow() *cloacina.Workflow {
	return cloacina.MustWorkflow("ticker", cloacina.Task{Name: "tick", Run: func(context.Context, *cloacina.Context) error { return nil }})
}

// tickerSchedule fires the ticker workflow on cron, catching up every
// missed tick: a gap in its ticks would be a tick lost.
func tickerSchedule(cron string) cloacina.Schedule {
	return cloacina.Schedule{Name: "ticker", Workflow: "ticker", Cron: cron, CatchUp: cloacina.CatchUpAll}
}

// TestScheduleSurvivesKill9: two runner processes declare a schedule that
// ticks every second; one of them, then the other, is killed with SIGKILL
// (whenever that falls: mid-firing or not) and restarted, three times.
// Every tick from the first to the last fires exactly once, with one run,
// and every run completes.
func TestScheduleSurvivesKill9(t *testing.T) {
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			scheduleKills(t, b.URL(t))
		})
	}
}

func scheduleKills(t *testing.T, url string) {
	ctx := testContext(t, 2*time.Minute)
	spec := runnerSpec{URL: url, MaxConcurrent: 4, Poll: 50 * time.Millisecond, Heartbeat: 100 * time.Millisecond,
		RunnerTimeout: time.Second, Cron: "* * * * * *"}
	procs := make([]*runnerProcess, 2)
	for i := range procs {
		s := spec
		s.Name = fmt.Sprintf("runner%d", i)
		procs[i] = startRunnerProcess(t, s)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, proc := range procs {
				t.Logf("log of runner process %s (runner %s):\n%s", proc.name, proc.runnerID, proc.stderr)
			}
		}
	})
	// The test process reads, and pauses the schedule at the end; it
	// fires nothing (not started).
	obs, err := cloacina.Open(ctx, url, &cloacina.Config{Workflows: []*cloacina.Workflow{tickerWorkflow()},
		Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, obs.Close()) })
	ticks := func(ctx context.Context) ([]cloacina.ScheduleTick, error) {
		return obs.ScheduleTicks(ctx, "ticker", 10000)
	}
	waitTicks := func(n int) {
		waitUntil(t, ctx, 20*time.Millisecond, fmt.Sprintf("%d ticks", n), func(ctx context.Context) (bool, error) {
			got, err := ticks(ctx)
			return len(got) >= n, err
		})
	}

	waitTicks(2)
	for k := range 3 {
		slot := k % 2
		before, err := ticks(ctx)
		require.NoError(t, err)
		procs[slot].kill(t)
		s := spec
		s.Name = fmt.Sprintf("runner%d", slot)
		procs[slot] = startRunnerProcess(t, s)
		waitTicks(len(before) + 2)
	}
	require.NoError(t, obs.PauseSchedule(ctx, "ticker"))
	// Pausing is seen by a firing transaction that begins after it; one
	// that began before may still commit its tick.
	waitUntil(t, ctx, 20*time.Millisecond, "every run of the schedule to end", func(ctx context.Context) (bool, error) {
		runs, err := obs.List(ctx, &cloacina.ListOpts{Workflow: "ticker", Limit: 100000})
		if err != nil {
			return false, err
		}
		for _, r := range runs {
			if !r.Status.Terminal() {
				return false, nil
			}
		}
		return true, nil
	})
	for _, proc := range procs {
		proc.stop(t)
	}

	got, err := ticks(ctx)
	require.NoError(t, err)
	slices.Reverse(got)
	runs, err := obs.List(ctx, &cloacina.ListOpts{Workflow: "ticker", Limit: 100000})
	require.NoError(t, err)
	require.Len(t, runs, len(got), "one run per tick, and none without")
	status := map[string]cloacina.PipelineStatus{}
	for _, r := range runs {
		status[r.ID.String()] = r.Status
	}
	for i, tk := range got {
		if i > 0 {
			require.Equal(t, got[i-1].At.Add(time.Second), tk.At, "ticks %s and %s: none lost, none twice", got[i-1].At, tk.At)
		}
		require.Equal(t, cloacina.PipelineCompleted, status[tk.RunID.String()], "run of tick %s", tk.At)
	}
	report(t, fmt.Sprintf("backend=%s: %d ticks from %s to %s across 3 kills, each fired once and completed",
		mustBackend(url), len(got), got[0].At.Format(time.TimeOnly), got[len(got)-1].At.Format(time.TimeOnly)))
}

func mustBackend(url string) string {
	u, err := cloacina.ParseDatabaseURL(url)
	if err != nil {
		return "?"
	}
	return u.Backend
}
