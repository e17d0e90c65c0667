package cloacinatest_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/cloacinatest"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testTimeout = 60 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func greet() *cloacina.Workflow {
	return cloacina.MustWorkflow("greet",
		cloacina.Task{Name: "hello", Run: func(ctx context.Context, tc *cloacina.Context) error {
			name, err := cloacina.Get[string](tc, "name")
			if err != nil {
				return err
			}
			return tc.Set("greeting", "hello "+name)
		}},
	)
}

func TestOpenRunsWorkflowsAndClosesWithTheTest(t *testing.T) {
	t.Parallel()
	var r *cloacina.Runner
	t.Run("inner", func(t *testing.T) {
		r = cloacinatest.Open(t, &cloacina.Config{Workflows: []*cloacina.Workflow{greet()}})
		input, err := cloacina.ContextFrom(map[string]any{"name": "ada"})
		require.NoError(t, err)
		res, err := r.Execute(testContext(t), "greet", input)
		require.NoError(t, err)
		require.Equal(t, cloacina.PipelineCompleted, res.Status)
		greeting, err := cloacina.Get[string](res.Context, "greeting")
		require.NoError(t, err)
		require.Equal(t, "hello ada", greeting)
	})
	_, err := r.List(testContext(t), nil)
	require.ErrorIs(t, err, cloacina.ErrRunnerClosed, "the runner outlived its test")
}

func TestOpenLeavesTheConfigAlone(t *testing.T) {
	t.Parallel()
	cfg := &cloacina.Config{Workflows: []*cloacina.Workflow{greet()}}
	cloacinatest.Open(t, cfg)
	require.Nil(t, cfg.Logger, "Open set the caller's Config.Logger")
}

func TestOpenReadOnlyDoesNotStart(t *testing.T) {
	t.Parallel()
	url := testdb.SQLiteURL(t)
	w := cloacinatest.OpenURL(t, url, &cloacina.Config{Workflows: []*cloacina.Workflow{greet()}})
	input, err := cloacina.ContextFrom(map[string]any{"name": "bob"})
	require.NoError(t, err)
	res, err := w.Execute(testContext(t), "greet", input)
	require.NoError(t, err)

	ro := cloacinatest.OpenURL(t, url, &cloacina.Config{ReadOnly: true})
	got, err := ro.Get(testContext(t), res.ID)
	require.NoError(t, err)
	require.Equal(t, cloacina.PipelineCompleted, got.Status)
	require.ErrorIs(t, ro.Start(testContext(t)), cloacina.ErrReadOnly)
}

// A read-only runner on a fresh file reads an empty, migrated database and
// refuses writes.
func TestOpenReadOnlyReadsAnEmptyDatabase(t *testing.T) {
	t.Parallel()
	cfg := &cloacina.Config{ReadOnly: true, Workflows: []*cloacina.Workflow{greet()}}
	r := cloacinatest.Open(t, cfg)
	runs, err := r.List(testContext(t), nil)
	require.NoError(t, err)
	require.Empty(t, runs)
	_, err = r.Execute(testContext(t), "greet", nil)
	require.ErrorIs(t, err, cloacina.ErrReadOnly)
	require.ErrorIs(t, r.Start(testContext(t)), cloacina.ErrReadOnly)
}

// A task still running when its test ends has its context cancelled, and
// the test's cleanup returns once it has returned.
func TestTheEndOfATestCancelsItsRunningTasks(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	cause := make(chan error, 1)
	wf := cloacina.MustWorkflow("blocks", cloacina.Task{Name: "wait", Run: func(ctx context.Context, tc *cloacina.Context) error {
		close(started)
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return ctx.Err()
	}})
	t.Run("inner", func(t *testing.T) {
		r := cloacinatest.Open(t, &cloacina.Config{Workflows: []*cloacina.Workflow{wf}})
		_, err := r.ExecuteAsync(testContext(t), "blocks", nil)
		require.NoError(t, err)
		select {
		case <-started:
		case <-time.After(testTimeout):
			t.Fatal("the task never started")
		}
	})
	select {
	case err := <-cause:
		require.Error(t, err)
	default:
		t.Fatal("the test's cleanup returned while its task still ran")
	}
}

