package cloacina

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// gateDriver holds every transaction that records a resumed run, just
// before its changes are applied (after addWakeups decided who hears of
// the work, before the commit), until gate is closed.
type gateDriver struct {
	reached chan struct{}
	gate    chan struct{}
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
		gd := &gateDriver{reached: make(chan struct{}), gate: make(chan struct{})}
		a.drv = hookTxs(a.drv, func(tx driver.Tx) driver.Tx { return &gateTx{Tx: tx, d: gd} })
		exec, err := a.ExecuteAsync(ctx, "w", nil)
		require.NoError(t, err)
		require.NoError(t, a.Pause(ctx, exec.ID()))
		// Both claimers idle before the resume: a claim round in flight
		// would wait (on SQLite) for the resume held at its gate, and Stop
		// for that round, so Stop could not begin.
		waitStartedIdle(t, a)
		waitStartedIdle(t, b)
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

// The same as TestWorkCommittedAsStopBeginsWakesOtherRunners, when the
// slots counted on reach a draining claimer that claims for a task
// waiting for a child run: that claim takes only the child's tasks, so
// other runners must still hear of the work.
func TestWorkCommittedAsStopBeginsWakesOthersWhileATaskAwaitsAChild(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := testdb.PostgresSchemaURL(t)
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce)
	childStarted := make(chan struct{}, 1)
	wf := MustWorkflow("w", Task{Name: "a", Run: ok})
	child := MustWorkflow("child", Task{Name: "c", Run: func(ctx context.Context, _ *Context) error {
		childStarted <- struct{}{}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}})
	var a *Runner
	parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
		_, err := a.Execute(ctx, "child", nil)
		return err
	}})
	a = openRunner(t, url, &Config{Workflows: []*Workflow{wf, child, parent}, PollInterval: time.Hour})
	b := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, PollInterval: time.Hour})
	b.claimsPaused.Store(true)
	require.NoError(t, a.Start(ctx))
	require.NoError(t, b.Start(ctx))
	_, err := a.ExecuteAsync(ctx, "parent", nil)
	require.NoError(t, err)
	waitFor(t, childStarted, "the child task to start on A")
	svc := a.services()
	require.Eventually(t, func() bool {
		svc.awaitMu.Lock()
		defer svc.awaitMu.Unlock()
		return len(svc.awaited) == 1
	}, testTimeout, time.Millisecond, "the parent to wait for its child")

	a.claimsPaused.Store(true)
	exec, err := a.ExecuteAsync(ctx, "w", nil)
	require.NoError(t, err)
	require.NoError(t, a.Pause(ctx, exec.ID()))
	// A's claimer is held where it waits for work, from before the resume
	// until Stop has begun: the resume counts on A's slot, and no round of
	// the claimer (one woken earlier, say) takes the work meanwhile.
	letGo := holdClaimer(t, a)
	a.claimsPaused.Store(false)
	b.claimsPaused.Store(false)
	claimedByB := onEvent(b, eventOf(EventTaskClaimed))
	require.NoError(t, a.Resume(ctx, exec.ID()))
	require.Equal(t, int64(1), svc.preheld.Load(), "the resume's work is counted on A's slot")

	stopped := make(chan error, 1)
	go func() { stopped <- a.Stop(ctx) }()
	require.Eventually(t, svc.draining.Load, testTimeout, time.Millisecond, "Stop to begin")
	letGo()
	waitFor(t, claimedByB, "runner B to be woken and claim the resumed run's task")
	releaseOnce()
	require.NoError(t, waitFor(t, stopped, "Stop"))
}
