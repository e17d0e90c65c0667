package cli

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// followDeadline bounds every wait of these tests: each waits for
// something that is bound to happen, and a hang is a failure.
const followDeadline = 30 * time.Second

// outBuffer is an output writer that a test can wait on.
type outBuffer struct {
	mu      sync.Mutex
	b       strings.Builder
	changed chan struct{} // closed at the next write
}

func newOutBuffer() *outBuffer { return &outBuffer{changed: make(chan struct{})} }

func (o *outBuffer) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.b.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *outBuffer) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// waitFor waits until the output satisfies ok.
func (o *outBuffer) waitFor(t *testing.T, what string, ok func(out string) bool) {
	t.Helper()
	deadline := time.NewTimer(followDeadline)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		out, changed := o.b.String(), o.changed
		o.mu.Unlock()
		if ok(out) {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no %s in the output after %s:\n%s", what, followDeadline, out)
		}
	}
}

// follow is one `cloacina events list --follow` running in the background.
type follow struct {
	out, errs *outBuffer
	polled    chan struct{} // a poll since the last receive
	stop      context.CancelFunc
	ended     chan struct{} // closed when the command returns
	code      int           // its exit code, once ended
}

// startFollow runs `events list --follow --interval 10ms args…` against
// url until it ends or the test does.
func startFollow(t *testing.T, url string, args ...string) *follow {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	f := &follow{out: newOutBuffer(), errs: newOutBuffer(), polled: make(chan struct{}, 1), stop: stop, ended: make(chan struct{})}
	a := &app{stdout: f.out, stderr: f.errs, getenv: func(string) string { return "" },
		logger: slog.New(slog.NewTextHandler(f.errs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		followPolled: func() {
			select {
			case f.polled <- struct{}{}:
			default:
			}
		}}
	args = append([]string{"--database-url", url, "events", "list", "--follow", "--interval", "10ms"}, args...)
	go func() {
		defer close(f.ended)
		f.code = a.main(ctx, args)
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-f.ended:
		case <-time.After(followDeadline):
			t.Errorf("the follower did not stop within %s of being interrupted", followDeadline)
		}
	})
	return f
}

// wait waits for the follower to end by itself and returns its exit code.
func (f *follow) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-f.ended:
		return f.code
	case <-time.After(followDeadline):
		t.Fatalf("the follower did not end within %s; output:\n%s", followDeadline, f.out.String())
		return 0
	}
}

// interrupt stops the follower as Ctrl-C does and returns its exit code.
func (f *follow) interrupt(t *testing.T) int {
	t.Helper()
	f.stop()
	return f.wait(t)
}

// nextPoll waits for the follower to poll again, failing if it ends.
func (f *follow) nextPoll(t *testing.T) {
	t.Helper()
	select {
	case <-f.polled:
	case <-f.ended:
		t.Fatalf("the follower ended (exit code %d); output:\n%s", f.code, f.out.String())
	case <-time.After(followDeadline):
		t.Fatalf("the follower did not poll within %s", followDeadline)
	}
}

// gate is a workflow whose first task waits for release, ignoring its
// context as a task that cannot be interrupted does, and tells started
// when it begins.
func gate(started chan<- uuid.UUID, release <-chan struct{}) *cloacina.Workflow {
	return cloacina.MustWorkflow("gate",
		cloacina.Task{Name: "wait", Run: func(ctx context.Context, tc *cloacina.Context) error {
			info, _ := cloacina.TaskInfoFrom(ctx)
			started <- info.RunID
			<-release
			return nil
		}},
		cloacina.Task{Name: "after", DependsOn: []string{"wait"}, Run: func(context.Context, *cloacina.Context) error { return nil }},
	)
}

var quick = cloacina.MustWorkflow("quick", cloacina.Task{Name: "only", Run: func(context.Context, *cloacina.Context) error { return nil }})