func TestPostgresSchemaIsTheTestsOwnAndDroppedAfter(t *testing.T) {
	t.Parallel()
	testdb.UsesPostgres(t)
	base := testdb.PostgresURL()
	var urls []string
	t.Run("inner", func(t *testing.T) {
		a := cloacinatest.PostgresSchema(t, base)
		b := cloacinatest.PostgresSchema(t, testdb.WithSchema(base, "public"))
		urls = append(urls, a, b)
		require.NotEqual(t, a, b)
		require.NotContains(t, b, "schema=public", "the URL's own schema was kept")
		for _, url := range []string{a, b} {
			r := cloacinatest.OpenURL(t, url, &cloacina.Config{Workflows: []*cloacina.Workflow{greet()}})
			input, err := cloacina.ContextFrom(map[string]any{"name": "pg"})
			require.NoError(t, err)
			res, err := r.Execute(testContext(t), "greet", input)
			require.NoError(t, err)
			require.Equal(t, cloacina.PipelineCompleted, res.Status)
			runs, err := r.List(testContext(t), nil)
			require.NoError(t, err)
			require.Len(t, runs, 1, "the schema holds another test's runs")
		}
	})
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, base)
	require.NoError(t, err)
	defer conn.Close(ctx)
	for _, url := range urls {
		u, err := cloacina.ParseDatabaseURL(url)
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(u.Schema, "cloacinatest_"), u.Schema)
		var n int
		require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", u.Schema).Scan(&n))
		require.Zero(t, n, "schema %s outlived its test", u.Schema)
	}
}

// A read-only runner opened on a schema of PostgresSchema reads it empty,
// as Open's read-only runner reads its new file: the schema is created and
// migrated when a runner first opens the URL, a read-only one included.
// OpenURL used to fail the test instead ("database at version 0").
func TestPostgresSchemaOpensReadOnly(t *testing.T) {
	t.Parallel()
	testdb.UsesPostgres(t)
	u := cloacinatest.PostgresSchema(t, testdb.PostgresURL())
	r := cloacinatest.OpenURL(t, u, &cloacina.Config{ReadOnly: true, Workflows: []*cloacina.Workflow{greet()}})
	runs, err := r.List(testContext(t), nil)
	require.NoError(t, err)
	require.Empty(t, runs)
	_, err = r.Execute(testContext(t), "greet", nil)
	require.ErrorIs(t, err, cloacina.ErrReadOnly)

	w := cloacinatest.OpenURL(t, u, &cloacina.Config{Workflows: []*cloacina.Workflow{greet()}})
	input, err := cloacina.ContextFrom(map[string]any{"name": "ro"})
	require.NoError(t, err)
	res, err := w.Execute(testContext(t), "greet", input)
	require.NoError(t, err)
	got, err := r.Get(testContext(t), res.ID)
	require.NoError(t, err, "the read-only runner reads what the other wrote")
	require.Equal(t, cloacina.PipelineCompleted, got.Status)
}

// PostgresSchema takes the URLs cloacina.Open takes, pgxpool's pool_*
// parameters included, and drops its schema after them too.
func TestPostgresSchemaTakesPoolParameters(t *testing.T) {
	t.Parallel()
	testdb.UsesPostgres(t)
	base := testdb.PostgresURL()
	var schema string
	ok := t.Run("inner", func(t *testing.T) {
		pooled := withParam(t, base, "pool_max_conns", "4")
		u := cloacinatest.PostgresSchema(t, pooled)
		require.Contains(t, u, "pool_max_conns=4")
		r := cloacinatest.OpenURL(t, u, &cloacina.Config{Workflows: []*cloacina.Workflow{greet()}})
		input, err := cloacina.ContextFrom(map[string]any{"name": "pool"})
		require.NoError(t, err)
		res, err := r.Execute(testContext(t), "greet", input)
		require.NoError(t, err)
		require.Equal(t, cloacina.PipelineCompleted, res.Status)
		parsed, err := cloacina.ParseDatabaseURL(u)
		require.NoError(t, err)
		schema = parsed.Schema
	})
	require.True(t, ok, "the inner test failed, or its cleanup did")
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, base)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema).Scan(&n))
	require.Zero(t, n, "schema %s outlived its test", schema)
}

// A server that answers with an error is reported as answering, with its
// error, not as one that does not answer.
func TestPostgresSchemaReportsTheServersError(t *testing.T) {
	t.Parallel()
	testdb.UsesPostgres(t)
	u, err := url.Parse(testdb.PostgresURL())
	require.NoError(t, err)
	u.Path = "/cloacinatest_no_such_database"
	msg := fatal(t, func(tb testing.TB) { cloacinatest.PostgresSchema(tb, u.String()) })
	require.Contains(t, msg, "answered with an error")
	require.Contains(t, msg, "cloacinatest_no_such_database")
	require.Contains(t, msg, "3D000", "the server's error code")
	require.NotContains(t, msg, "does not answer")
}

