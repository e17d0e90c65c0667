// Package cloacinatest helps applications test their workflows and task
// functions against a real engine and a real database: no mocks, and
// nothing the test leaves behind.
//
// Open gives a test a started runner on a SQLite file of its own;
// OpenURL does the same on any database, and PostgresSchema gives a test
// a PostgreSQL schema of its own to open it on. Either way the runner is
// stopped and closed when the test ends, and the schema dropped.
//
// RunTask runs a single task function the way a runner runs it — claimed,
// under its retry policy and timeout, its output recorded — and returns
// how it ended, with the error its last attempt returned and the task's
// events, so a task can be tested alone, without the workflow around it.
package cloacinatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cloacina-go/cloacina"
)

// setupTimeout bounds opening, migrating and starting a runner, and
// dropping a schema; a database that does not answer fails the test
// instead of hanging it.
const setupTimeout = 30 * time.Second

// Open opens a runner on a new SQLite file in the test's temporary
// directory and starts it (unless cfg.ReadOnly); it fails the test if
// either step fails. cfg may be nil; it is copied, not changed. When
// cfg.Logger is nil the runner logs warnings and errors to the test's
// output.
//
// With cfg.ReadOnly, Open creates and migrates the file first, since a
// read-only runner creates nothing, and then opens it read-only: the
// runner reads an empty database (List finds no runs) and its writes
// return cloacina.ErrReadOnly. To read what another runner wrote, open
// that runner's URL with OpenURL instead.
//
// When the test ends, the runner is stopped and closed: the contexts of
// tasks still running then are cancelled, as t.Context() is, and each
// is given a moment to return before its claim is handed back. A test
// that must see a run end waits for it (Runner.Execute, Execution.Wait).
func Open(t testing.TB, cfg *cloacina.Config) *cloacina.Runner {
	t.Helper()
	dbURL := "sqlite://" + filepath.Join(t.TempDir(), "cloacina.db")
	if cfg != nil && cfg.ReadOnly {
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		if _, err := cloacina.Migrate(ctx, dbURL, cfg.Schema); err != nil {
			t.Fatalf("cloacinatest: create the database for a read-only runner: %v", err)
		}
	}
	return OpenURL(t, dbURL, cfg)
}

