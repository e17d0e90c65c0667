package cloacina

import (
	"context"
	"database/sql"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// opener opens a runner one of the three ways a user can: Open (the runner
// owns the database) or OpenDB / OpenPool (the application does, and
// Close leaves it open).
type opener struct {
	name string
	open func(t *testing.T, cfg *Config) *Runner
}

// openers lists every way to open a runner on both backends: Open on
// SQLite and PostgreSQL, OpenDB on SQLite, OpenPool on PostgreSQL. Each
// opens on a fresh database; the caller closes the runner.
func openers() []opener {
	return []opener{
		{"sqlite/Open", func(t *testing.T, cfg *Config) *Runner {
			r, err := Open(testContext(t), testdb.SQLiteURL(t), cfg)
			require.NoError(t, err)
			return r
		}},
		{"sqlite/OpenDB", func(t *testing.T, cfg *Config) *Runner {
			db, err := sql.Open("sqlite", sqlite.DSN(testdb.SQLitePath(t)))
			require.NoError(t, err)
			t.Cleanup(func() { db.Close() })
			r, err := OpenDB(testContext(t), db, cfg)
			require.NoError(t, err)
			return r
		}},
		{"postgres/Open", func(t *testing.T, cfg *Config) *Runner {
			r, err := Open(testContext(t), testdb.PostgresSchemaURL(t), cfg)
			require.NoError(t, err)
			return r
		}},
		{"postgres/OpenPool", func(t *testing.T, cfg *Config) *Runner {
			c := *cfg
			c.Schema = testdb.NewSchema(t)
			pool, err := pgxpool.New(testContext(t), testdb.PostgresURL())
			require.NoError(t, err)
			t.Cleanup(pool.Close)
			r, err := OpenPool(testContext(t), pool, &c)
			require.NoError(t, err)
			return r
		}},
	}
}

// closedTarget is what the calls on a closed runner aim at: a run and a
// task that exist, and a handle on that run.
type closedTarget struct {
	wf     *Workflow
	exec   *Execution
	taskID uuid.UUID
}

// closedCalls lists every method of Runner and Execution that reaches the
// database (or starts work), each as a call on a closed runner.
var closedCalls = map[string]func(ctx context.Context, r *Runner, x *closedTarget) error{
	"Runner.Start":    func(ctx context.Context, r *Runner, _ *closedTarget) error { return r.Start(ctx) },
	"Runner.Register": func(_ context.Context, r *Runner, x *closedTarget) error { return r.Register(x.wf) },
	"Runner.Execute": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.Execute(ctx, "w", nil)
		return err
	},
	"Runner.ExecuteAsync": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.ExecuteAsync(ctx, "w", nil)
		return err
	},
	"Runner.ExecuteTx": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		// No transaction: a closed runner refuses before looking at it.
		_, err := r.ExecuteTx(ctx, nil, "w", nil)
		return err
	},
	"Runner.Get": func(ctx context.Context, r *Runner, x *closedTarget) error {
		_, err := r.Get(ctx, x.exec.ID())
		return err
	},
	"Runner.List": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.List(ctx, nil)
		return err
	},
	"Runner.Runners": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.Runners(ctx)
		return err
	},
	"Runner.Events": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.Events(ctx, nil)
		return err
	},
	"Runner.RunEvents": func(ctx context.Context, r *Runner, x *closedTarget) error {
		_, err := r.RunEvents(ctx, x.exec.ID())
		return err
	},
	"Runner.TaskEvents": func(ctx context.Context, r *Runner, x *closedTarget) error {
		_, err := r.TaskEvents(ctx, x.taskID)
		return err
	},
	"Runner.RecentEvents": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.RecentEvents(ctx, 10)
		return err
	},
	"Runner.CountRunEvents": func(ctx context.Context, r *Runner, x *closedTarget) error {
		_, err := r.CountRunEvents(ctx, x.exec.ID())
		return err
	},
	"Runner.CountEventsBefore": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.CountEventsBefore(ctx, time.Now())
		return err
	},
	"Runner.DeleteEventsBefore": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.DeleteEventsBefore(ctx, time.Now(), nil)
		return err
	},
	"Runner.Cancel": func(ctx context.Context, r *Runner, x *closedTarget) error { return r.Cancel(ctx, x.exec.ID()) },
	"Runner.Pause":  func(ctx context.Context, r *Runner, x *closedTarget) error { return r.Pause(ctx, x.exec.ID()) },
	"Runner.Resume": func(ctx context.Context, r *Runner, x *closedTarget) error { return r.Resume(ctx, x.exec.ID()) },
	"Execution.Wait": func(ctx context.Context, _ *Runner, x *closedTarget) error {
		_, err := x.exec.Wait(ctx)
		return err
	},
	"Execution.Status": func(ctx context.Context, _ *Runner, x *closedTarget) error {
		_, err := x.exec.Status(ctx)
		return err
	},
	"Execution.Cancel": func(ctx context.Context, _ *Runner, x *closedTarget) error { return x.exec.Cancel(ctx) },
}