func withParam(t *testing.T, raw, key, value string) string {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// fatalRecorder is a testing.TB whose Fatalf records the message and ends
// the goroutine, as testing.T's does, so the failures a helper reports can
// be checked.
type fatalRecorder struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.msg = strings.TrimSpace(strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " "))
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fatalRecorder) Helper() {}

// fatal runs fn on a fatalRecorder and returns what it failed with.
func fatal(t *testing.T, fn func(tb testing.TB)) string {
	t.Helper()
	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(rec)
	}()
	<-done
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.msg
}

func TestPostgresSchemaNamesTheFix(t *testing.T) {
	t.Parallel()
	msg := fatal(t, func(tb testing.TB) { cloacinatest.PostgresSchema(tb, "sqlite:///tmp/x.db") })
	require.Contains(t, msg, "needs a postgres:// URL")

	msg = fatal(t, func(tb testing.TB) {
		cloacinatest.PostgresSchema(tb, "postgres://ann:s3cret@127.0.0.1:1/db?connect_timeout=5")
	})
	require.Contains(t, msg, "PostgreSQL does not answer at postgres://ann:xxxxx@127.0.0.1:1/db")
	require.Contains(t, msg, "start it")
	require.NotContains(t, msg, "s3cret", "the password is in the message")
}

func TestRunTaskReturnsTheOutput(t *testing.T) {
	t.Parallel()
	input, err := cloacina.ContextFrom(map[string]any{"n": 20})
	require.NoError(t, err)
	var info cloacina.TaskInfo
	run := cloacinatest.RunTask(t, cloacina.Task{
		Name:      "double",
		DependsOn: []string{"elsewhere"}, // ignored: the input stands in
		Trigger:   cloacina.All(cloacina.TaskSuccess("elsewhere")),
		Run: func(ctx context.Context, tc *cloacina.Context) error {
			info, _ = cloacina.TaskInfoFrom(ctx)
			n, err := cloacina.Get[int](tc, "n")
			if err != nil {
				return err
			}
			return tc.Set("doubled", 2*n)
		},
	}, input)

	require.Equal(t, cloacina.TaskStatusCompleted, run.Result.Status, run.String())
	require.NoError(t, run.Err)
	doubled, err := cloacina.Get[int](run.Output, "doubled")
	require.NoError(t, err)
	require.Equal(t, 40, doubled)
	require.Equal(t, "double", info.Task)
	require.Equal(t, 1, info.Attempt)
	require.Equal(t, []cloacina.EventType{
		cloacina.EventTaskCreated, cloacina.EventTaskMarkedReady, cloacina.EventTaskClaimed, cloacina.EventTaskStarted, cloacina.EventTaskCompleted,
	}, eventTypes(run.Events))
}

var errUpstream = errors.New("upstream answered 503")

func TestRunTaskRetriesAndReturnsTheLastError(t *testing.T) {
	t.Parallel()
	attempts := 0
	run := cloacinatest.RunTask(t, cloacina.Task{
		Name:  "flaky",
		Retry: &cloacina.RetryPolicy{MaxAttempts: 3, Backoff: cloacina.BackoffFixed, InitialDelay: time.Millisecond},
		Run: func(ctx context.Context, tc *cloacina.Context) error {
			attempts++
			return cloacina.Transient(errUpstream)
		},
	}, nil)

	require.Equal(t, cloacina.TaskStatusFailed, run.Result.Status)
	require.Equal(t, 3, run.Result.Attempts)
	require.Equal(t, 3, attempts)
	require.ErrorIs(t, run.Err, errUpstream)
	require.True(t, cloacina.IsTransient(run.Err))
	require.Contains(t, run.Result.Error, "upstream answered 503")
	require.Nil(t, run.Output)
	require.Equal(t, "failed after 3 attempt(s): "+run.Result.Error, run.String())
	types := eventTypes(run.Events)
	require.Equal(t, 2, count(types, cloacina.EventTaskRetryScheduled), types)
	require.Equal(t, 3, count(types, cloacina.EventTaskStarted), types)
	require.Equal(t, cloacina.EventTaskFailed, types[len(types)-1])
}