// OpenURL is Open on the database at url: a SQLite URL, or a PostgreSQL
// one such as PostgresSchema returns.
func OpenURL(t testing.TB, url string, cfg *cloacina.Config) *cloacina.Runner {
	t.Helper()
	var c cloacina.Config
	if cfg != nil {
		c = *cfg
	}
	if c.Logger == nil {
		c.Logger = testLogger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if _, fresh := freshSchemas.Load(url); fresh && c.ReadOnly {
		// A read-only runner creates nothing: create and migrate the
		// schema first, as a runner that writes would.
		if _, err := cloacina.Migrate(ctx, url, c.Schema); err != nil {
			t.Fatalf("cloacinatest: create the schema for a read-only runner: %v", err)
		}
	}
	r, err := cloacina.Open(ctx, url, &c)
	if err != nil {
		t.Fatalf("cloacinatest: open a runner: %v", err)
	}
	t.Cleanup(func() { closeRunner(t, r) })
	if c.ReadOnly {
		return r
	}
	if err := r.Start(ctx); err != nil {
		t.Fatalf("cloacinatest: start the runner: %v", err)
	}
	return r
}

// closeRunner stops r as the test ends and closes it. Stop is given a
// context that has ended already, so it cancels what still runs instead
// of waiting for it; its error says that it did (and how many results it
// gave up, should the database refuse them then), neither of which fails
// the test.
func closeRunner(t testing.TB, r *cloacina.Runner) {
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	_ = r.Stop(ended)
	if err := r.Close(); err != nil {
		t.Errorf("cloacinatest: close the runner: %v", err)
	}
}

// testLogger logs warnings and errors to the test's output, where go test
// shows them with the test that caused them.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// PostgresSchema returns rawURL, a PostgreSQL URL, with a schema of the
// test's own as its schema parameter (replacing any there), and drops that
// schema, with everything in it, when the test ends. The schema is created
// and migrated when a runner first opens the URL (OpenURL; a read-only
// runner reads it empty, as Open's reads its new file), so the role in
// rawURL needs the CREATE privilege on the database.
//
// Parameters other than schema are read as the library reads them
// (cloacina.ParseDatabaseURL), so pgxpool's pool_* parameters may stay in
// rawURL. It fails the test, naming the fix, when the database does not
// answer, so a suite that needs PostgreSQL cannot pass without it; when
// the server answers but refuses the connection (no such database or
// role, an unknown setting), it reports the server's error.
func PostgresSchema(t testing.TB, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("cloacinatest: PostgresSchema needs a postgres:// URL such as postgres://user@127.0.0.1:5432/db, got %q", redacted(rawURL))
	}
	schema := "cloacinatest_" + randomHex(6)
	q := u.Query()
	q.Del("schema")
	connURL := *u
	connURL.RawQuery = q.Encode()

	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	pool, err := connect(ctx, connURL.String())
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr):
		t.Fatalf("cloacinatest: PostgreSQL at %s answered with an error: %v\ncheck the URL's database, role and parameters", redacted(rawURL), err)
	case errors.Is(err, errBadURL):
		t.Fatalf("cloacinatest: PostgresSchema: %v", err)
	case err != nil:
		t.Fatalf("cloacinatest: PostgreSQL does not answer at %s: %v\nstart it, or point the test at one that runs", redacted(rawURL), err)
	}
	pool.Close()

	q.Set("schema", schema)
	u.RawQuery = q.Encode()
	schemaURL := u.String()
	freshSchemas.Store(schemaURL, struct{}{})
	t.Cleanup(func() {
		freshSchemas.Delete(schemaURL)
		dropSchema(t, connURL.String(), schema)
	})
	return schemaURL
}

// freshSchemas holds the URLs PostgresSchema returned, of schemas whose
// tests still run: OpenURL creates such a schema for a read-only runner.
var freshSchemas sync.Map

// errBadURL marks a URL that pgx does not accept.
var errBadURL = errors.New("a URL pgx does not accept")

// connect opens a one-connection pool on connURL and checks that the
// server answers. It parses connURL as the library does
// (pgxpool.ParseConfig), so pgxpool's own parameters such as
// pool_max_conns are taken by the pool instead of being sent to the
// server, where they are unknown settings.
func connect(ctx context.Context, connURL string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(connURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBadURL, err)
	}
	// One connection is all this needs; the pool's own size settings
	// are for the runner that opens the URL.
	cfg.MaxConns, cfg.MinConns, cfg.MinIdleConns = 1, 0, 0
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// dropSchema drops the schema a test used, with everything in it.
func dropSchema(t testing.TB, connURL, schema string) {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	pool, err := connect(ctx, connURL)
	if err != nil {
		t.Errorf("cloacinatest: drop schema %s: %v", schema, err)
		return
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		t.Errorf("cloacinatest: drop schema %s: %v", schema, err)
	}
}

// redacted is rawURL without its password, for messages.
func redacted(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(an unparsable URL)"
	}
	return u.Redacted()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// TaskRun is how a task run by RunTask ended.
type TaskRun struct {
	// Result is the task's state as the runner recorded it: Status
	// (Completed or Failed), Attempts, Error (the text recorded for the
	// last failure), Duration.
	Result cloacina.TaskResult
	// Output is what the task's Context held when it returned nil; nil
	// when it failed.
	Output *cloacina.Context
	// Err is the error the task function returned on its last attempt,
	// as it returned it, so errors.Is and errors.As see through it; nil
	// when the task completed. It is also nil when the last attempt
	// panicked, or ran past its timeout and returned nil or had not
	// returned when the run ended: Result.Error holds what the runner
	// recorded for those.
	Err error
	// Events is the task's event log, oldest first: task_created,
	// task_marked_ready, task_claimed, task_started, then task_completed;
	// or task_retry_scheduled and the next attempt, and finally
	// task_failed.
	Events []*cloacina.Event
}