// startGateRunner starts a runner for gate and quick on url. The gate's
// tasks are released before the runner closes.
func startGateRunner(t *testing.T, url string) (r *cloacina.Runner, started chan uuid.UUID, release func()) {
	t.Helper()
	started = make(chan uuid.UUID, 10)
	ch := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	r, err := cloacina.Open(t.Context(), url, &cloacina.Config{Workflows: []*cloacina.Workflow{gate(started, ch), quick},
		PollInterval: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	t.Cleanup(release) // before Close: cleanups run last first
	require.NoError(t, r.Start(t.Context()))
	return r, started, release
}

// startGate starts a run of gate on r and waits until its first task
// runs (and holds); it returns the run's handle.
func startGate(t *testing.T, r *cloacina.Runner, started <-chan uuid.UUID) *cloacina.Execution {
	t.Helper()
	exec, err := r.ExecuteAsync(t.Context(), "gate", nil)
	require.NoError(t, err)
	require.Equal(t, exec.ID(), receive(t, started, "start of the gate task"))
	return exec
}

func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(followDeadline):
		t.Fatalf("no %s within %s", what, followDeadline)
		var zero T
		return zero
	}
}

// seqs returns the SEQ column of rows of an event table.
func seqs(t *testing.T, rows []row) []int64 {
	t.Helper()
	out := make([]int64, len(rows))
	for i, r := range rows {
		n, err := strconv.ParseInt(r[0], 10, 64)
		require.NoError(t, err)
		out[i] = n
	}
	return out
}

func hasEvent(typ, task string) func(string) bool {
	return func(out string) bool {
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l) // SEQ, TIME (two fields), RUN, EVENT, TASK, …
			if len(f) > 5 && f[4] == typ && f[5] == task {
				return true
			}
		}
		return false
	}
}

// Following one run prints its events as they happen and ends by itself
// once the run is over: every event once, none missing. A cancelled run is
// over only when its running tasks have returned, because their outcome
// is still recorded.
func TestEventsFollowRun(t *testing.T) {
	t.Parallel()
	for _, b := range testdb.Backends() {
		for _, cancel := range []bool{false, true} {
			name := b.Name + "/completes"
			if cancel {
				name = b.Name + "/cancelled"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				ctx := t.Context()
				url := b.URL(t)
				r, started, release := startGateRunner(t, url)
				exec := startGate(t, r, started)

				f := startFollow(t, url, "--run", exec.ID().String())
				f.out.waitFor(t, "task_started of wait", hasEvent("task_started", "wait"))
				if cancel {
					require.NoError(t, r.Cancel(ctx, exec.ID()))
					f.out.waitFor(t, "pipeline_cancelled", hasEvent("pipeline_cancelled", "-"))
					// A follower that took the cancelled run for over ends
					// within a poll of printing its end.
					for range 3 {
						f.nextPoll(t)
					}
				}
				release()
				require.Equal(t, ExitOK, f.wait(t), "stderr: %s", f.errs.String())
				require.Empty(t, f.errs.String())

				header, rows := parseTable(t, f.out.String())
				require.Equal(t, row{"SEQ", "TIME", "RUN", "EVENT", "TASK", "ATTEMPT"}, header[:6])
				events, err := r.RunEvents(ctx, exec.ID())
				require.NoError(t, err)
				want := make([]int64, len(events))
				for i, e := range events {
					want[i] = e.SequenceNum
				}
				got := seqs(t, rows)
				slices.Sort(got)
				require.Equal(t, want, got, "every event of the run, each once")
				for _, r := range rows {
					require.Equal(t, exec.ID().String(), r[2])
				}
				last := rows[len(rows)-1]
				if !cancel {
					require.Equal(t, "pipeline_completed", last[3])
					return
				}
				// The running task's end comes after the run's.
				types := make([]string, len(rows))
				for i, r := range rows {
					types[i] = r[3] + " " + r[4]
				}
				at := slices.Index(types, "pipeline_cancelled -")
				require.GreaterOrEqual(t, at, 0)
				require.Contains(t, types[at+1:], "task_completed wait")
			})
		}
	}
}