func TestRunTaskReportsPanicsAndTimeouts(t *testing.T) {
	t.Parallel()
	t.Run("panic", func(t *testing.T) {
		t.Parallel()
		run := cloacinatest.RunTask(t, cloacina.Task{Name: "boom", Run: func(ctx context.Context, tc *cloacina.Context) error {
			panic("nil map")
		}}, nil)
		require.Equal(t, cloacina.TaskStatusFailed, run.Result.Status)
		require.NoError(t, run.Err, "a panic returned no error")
		require.Contains(t, run.Result.Error, "task panicked: nil map")
		require.Contains(t, run.Result.Error, "goroutine", "the stack is recorded")
		// String is one line: it printed the whole stack.
		require.Equal(t, "failed after 1 attempt(s): task panicked: nil map [more lines in Result.Error]", run.String())
	})
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		run := cloacinatest.RunTask(t, cloacina.Task{Name: "slow", Timeout: 10 * time.Millisecond, Run: func(ctx context.Context, tc *cloacina.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}}, nil)
		require.Equal(t, cloacina.TaskStatusFailed, run.Result.Status)
		require.ErrorIs(t, run.Err, context.DeadlineExceeded, "the function's own error")
		require.Contains(t, run.Result.Error, cloacina.ErrTaskTimeout.Error())
	})
}

var errFirstAttempt = errors.New("the first attempt's error")

// An attempt that ran past its timeout and returns late, while the next
// attempt runs, does not pass its error off as the last attempt's: here
// the last attempt times out too and has not returned when the run ends,
// so TaskRun.Err is nil, as documented. RunTask used to keep whichever
// attempt returned last, the first one's error.
func TestRunTaskKeepsTheLastAttemptsErrorOnly(t *testing.T) {
	t.Parallel()
	second := make(chan struct{})
	release := make(chan struct{})
	defer close(release) // before the runner closes, which waits for the task
	run := cloacinatest.RunTask(t, cloacina.Task{
		Name:    "stuck",
		Timeout: 50 * time.Millisecond,
		Retry:   &cloacina.RetryPolicy{MaxAttempts: 2, Backoff: cloacina.BackoffFixed, InitialDelay: time.Millisecond},
		Run: func(ctx context.Context, tc *cloacina.Context) error {
			info, _ := cloacina.TaskInfoFrom(ctx)
			if info.Attempt == 1 {
				<-second // past its timeout: the second attempt has begun
				return errFirstAttempt
			}
			close(second)
			<-release // past its timeout, and past the run's end
			return nil
		},
	}, nil)
	require.Equal(t, cloacina.TaskStatusFailed, run.Result.Status, run.String())
	require.Equal(t, 2, run.Result.Attempts)
	require.Contains(t, run.Result.Error, cloacina.ErrTaskTimeout.Error())
	require.NotErrorIs(t, run.Err, errFirstAttempt, "the first attempt's error, returned late, stands for the last attempt's")
	require.NoError(t, run.Err)
}

// A task that waits in DeferUntil runs under RunTask as under a runner:
// its wait is recorded.
func TestRunTaskRunsDeferUntil(t *testing.T) {
	t.Parallel()
	polls := 0
	run := cloacinatest.RunTask(t, cloacina.Task{Name: "await", Run: func(ctx context.Context, tc *cloacina.Context) error {
		err := cloacina.DeferUntil(ctx, time.Millisecond, func(context.Context) (bool, error) {
			polls++
			return polls >= 3, nil
		})
		if err != nil {
			return err
		}
		return tc.Set("polls", polls)
	}}, nil)
	require.Equal(t, cloacina.TaskStatusCompleted, run.Result.Status, run.String())
	got, err := cloacina.Get[int](run.Output, "polls")
	require.NoError(t, err)
	require.Equal(t, 3, got)
	types := eventTypes(run.Events)
	require.Equal(t, 1, count(types, cloacina.EventTaskDeferred), types)
	require.Equal(t, 1, count(types, cloacina.EventTaskResumed), types)
}

func TestRunTaskRefusesWhatCannotRun(t *testing.T) {
	t.Parallel()
	msg := fatal(t, func(tb testing.TB) { cloacinatest.RunTask(tb, cloacina.Task{Name: "empty"}, nil) })
	require.Equal(t, `cloacinatest: RunTask: task "empty" has no Run function`, msg)
}

func eventTypes(events []*cloacina.Event) []cloacina.EventType {
	types := make([]cloacina.EventType, len(events))
	for i, e := range events {
		types[i] = e.Type
	}
	return types
}

func count(types []cloacina.EventType, want cloacina.EventType) int {
	n := 0
	for _, typ := range types {
		if typ == want {
			n++
		}
	}
	return n
}
