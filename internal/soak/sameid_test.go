package soak

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// TestKill9RestartUnderTheSameID kills a runner process that has a fixed
// RunnerID (as a StatefulSet pod has) with SIGKILL while it holds claims,
// and starts it again at once under the same id, three times. The runner
// timeout is an hour, so no sweep recovers anything during the test: the
// new process must reset the old claims itself when it starts, and every
// run must end with every transition recorded once.
func TestKill9RestartUnderTheSameID(t *testing.T) {
	for _, b := range []struct {
		name string
		url  func(testing.TB) string
	}{{"postgres", testdb.PostgresSchemaURL}, {"sqlite", testdb.SQLiteURL}} {
		t.Run(b.name, func(t *testing.T) { restartUnderSameID(t, b.name, b.url(t)) })
	}
}

func restartUnderSameID(t *testing.T, backend, url string) {
	ctx := testContext(t, 3*time.Minute)
	b := behaviour{MaxWork: 20 * time.Millisecond}
	submitter, st := openSubmitter(t, ctx, url, b)

	const id, runs, kills = "pod-0", 300, 3
	spec := runnerSpec{URL: url, Name: "pod", RunnerID: id, Behaviour: b, MaxConcurrent: 8, Poll: 50 * time.Millisecond,
		Heartbeat: 100 * time.Millisecond, RunnerTimeout: time.Hour}
	proc := startRunnerProcess(t, spec)
	require.Equal(t, id, proc.runnerID)

	// Runs keep coming until the kills are done, so the runner always has
	// work to be killed in, however slow the machine.
	var killsDone atomic.Bool
	submitted := make(chan int, 1)
	submitDone := make(chan error, 1)
	go func() {
		n, _, err := submitRuns(ctx, submitter, st, 32, false, func(n int) bool {
			return n >= 20*runs || (n >= runs && killsDone.Load())
		})
		submitted <- n
		submitDone <- err
	}()
	var killedAt []time.Time
	for range kills {
		waitUntil(t, ctx, 5*time.Millisecond, "the runner to hold a task", func(ctx context.Context) (bool, error) {
			n, err := st.runningTasks(ctx, id)
			return n > 0, err
		})
		killedAt = append(killedAt, proc.kill(t))
		proc = startRunnerProcess(t, spec)
	}
	killsDone.Store(true)
	total := <-submitted
	require.NoError(t, <-submitDone)
	waitUntil(t, ctx, 20*time.Millisecond, "every run to end", func(ctx context.Context) (bool, error) {
		n, err := st.unfinishedRuns(ctx)
		return n == 0, err
	})
	proc.stop(t)

	snap := takeSnapshot(t, ctx, submitter, st)
	require.Len(t, snap.runs, total)
	checkInvariants(t, snap, checkOpts{allCompleted: true})

	// Each reset is the restarted process's, with its reason, after a kill;
	// the task ran again after it. Time from the kill before the reset to
	// the task running again:
	var resumed []time.Duration
	var v violations
	for task, events := range snap.byTask {
		var reset *time.Time
		for _, e := range events {
			switch e.Type {
			case cloacina.EventTaskReset:
				d, err := e.Payload()
				if err != nil || !strings.Contains(d.Reason, "restarted") {
					v.add("task %s reset for another reason: %v %v", task, d, err)
				}
				at := e.CreatedAt
				reset = &at
			case cloacina.EventTaskStarted:
				if reset != nil {
					resumed = append(resumed, e.CreatedAt.Sub(lastBefore(killedAt, *reset)))
					reset = nil
				}
			}
		}
		if reset != nil {
			v.add("task %s was reset and never started again: %s", task, eventTrail(events))
		}
	}
	v.fail(t, "restart under the same id")
	require.NotEmpty(t, resumed, "no kill left a claim for the restart to reset")
	report(t,
		fmt.Sprintf("restart under the same id (%s): %d runs, %d kills, runner timeout %s; %d claims reset by the restarted process",
			backend, total, kills, spec.RunnerTimeout, len(resumed)),
		fmt.Sprintf("kill -> task running again, per task: %s", statsOf(resumed)))
}

// lastBefore returns the latest instant of ts not after at.
func lastBefore(ts []time.Time, at time.Time) time.Time {
	var last time.Time
	for _, t := range ts {
		if !t.After(at) {
			last = t
		}
	}
	return last
}
