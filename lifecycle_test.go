package cloacina

import (
	"context"
	"database/sql"
	"errors"
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
	"Runner.Backlog": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.Backlog(ctx)
		return err
	},
	"Runner.GetTask": func(ctx context.Context, r *Runner, x *closedTarget) error {
		_, err := r.GetTask(ctx, x.taskID)
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
	"Runner.Now": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.Now(ctx)
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
	"Runner.StreamEvents": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		for _, err := range r.StreamEvents(ctx, nil, nil) {
			return err
		}
		return errors.New("the stream ended without a word")
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
		_, err := r.CountEventsBefore(ctx, time.Now(), nil)
		return err
	},
	"Runner.DeleteEventsBefore": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.DeleteEventsBefore(ctx, time.Now(), nil)
		return err
	},
	"Runner.CountRunsBefore": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.CountRunsBefore(ctx, time.Now(), nil)
		return err
	},
	"Runner.DeleteRunsBefore": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.DeleteRunsBefore(ctx, time.Now(), nil)
		return err
	},
	"Runner.Schedules": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.Schedules(ctx)
		return err
	},
	"Runner.ScheduleTicks": func(ctx context.Context, r *Runner, _ *closedTarget) error {
		_, err := r.ScheduleTicks(ctx, "s", 10)
		return err
	},
	"Runner.PauseSchedule":  func(ctx context.Context, r *Runner, _ *closedTarget) error { return r.PauseSchedule(ctx, "s") },
	"Runner.ResumeSchedule": func(ctx context.Context, r *Runner, _ *closedTarget) error { return r.ResumeSchedule(ctx, "s") },
	"Runner.DeleteSchedule": func(ctx context.Context, r *Runner, _ *closedTarget) error { return r.DeleteSchedule(ctx, "s") },
	"Runner.Cancel":         func(ctx context.Context, r *Runner, x *closedTarget) error { return r.Cancel(ctx, x.exec.ID()) },
	"Runner.Pause":          func(ctx context.Context, r *Runner, x *closedTarget) error { return r.Pause(ctx, x.exec.ID()) },
	"Runner.Resume":         func(ctx context.Context, r *Runner, x *closedTarget) error { return r.Resume(ctx, x.exec.ID()) },
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
var noIOMethods = []string{"Runner.ID", "Runner.Driver", "Runner.IsLeader", "Runner.Close", "Runner.Stop", "Execution.ID", "Runner.Execution"}

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

// A workflow registered after Start is claimed at once: its tasks queued
// before do not wait for the next poll, which here is an hour away.
func TestRegisterAfterStartClaimsAtOnce(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		first := MustWorkflow("first", Task{Name: "a", Run: ok})
		late := MustWorkflow("late", Task{Name: "a", Run: setKey("ran", true)})
		worker := openRunner(t, url, &Config{Workflows: []*Workflow{first}, PollInterval: time.Hour})
		idle := claimerIdle(worker)
		// Queued before the worker listens, so no wake-up reaches it.
		submitter := openRunner(t, url, &Config{Workflows: []*Workflow{late}})
		exec, err := submitter.ExecuteAsync(ctx, "late", nil)
		require.NoError(t, err)
		require.NoError(t, worker.Start(ctx))
		// The worker looks for work once as it starts and once more when
		// its wake-up subscription is in place; then it waits for the poll.
		waitFor(t, idle, "the first claim")
		waitFor(t, idle, "the claim after subscribing to wake-ups")

		require.NoError(t, worker.Register(late))
		res, err := exec.Wait(ctx)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status, res.Error)
		evs, err := submitter.Events(ctx, &EventQuery{RunID: &res.ID, Types: []EventType{EventTaskClaimed}})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		require.Equal(t, worker.ID(), evs[0].WorkerID)
	})
}

// A workflow registered after Start shows in the runner's row (Runners,
// `cloacina runners`) without waiting for a heartbeat, here an hour away.
func TestRegisterAfterStartUpdatesRunnerRow(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		first := MustWorkflow("first", Task{Name: "a", Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{first}, HeartbeatInterval: time.Hour})
		requireRowWorkflows(t, r, "first")

		require.NoError(t, r.Register(MustWorkflow("late", Task{Name: "a", Run: ok})))
		requireRowWorkflows(t, r, "first", "late")
		require.NoError(t, r.Register(first), "registering the same workflow again is still a no-op")
		err := r.Register(MustWorkflow("late", Task{Name: "b", Run: ok}))
		require.ErrorContains(t, err, `a different workflow named "late" is already registered`, "and another under a taken name still an error")

		// Registered while stopped: the row written at the next Start has it.
		require.NoError(t, r.Stop(ctx))
		require.NoError(t, r.Register(MustWorkflow("later", Task{Name: "a", Run: ok})))
		require.NoError(t, r.Start(ctx))
		requireRowWorkflows(t, r, "first", "late", "later")
	})
}

// A registration missing from the runner's row (its prompt write failed,
// or it came while Start was writing the row) is written by the next
// heartbeat.
func TestHeartbeatWritesMissingRegistrations(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		r := openRunner(t, url, nil)
		require.NoError(t, r.register(ctx))
		// Not started: Register writes nothing.
		require.NoError(t, r.Register(MustWorkflow("late", Task{Name: "a", Run: ok})))
		requireRowWorkflows(t, r)
		_, _, err := r.beat(ctx, false)
		require.NoError(t, err)
		requireRowWorkflows(t, r, "late")
	})
}

// requireRowWorkflows waits until r's runner row lists exactly want.
func requireRowWorkflows(t *testing.T, r *Runner, want ...string) {
	t.Helper()
	ctx := testContext(t)
	var got []string
	require.Eventually(t, func() bool {
		runners, err := r.Runners(ctx)
		require.NoError(t, err)
		got = nil
		for _, info := range runners {
			if info.ID == r.ID() {
				got = info.Workflows
				return slices.Equal(got, want)
			}
		}
		return false
	}, testTimeout, 5*time.Millisecond, "runner row lists %v, want %v", &got, want)
}