// RunTask runs task alone: as the only task of a workflow, on a new SQLite
// file, by a runner of its own. The function runs as a runner runs it —
// with its Retry policy (retries wait their real delays, so give the task
// a policy with short ones for a test) and its Timeout; TaskInfoFrom and
// DeferUntil work in it — and input is what it receives, standing in for
// its dependencies' merged outputs (nil means an empty context). The
// task's DependsOn and Trigger are ignored: RunTask tests the function, and
// a trigger rule belongs to the workflow.
//
// It fails the test if the task cannot be run at all (an invalid
// definition, a database error); a task that fails is a result, in
// TaskRun.Result and TaskRun.Err. It does not bound the task: give it a
// Timeout, or go test's -timeout ends a task that hangs.
func RunTask(t testing.TB, task cloacina.Task, input *cloacina.Context) *TaskRun {
	t.Helper()
	if task.Run == nil {
		t.Fatalf("cloacinatest: RunTask: task %q has no Run function", task.Name)
	}
	if task.Name == "" {
		task.Name = "task"
	}
	var (
		mu          sync.Mutex
		lastAttempt int
		lastErr     error
	)
	fn := task.Run
	task.Run = func(ctx context.Context, tc *cloacina.Context) error {
		info, _ := cloacina.TaskInfoFrom(ctx)
		mu.Lock()
		if info.Attempt >= lastAttempt {
			lastAttempt, lastErr = info.Attempt, nil // a panic leaves it nil
		}
		mu.Unlock()
		err := fn(ctx, tc)
		mu.Lock()
		// An earlier attempt that ran past its timeout can return while a
		// later one runs: its error is not the last attempt's.
		if info.Attempt == lastAttempt {
			lastErr = err
		}
		mu.Unlock()
		return err
	}
	task.DependsOn = nil
	task.Trigger = cloacina.TriggerRule{}

	wf, err := cloacina.NewWorkflow("cloacinatest", task)
	if err != nil {
		t.Fatalf("cloacinatest: RunTask: %v", err)
	}
	r := Open(t, &cloacina.Config{Workflows: []*cloacina.Workflow{wf}})
	ctx := t.Context()
	res, err := r.Execute(ctx, wf.Name(), input)
	if err != nil {
		t.Fatalf("cloacinatest: RunTask %q: %v", task.Name, err)
	}
	tr := res.Task(task.Name)
	if tr == nil {
		t.Fatalf("cloacinatest: RunTask %q: the run has no such task", task.Name)
	}
	events, err := r.TaskEvents(ctx, tr.ID)
	if err != nil {
		t.Fatalf("cloacinatest: RunTask %q: read its events: %v", task.Name, err)
	}
	run := &TaskRun{Result: *tr, Events: events}
	if tr.Status == cloacina.TaskStatusCompleted {
		run.Output = res.Context
	} else {
		mu.Lock()
		run.Err = lastErr
		mu.Unlock()
	}
	return run
}

// String describes the run in one line, for test failure messages: with
// the first line of Result.Error when it has several (a panic's is
// followed by its stack), marked as cut.
func (r *TaskRun) String() string {
	if r.Result.Error != "" {
		msg, rest, cut := strings.Cut(r.Result.Error, "\n")
		if cut && strings.TrimSpace(rest) != "" {
			msg += " [more lines in Result.Error]"
		}
		return fmt.Sprintf("%s after %d attempt(s): %s", r.Result.Status, r.Result.Attempts, msg)
	}
	return fmt.Sprintf("%s after %d attempt(s)", r.Result.Status, r.Result.Attempts)
}