// Following the log by type prints the newest matching events (--limit),
// then each new one once, in order, until interrupted. (Runner.StreamEvents,
// which it follows with, has its own tests of retention and outages.)
func TestEventsFollowLog(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ctx := t.Context()
		r, _, _ := startGateRunner(t, url)
		startedSeq := func(run uuid.UUID) int64 {
			events, err := r.Events(ctx, &cloacina.EventQuery{RunID: &run, Types: []cloacina.EventType{cloacina.EventTaskStarted}})
			require.NoError(t, err)
			require.Len(t, events, 1)
			return events[0].SequenceNum
		}
		var runs []uuid.UUID
		for range 3 {
			res, err := r.Execute(ctx, "quick", nil)
			require.NoError(t, err)
			runs = append(runs, res.ID)
		}

		f := startFollow(t, url, "--type", "task_started", "--limit", "2")
		f.out.waitFor(t, "the backlog", func(out string) bool { return strings.Contains(out, runs[2].String()) })
		for range 2 {
			res, err := r.Execute(ctx, "quick", nil)
			require.NoError(t, err)
			runs = append(runs, res.ID)
		}
		f.out.waitFor(t, "the new runs' task_started", func(out string) bool { return strings.Contains(out, runs[4].String()) })
		require.Equal(t, ExitOK, f.interrupt(t), "an interrupt is how following ends")
		require.Empty(t, f.errs.String())

		_, rows := parseTable(t, f.out.String())
		var all []int64
		for _, run := range runs {
			all = append(all, startedSeq(run))
		}
		// The backlog is the newest two events a follower can have
		// seen: on PostgreSQL a transaction open anywhere on the server
		// (another test's) can hold the third run's event back, and
		// then the backlog is the first two runs' and the third's
		// follows. Either way: a tail of the log, each event once, in
		// order.
		got := seqs(t, rows)
		require.Contains(t, []int{4, 5}, len(got), "rows: %v of %v", got, all)
		require.Equal(t, all[len(all)-len(got):], got, "each once, in order")
		for _, r := range rows {
			require.Equal(t, "task_started", r[3])
		}
	})
}

// Following a run or task that does not exist is an error that says so.
func TestEventsFollowUnknown(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ok(t, url, "migrate")
		id := "0199c3e1-0000-7000-8000-000000000000"
		res := cli(t, "--database-url", url, "events", "list", "--follow", "--run", id)
		requireOneLineError(t, res, ExitFailure, "no run "+id+" in this database: list runs with `cloacina runs list`")
		res = cli(t, "--database-url", url, "events", "list", "--follow", "--task", id)
		requireOneLineError(t, res, ExitFailure, "no task execution "+id+" in this database: task ids are shown by `cloacina runs get`")
	})
}

// Following a task with filters that match none of its events yet follows
// it until its run has finished, as following its run does.
func TestEventsFollowTaskFiltered(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ctx := t.Context()
		r, started, release := startGateRunner(t, url)
		exec := startGate(t, r, started)
		res, err := r.Get(ctx, exec.ID())
		require.NoError(t, err)
		var wait uuid.UUID
		for _, task := range res.Tasks {
			if task.Name == "wait" {
				wait = task.ID
			}
		}
		require.NotEqual(t, uuid.Nil, wait)

		f := startFollow(t, url, "--task", wait.String(), "--type", "task_completed", "--since", "1h")
		f.nextPoll(t)
		f.nextPoll(t) // still following: nothing matches yet
		release()
		require.Equal(t, ExitOK, f.wait(t), "stderr: %s", f.errs.String())
		require.Empty(t, f.errs.String())
		_, rows := parseTable(t, f.out.String())
		require.Len(t, rows, 1, "output:\n%s", f.out.String())
		require.Equal(t, []string{exec.ID().String(), "task_completed", "wait"}, []string(rows[0][2:5]))
	})
}

