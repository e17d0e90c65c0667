package cloacina

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// splitLockTx locks the first of the runs of a PipelineLock that takes
// both of its runs, then waits for the test before it takes the rest: the
// moment, inside one statement, between a row lock that gives the
// transaction its id and the next row lock, which another transaction
// holds.
type splitLockTx struct {
	driver.Tx
	runs    [2]uuid.UUID
	once    *sync.Once
	locked  chan struct{}
	proceed chan struct{}
}

func (tx *splitLockTx) PipelineLock(ctx context.Context, ids []uuid.UUID) ([]*driver.Pipeline, error) {
	if len(ids) == 2 && slices.Contains(ids, tx.runs[0]) && slices.Contains(ids, tx.runs[1]) {
		first := slices.MinFunc(ids, func(a, b uuid.UUID) int { return slices.Compare(a[:], b[:]) })
		if _, err := tx.Tx.PipelineLock(ctx, []uuid.UUID{first}); err != nil {
			return nil, err
		}
		tx.once.Do(func() {
			close(tx.locked)
			<-tx.proceed
		})
	}
	return tx.Tx.PipelineLock(ctx, ids)
}

// On PostgreSQL a transaction that waits for a run another one changes
// and commits meanwhile records its events after that one's: following
// the log returns them in that order, so the statuses a follower rebuilds
// are the stored ones. Here Cancel locks a parent run, Pause changes the
// child and commits, then Cancel cancels the child: a follower got the
// child's pipeline_cancelled before its pipeline_paused, and rebuilt it
// Paused.
func TestFollowingKeepsTheOrderOfConflictingTransactions(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	childStarted := make(chan uuid.UUID, 1)
	var r *Runner
	block := func(ctx context.Context, _ *Context) error {
		<-ctx.Done()
		return ctx.Err()
	}
	child := MustWorkflow("child", Task{Name: "c", Run: block})
	parent := MustWorkflow("parent", Task{Name: "p", Run: func(ctx context.Context, _ *Context) error {
		exec, err := r.ExecuteAsync(ctx, "child", nil)
		if err != nil {
			return err
		}
		childStarted <- exec.ID()
		<-ctx.Done()
		return ctx.Err()
	}})
	url := testdb.PostgresSchemaURL(t)
	r = startRunner(t, url, &Config{Workflows: []*Workflow{parent, child}})
	control := openRunner(t, url, nil)
	childRunning := onEvent(r, eventOf(EventTaskStarted))

	exec, err := r.ExecuteAsync(ctx, "parent", nil)
	require.NoError(t, err)
	childID := waitFor(t, childStarted, "the child run to start")
	for range 2 {
		waitFor(t, childRunning, "the parent's and the child's task to start")
	}

	split := &splitLockTx{runs: [2]uuid.UUID{exec.ID(), childID}, once: &sync.Once{}, locked: make(chan struct{}),
		proceed: make(chan struct{})}
	canceller := openRunner(t, url, nil)
	canceller.drv = hookTxs(canceller.drv, func(tx driver.Tx) driver.Tx {
		s := *split
		s.Tx = tx
		return &s
	})
	cancelled := make(chan error, 1)
	go func() { cancelled <- canceller.Cancel(ctx, exec.ID()) }()
	waitFor(t, split.locked, "Cancel to lock the first run")
	require.NoError(t, control.Pause(ctx, childID)) // committed
	close(split.proceed)
	require.NoError(t, waitFor(t, cancelled, "Cancel to return"))

	stored, err := control.Get(ctx, childID)
	require.NoError(t, err)
	require.Equal(t, PipelineCancelled, stored.Status)
	// Parent and child are cancelled now; nothing else writes: the whole
	// log, as a follower gets it once every transaction before has ended.
	all, err := control.Events(ctx, nil)
	require.NoError(t, err)
	followed := followAll(t, control, 0, func(got []*Event) bool { return len(got) >= len(all) })
	var runEvents []EventType
	for _, e := range followed {
		if e.PipelineID == childID && e.TaskID == nil {
			runEvents = append(runEvents, e.Type)
		}
	}
	require.Equal(t, []EventType{EventPipelineStarted, EventPipelinePaused, EventPipelineCancelled}, runEvents,
		"the child's run events, followed, in the order they committed")
	require.Equal(t, PipelineCancelled, Replay(followed).Runs[childID], "a follower rebuilds the stored status")
}
