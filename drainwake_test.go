package cloacina

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// gateDriver holds every transaction that records a resumed run, just
// before its changes are applied (after addWakeups decided who hears of
// the work, before the commit), until gate is closed.
type gateDriver struct {
	driver.Driver
	reached chan struct{}
	gate    chan struct{}
}

func (d *gateDriver) Begin(ctx context.Context) (driver.Tx, error) {
	tx, err := d.Driver.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &gateTx{Tx: tx, d: d}, nil
}

type gateTx struct {
	driver.Tx
	d *gateDriver
}

func (tx *gateTx) ChangeSetApply(ctx context.Context, cs *driver.ChangeSet) error {
	for _, e := range cs.Events {
		if e.Type == EventPipelineResumed {
			close(tx.d.reached)
			<-tx.d.gate
		}
	}
	return tx.Tx.ChangeSetApply(ctx, cs)
}

// Work made ready by a transaction of runner A that began before A's Stop
// and commits once A is draining: A counted on its own free slots for the
// work (no NOTIFY) when it was not yet draining, and its draining claimer
// does not claim it. Runner B, idle with its poll an hour away, is woken
// for it; it used to wait for B's next poll.
func TestWorkCommittedAsStopBeginsWakesOtherRunners(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("w", Task{Name: "a", Run: ok})
		a := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, PollInterval: time.Hour})
		b := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, PollInterval: time.Hour})
		gd := &gateDriver{Driver: a.drv, reached: make(chan struct{}), gate: make(chan struct{})}
		a.drv = gd
		a.claimsPaused.Store(true)
		b.claimsPaused.Store(true)
		require.NoError(t, a.Start(ctx))
		require.NoError(t, b.Start(ctx))
		exec, err := a.ExecuteAsync(ctx, "w", nil)
		require.NoError(t, err)
		require.NoError(t, a.Pause(ctx, exec.ID()))
		a.claimsPaused.Store(false)
		b.claimsPaused.Store(false)
		claimedByB := onEvent(b, eventOf(EventTaskClaimed))

		resumed := make(chan error, 1)
		go func() { resumed <- a.Resume(ctx, exec.ID()) }()
		waitFor(t, gd.reached, "the resume to reach its commit")
		svc := a.services()
		stopped := make(chan error, 1)
		go func() { stopped <- a.Stop(ctx) }()
		require.Eventually(t, svc.draining.Load, testTimeout, time.Millisecond, "Stop to begin")
		close(gd.gate)
		require.NoError(t, waitFor(t, resumed, "Resume to return"))
		require.NoError(t, waitFor(t, stopped, "Stop to return"))
		waitFor(t, claimedByB, "runner B to be woken and claim the resumed run's task")
		final, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, final.Status)
	})
}