// noIOMethods are the methods that keep working on a closed runner: they
// read nothing from the database. Closing again and stopping a closed
// (hence stopped) runner do nothing.
var noIOMethods = []string{"Runner.ID", "Runner.Driver", "Runner.IsLeader", "Runner.Close", "Runner.Stop", "Execution.ID"}

// Every method is either in closedCalls or in noIOMethods, so a method
// added later cannot be forgotten.
func TestClosedCallsCoverEveryMethod(t *testing.T) {
	t.Parallel()
	var missing []string
	for _, typ := range []reflect.Type{reflect.TypeFor[*Runner](), reflect.TypeFor[*Execution]()} {
		for m := range typ.Methods() {
			name := typ.Elem().Name() + "." + m.Name
			if _, ok := closedCalls[name]; !ok && !slices.Contains(noIOMethods, name) {
				missing = append(missing, name)
			}
		}
	}
	require.Empty(t, missing, "add these methods to closedCalls (or, if they do no I/O, to noIOMethods)")
}

// Every call on a closed runner fails with ErrRunnerClosed, whether the
// runner owned its database (Open: the driver's "closed pool" or
// "database is closed" says less) or not (OpenDB, OpenPool: the database
// is still open and would have answered).
func TestClosedRunnerRefusesEveryCall(t *testing.T) {
	t.Parallel()
	for _, o := range openers() {
		t.Run(o.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			wf := MustWorkflow("w", Task{Name: "a", Run: ok})
			r := o.open(t, &Config{Workflows: []*Workflow{wf}, PollInterval: 50 * time.Millisecond, Logger: quietLogger()})
			require.NoError(t, r.Start(ctx))
			exec, err := r.ExecuteAsync(ctx, "w", nil)
			require.NoError(t, err)
			res, err := exec.Wait(ctx)
			require.NoError(t, err)
			require.Equal(t, PipelineCompleted, res.Status)
			x := &closedTarget{wf: wf, exec: exec, taskID: res.Tasks[0].ID}
			require.NoError(t, r.Close())

			for _, name := range slices.Sorted(maps.Keys(closedCalls)) {
				t.Run(name, func(t *testing.T) {
					err := closedCalls[name](ctx, r, x)
					require.ErrorIs(t, err, ErrRunnerClosed)
				})
			}
			// The accessors without I/O still answer.
			require.NotEmpty(t, r.ID())
			require.NotNil(t, r.Driver())
			require.False(t, r.IsLeader())
			require.Equal(t, res.ID, exec.ID())
			require.NoError(t, r.Stop(ctx), "a closed runner is stopped")
			require.NoError(t, r.Close(), "closing again does nothing")
		})
	}
}

// A Wait in progress when its runner closes returns ErrRunnerClosed: on a
// database the application still holds open it would otherwise poll a run
// that nothing will run any more until its ctx ends.
func TestCloseEndsWaitInProgress(t *testing.T) {
	t.Parallel()
	for _, o := range openers() {
		t.Run(o.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			wf := MustWorkflow("w", Task{Name: "a", Run: ok})
			// Not started: the run stays Pending.
			r := o.open(t, &Config{Workflows: []*Workflow{wf}, Logger: quietLogger()})
			exec, err := r.ExecuteAsync(ctx, "w", nil)
			require.NoError(t, err)
			done := make(chan error, 1)
			go func() {
				_, err := exec.Wait(ctx)
				done <- err
			}()
			require.Eventually(t, func() bool {
				r.waitMu.Lock()
				defer r.waitMu.Unlock()
				return len(r.waiters[exec.ID()]) == 1
			}, testTimeout, time.Millisecond, "Wait never subscribed")
			require.NoError(t, r.Close())
			require.ErrorIs(t, waitFor(t, done, "Wait to return after Close"), ErrRunnerClosed)
		})
	}
}
