package cloacina

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// appTxInTask is a task that starts a child run in the application's own
// transaction (ExecuteTx) and keeps that transaction open until release.
func appTxInTask(r **Runner, opened chan<- struct{}, release <-chan struct{}) TaskFunc {
	return func(ctx context.Context, _ *Context) error {
		tx, err := (*r).Driver().(*postgres.Driver).Pool().Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(context.Background())
		if _, err := (*r).ExecuteTx(ctx, tx, "child", nil); err != nil {
			return err
		}
		opened <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return tx.Commit(ctx)
	}
}

// A task's open application transaction that started a child run holds
// the parent run only against a Cancel. Its lock used to be FOR UPDATE,
// which every completion, claim and start touching the parent waited for:
// the runner's one completer (so every run of the runner) and the
// process's grouped starts stalled until the application committed, and
// a task starting a second child before committing waited for itself.
func TestOpenChildStartHoldsBackOnlyCancel(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		b    func(r *Runner) TaskFunc // task b of the parent, after a's transaction is open
	}{
		{"sibling completes", func(*Runner) TaskFunc { return ok }},
		{"sibling starts a child", func(r *Runner) TaskFunc {
			return func(ctx context.Context, _ *Context) error { _, err := r.ExecuteAsync(ctx, "child", nil); return err }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			opened, release := make(chan struct{}, 1), make(chan struct{})
			defer close(release)
			var r *Runner
			bGo := make(chan struct{})
			bDone := make(chan struct{})
			parent := MustWorkflow("parent",
				Task{Name: "a", Run: appTxInTask(&r, opened, release)},
				Task{Name: "b", Run: func(ctx context.Context, c *Context) error {
					<-bGo
					defer close(bDone)
					return tc.b(r)(ctx, c)
				}})
			child := MustWorkflow("child", Task{Name: "c", Run: ok})
			other := MustWorkflow("other", Task{Name: "o", Run: ok})
			r = startRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{parent, child, other}})
			_, err := r.ExecuteAsync(ctx, "parent", nil)
			require.NoError(t, err)
			waitFor(t, opened, "task a's application transaction")
			close(bGo)
			waitFor(t, bDone, "task b")

			short, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			exec, err := r.ExecuteAsync(short, "other", nil)
			require.NoError(t, err, "a start behind the parent's lock")
			res, err := exec.Wait(short)
			require.NoError(t, err, "a run whose completion waits behind the parent's lock")
			require.Equal(t, PipelineCompleted, res.Status)
		})
	}
}

// A task that started a child in its open transaction can start another
// before it commits: the second start used to wait for the parent's row,
// which the task's own transaction held, until the task's context ended.
func TestTaskStartsTwoChildrenBeforeCommitting(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var r *Runner
	parent := MustWorkflow("parent", Task{Name: "a", Run: func(ctx context.Context, _ *Context) error {
		tx, err := r.Driver().(*postgres.Driver).Pool().Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(context.Background())
		if _, err := r.ExecuteTx(ctx, tx, "child", nil); err != nil {
			return err
		}
		short, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := r.ExecuteAsync(short, "child", nil); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}})
	child := MustWorkflow("child", Task{Name: "c", Run: ok})
	r = startRunner(t, testdb.PostgresSchemaURL(t), &Config{Workflows: []*Workflow{parent, child}})
	res, err := r.Execute(ctx, "parent", nil)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status, "%v", res.Err())
	kids, err := r.List(ctx, &ListOpts{ParentRunID: &res.ID})
	require.NoError(t, err)
	require.Len(t, kids, 2)
}