// A follower outlasts lost connections (a database restart, a killed
// backend): it warns once, retries and follows on, and says when the
// database answers again. PostgreSQL only: a SQLite file has no connection
// to lose. Following one run reads with the CLI's own retries; following
// the log, with Runner.StreamEvents's (tested in the root package).
func TestEventsFollowOutlastsLostConnections(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := testdb.PostgresSchemaURL(t)
	r, started, release := startGateRunner(t, url)
	exec := startGate(t, r, started)
	app := "follow_" + strings.ReplaceAll(uuid.NewString(), "-", "")
	f := startFollow(t, url+"&application_name="+app, "--run", exec.ID().String())
	f.nextPoll(t)

	admin, err := pgx.Connect(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	defer admin.Close(context.Background())
	// A connection that was idle for a while is pinged, and replaced
	// unseen, when the pool hands it out; so kill the follower's
	// connections until one dies under it.
	for deadline := time.Now().Add(followDeadline); !strings.Contains(f.errs.String(), "cannot read the event log"); {
		require.True(t, time.Now().Before(deadline), "no read failed in %s of killing the follower's connections", followDeadline)
		_, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app)
		require.NoError(t, err)
		f.nextPoll(t)
	}
	release()
	require.Equal(t, ExitOK, f.wait(t), "the follower ends with the run")

	warnings := strings.Split(strings.TrimSpace(f.errs.String()), "\n")
	require.Len(t, warnings, 2, "stderr:\n%s", f.errs.String())
	require.Contains(t, warnings[0], "level=WARN msg=\"cannot read the event log; retrying until the database answers (interrupt to stop)\"")
	require.Contains(t, warnings[0], "transient database error")
	require.Contains(t, warnings[1], "the database answers again; following on")
	_, rows := parseTable(t, f.out.String())
	events, err := r.RunEvents(ctx, exec.ID())
	require.NoError(t, err)
	got := seqs(t, rows)
	slices.Sort(got)
	want := make([]int64, len(events))
	for i, e := range events {
		want[i] = e.SequenceNum
	}
	require.Equal(t, want, got, "every event of the run, each once")
}

// --follow --run (or --task) of a run that run retention deleted prints
// the events the log still holds and ends, as for any finished run, as
// the listing without --follow does; an id the log does not know either
// stays an error.
func TestFollowDeletedRun(t *testing.T) {
	t.Parallel()
	eachBackend(t, func(t *testing.T, url string) {
		ctx := t.Context()
		r, err := cloacina.Open(ctx, url, &cloacina.Config{Workflows: []*cloacina.Workflow{quick}, Logger: slog.New(slog.DiscardHandler)})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, r.Close()) })
		require.NoError(t, r.Start(ctx))
		res, err := r.Execute(ctx, "quick", nil)
		require.NoError(t, err)
		events, err := r.RunEvents(ctx, res.ID)
		require.NoError(t, err)
		taskID := res.Task("only").ID
		require.NoError(t, r.Stop(ctx))
		require.Contains(t, ok(t, url, "runs", "cleanup", "--older-than", "1ms"), "deleted 1 finished runs")
		_, rows := parseTable(t, ok(t, url, "events", "list", "--run", res.ID.String()))
		require.Len(t, rows, len(events), "the log keeps the deleted run's events")

		for _, args := range [][]string{{"--run", res.ID.String()}, {"--task", taskID.String()}} {
			f := startFollow(t, url, args...)
			select {
			case <-f.ended:
			case <-time.After(followDeadline):
				t.Fatalf("%v: the follower of a deleted run did not end within %s", args, followDeadline)
			}
			require.Equal(t, ExitOK, f.code, "%v: stderr: %s", args, f.errs.String())
			_, rows := parseTable(t, f.out.String())
			want := 0
			for _, e := range events {
				if args[0] == "--run" || (e.TaskID != nil && *e.TaskID == taskID) {
					want++
				}
			}
			require.Len(t, rows, want, "%v: every event the log holds", args)
		}

		requireOneLineError(t, cli(t, "--database-url", url, "events", "list", "--follow", "--run", uuid.Must(uuid.NewV7()).String()), ExitFailure,
			"no run ")
		requireOneLineError(t, cli(t, "--database-url", url, "events", "list", "--follow", "--task", uuid.Must(uuid.NewV7()).String()), ExitFailure,
			"no task execution ")
	})
}
