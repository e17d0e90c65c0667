package soak

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// TestClaimCommitFailureRunsTaskOnce pins what the database restart test
// caught: a claim transaction whose commit fails is retried, and a task
// the failed attempt had claimed (and that the rollback made Ready again)
// can be claimed again by the retry.
//
// The bug it pinned (fixed in services.go, claim): the failed attempt's
// tasks were kept as "uncertain", and verifyClaims found their claims held
// — because the retry had claimed them again — so they were returned
// twice, and each ran twice at once under the same claim; with both
// results in one completion batch, one attempt got two terminal events.
// claim now verifies only tasks the final attempt did not claim, and
// complete treats a second result for one task as lost.
func TestClaimCommitFailureRunsTaskOnce(t *testing.T) {
	t.Parallel()
	open := map[string]func(t *testing.T) driver.Driver{
		"sqlite": func(t *testing.T) driver.Driver {
			drv, err := sqlite.Open(testdb.SQLitePath(t))
			require.NoError(t, err)
			return drv
		},
		"postgres": func(t *testing.T) driver.Driver {
			drv, err := postgres.Open(t.Context(), testdb.PostgresURL(), &postgres.Opts{Schema: testdb.NewSchema(t)})
			require.NoError(t, err)
			return drv
		},
	}
	for name, openDriver := range open {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, time.Minute)
			drv := openDriver(t)
			t.Cleanup(func() { drv.Close() })
			fault := &claimCommitFault{Driver: drv}
			var executions atomic.Int32
			wf := cloacina.MustWorkflow("claim_retry", cloacina.Task{Name: "once", Run: func(context.Context, *cloacina.Context) error {
				executions.Add(1)
				return nil
			}})
			r, err := cloacina.NewRunner(ctx, fault, &cloacina.Config{Workflows: []*cloacina.Workflow{wf},
				PollInterval: 50 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			require.NoError(t, err)
			t.Cleanup(func() { r.Close() })
			run, err := r.ExecuteAsync(ctx, "claim_retry", nil)
			require.NoError(t, err)

			fault.armed.Store(true)
			require.NoError(t, r.Start(ctx))
			res, err := run.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, cloacina.PipelineCompleted, res.Status)
			// Stop waits for every task and records every result.
			require.NoError(t, r.Stop(ctx))
			require.EqualValues(t, 1, fault.injected.Load(), "the claim commit failure was not injected")

			completed, err := r.Events(ctx, &cloacina.EventQuery{RunID: ptr(run.ID()), Types: []cloacina.EventType{cloacina.EventTaskCompleted}})
			require.NoError(t, err)
			// Both results reach the completer; whether they land in one
			// batch (two task_completed) or two (the second fenced out)
			// is timing, so check both counts at once.
			require.True(t, executions.Load() == 1 && len(completed) == 1,
				"a task claimed once (attempt 1) ran %d times and has %d task_completed events, want 1 and 1",
				executions.Load(), len(completed))
		})
	}
}

func ptr[T any](v T) *T { return &v }

// claimCommitFault wraps a backend so that, once armed, the next commit
// of a transaction that claimed tasks fails as a lost connection would
// before the COMMIT reached the server: rolled back, reported transient.
type claimCommitFault struct {
	driver.Driver
	armed    atomic.Bool
	injected atomic.Int32
}

func (d *claimCommitFault) Begin(ctx context.Context) (driver.Tx, error) {
	tx, err := d.Driver.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &claimCommitFaultTx{Tx: tx, d: d}, nil
}

type claimCommitFaultTx struct {
	driver.Tx
	d       *claimCommitFault
	claimed bool
}

func (tx *claimCommitFaultTx) TaskClaim(ctx context.Context, p *driver.TaskClaimParams) (*driver.TaskClaimResult, error) {
	res, err := tx.Tx.TaskClaim(ctx, p)
	tx.claimed = tx.claimed || (res != nil && len(res.Tasks) > 0)
	return res, err
}

func (tx *claimCommitFaultTx) Commit(ctx context.Context) error {
	if tx.claimed && tx.d.armed.CompareAndSwap(true, false) {
		if err := tx.Tx.Rollback(ctx); err != nil {
			return err
		}
		tx.d.injected.Add(1)
		return fmt.Errorf("%w: injected: connection lost before the commit reached the server", driver.ErrTransient)
	}
	return tx.Tx.Commit(ctx)
}
