package soak

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
)

// TestDatabaseRestartPostgres restarts the PostgreSQL server under running
// workflows — once in "fast" mode (open transactions rolled back, clients
// disconnected) and once in "immediate" mode (no shutdown checkpoint; the
// server recovers from its WAL) — on a private cluster, since the shared
// one serves other tests. Two runners in this process work the runs
// throughout; every run must complete, with every transition recorded
// exactly once.
func TestDatabaseRestartPostgres(t *testing.T) {
	t.Parallel()
	cluster := newPrivateCluster(t)
	ctx := testContext(t, 4*time.Minute)
	url := cluster.url("restart")
	// No final failures: every run must complete.
	b := behaviour{FailProb: 0.1, MaxWork: 20 * time.Millisecond}
	submitter, st := openSubmitter(t, ctx, url, b)

	var runners []*cloacina.Runner
	logs := &tailBuffer{max: 64 << 10}
	for i := range 2 {
		spec := runnerSpec{URL: url, Name: fmt.Sprintf("runner%d", i), Behaviour: b, MaxConcurrent: 8,
			Poll: 100 * time.Millisecond, Heartbeat: 100 * time.Millisecond, RunnerTimeout: time.Second}
		r, closeDB, err := openRunner(ctx, spec, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})))
		require.NoError(t, err)
		t.Cleanup(closeDB)
		t.Cleanup(func() { require.NoError(t, r.Close()) })
		require.NoError(t, r.Start(ctx))
		runners = append(runners, r)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("runner log:\n%s", logs)
		}
	})

	// Runs are submitted throughout, restarts included: a submission
	// that fails while the server is away is retried.
	var stopSubmitting atomic.Bool
	submitDone := make(chan struct{})
	var submitted, failedSubmits int
	var submitErr error
	go func() {
		defer close(submitDone)
		submitted, failedSubmits, submitErr = submitRuns(ctx, submitter, st, 40, true, func(int) bool { return stopSubmitting.Load() })
	}()
	t.Cleanup(func() { stopSubmitting.Store(true); <-submitDone })

	var lines []string
	waitEnded := func(target int) {
		waitUntil(t, ctx, 10*time.Millisecond, fmt.Sprintf("%d runs to end", target), func(ctx context.Context) (bool, error) {
			total, unfinished, err := st.runCounts(ctx)
			return total-unfinished >= target, err
		})
	}
	for i, mode := range []string{"fast", "immediate"} {
		waitEnded((i + 1) * 150)
		total, unfinished, err := st.runCounts(ctx)
		require.NoError(t, err)
		running, err := st.runningTasks(ctx, "")
		require.NoError(t, err)
		away := cluster.restart(t, mode)
		lines = append(lines, fmt.Sprintf("restart %d (%s): server away %s; %d runs ended, %d unfinished and %d tasks running just before",
			i+1, mode, away.Round(time.Millisecond), total-unfinished, unfinished, running))
	}
	report(t, lines...)
	// The runners carry on after the restarts.
	waitEnded(450)
	stopSubmitting.Store(true)
	<-submitDone
	require.NoError(t, submitErr)
	waitUntil(t, ctx, 50*time.Millisecond, "every run to end", func(ctx context.Context) (bool, error) {
		n, err := st.unfinishedRuns(ctx)
		return n == 0, err
	})
	listed, err := submitter.Runners(ctx)
	require.NoError(t, err)
	ids := map[string]bool{}
	for _, info := range listed {
		ids[info.ID] = true
	}
	for _, r := range runners {
		require.True(t, ids[r.ID()], "runner %s is not registered after the restarts", r.ID())
		require.NoError(t, r.Close())
	}

	snap := takeSnapshot(t, ctx, submitter, st)
	// A submission whose commit succeeded but whose reply was lost
	// reports an error, and the retry creates another run.
	require.GreaterOrEqual(t, len(snap.runs), submitted)
	checkInvariants(t, snap, checkOpts{allCompleted: true})
	_, resets := recoveries(t, snap, nil)
	report(t,
		fmt.Sprintf("submissions failed while the server was away (retried): %d", failedSubmits),
		fmt.Sprintf("runs=%d all completed, task executions=%d, events=%d, tasks reset because a live runner's heartbeat was late: %d",
			len(snap.runs), len(snap.execs), len(snap.events), resets))
}
