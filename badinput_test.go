package cloacina

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

func TestParseDatabaseURL(t *testing.T) {
	t.Parallel()
	good := map[string]DatabaseURL{
		"sqlite:///tmp/x.db":                                  {Backend: "sqlite", Path: "/tmp/x.db"},
		"sqlite://rel/x.db":                                   {Backend: "sqlite", Path: "rel/x.db"},
		"sqlite://team#1/%41.db":                              {Backend: "sqlite", Path: "team#1/%41.db"},
		"postgres://u@h:5432/db":                              {Backend: "postgres", DSN: "postgres://u@h:5432/db"},
		"postgresql://u@h/db?sslmode=disable&schema=tenant_a": {Backend: "postgres", DSN: "postgresql://u@h/db?sslmode=disable", Schema: "tenant_a"},
	}
	for raw, want := range good {
		got, err := ParseDatabaseURL(raw)
		require.NoError(t, err, raw)
		require.Equal(t, want, *got, raw)
	}
	bad := map[string]string{
		"":                                             "empty",
		"cloacina.db":                                  "has no scheme",
		"sqlite:data/x.db":                             "lacks the // after sqlite:, write sqlite://data/x.db",
		"mysql://u@h/db":                               `unsupported scheme "mysql"`,
		"sqlite://":                                    "names no file",
		"sqlite://:memory:":                            "in-memory SQLite",
		"sqlite://x.db?_pragma=foo":                    "take no parameters",
		"postgres:///db":                               "has no host",
		"postgres://u:secret@h/db?schema=a-b":          `invalid schema name "a-b"`,
		"postgres://u@h/db?schema=pg_x":                "reserved",
		"postgres://u:p@h:notaport/db":                 "invalid port",
		"postgres://u:secret@h:99999/db":               "invalid port",
		"postgres://u:secret@h/db?schema=":             "empty schema parameter: name the schema",
		"postgres://u@h/db?schema=a&schema=b":          "sets schema 2 times",
		"postgres://u:secret@h/db?sslmode=bogus":       "sslmode is invalid",
		"postgres://u@h/db?pool_max_conns=0":           "pool_max_conns",
		"postgres://u:secret@h/db?connect_timeout=abc": "connect_timeout",
		// Without "://" the password cannot be found to be hidden: the
		// text was repeated whole.
		"host=h user=u password=secret dbname=db": "a key=value connection string is not a URL",
		"postgres:/u:secret@h/db":                 "lacks the // after postgres:",
		"postgres//u:secret@h/db":                 "has no scheme",
		"u:secret@h:5432/db":                      "has no scheme",
	}
	for raw, want := range bad {
		_, err := ParseDatabaseURL(raw)
		require.ErrorIs(t, err, ErrInvalidURL, raw)
		require.Contains(t, err.Error(), want, raw)
		require.NotContains(t, err.Error(), "secret", "passwords never appear in errors")
	}
	// A URL of the right shape whose parameters pgx refuses points to
	// them, not to the shapes a URL can have.
	_, err := ParseDatabaseURL("postgres://u@h/db?sslmode=bogus")
	require.ErrorContains(t, err, "correct the part named; the parameters accepted are pgx's")
	require.NotContains(t, err.Error(), "use sqlite://")
}

func TestOpenBadInputWritesNothing(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dir := t.TempDir()
	_, err := Open(ctx, "sqlite://"+filepath.Join(dir, "missing-dir", "x.db"), nil)
	require.ErrorContains(t, err, "create the directory first")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "nothing created")

	// A directory, such as a path with a trailing slash.
	_, err = Open(ctx, "sqlite://"+dir+"/", nil)
	require.ErrorContains(t, err, "is a directory: give the path of a database file")

	_, err = Open(ctx, "sqlite://"+filepath.Join(dir, "x.db"), &Config{Schema: "tenant"})
	require.ErrorContains(t, err, "SQLite has no schemas")
	// A server that does not answer is retried until ctx ends (see Open).
	brief, cancel := context.WithCancel(ctx)
	logger, retried := messageLogger("open: retrying a transient failure")
	go func() { <-retried; cancel() }()
	_, err = Open(brief, "postgres://postgres@127.0.0.1:1/test?connect_timeout=2", &Config{Logger: logger})
	require.ErrorIs(t, err, driver.ErrTransient)
	require.Contains(t, err.Error(), "127.0.0.1")

	_, err = Open(ctx, testdb.SQLiteURL(t), &Config{MaxConcurrentTasks: -1})
	require.ErrorContains(t, err, "negative")
	// SQLite binds at most 32,766 values a statement; a claim of 40,000
	// tasks failed on every try.
	_, err = Open(ctx, testdb.SQLiteURL(t), &Config{MaxConcurrentTasks: 40000, ClaimBatchSize: 40000})
	require.ErrorContains(t, err, "use at most 10000 each")
	_, err = Open(ctx, testdb.SQLiteURL(t), &Config{RunnerID: "pod\x00-0"})
	require.ErrorContains(t, err, `Config.RunnerID "pod\x00-0" contains a NUL character`)
	_, err = NewRunner(ctx, nil, &Config{Workflows: []*Workflow{nil}})
	require.ErrorIs(t, err, ErrInvalidWorkflow)
	require.ErrorContains(t, err, "build the workflow with NewWorkflow")
	// A zero Workflow was taken as a workflow named "" without tasks.
	_, err = Open(ctx, testdb.SQLiteURL(t), &Config{Workflows: []*Workflow{{}}})
	require.ErrorIs(t, err, ErrInvalidWorkflow)
	r := openRunner(t, testdb.SQLiteURL(t), nil)
	require.ErrorIs(t, r.Register(&Workflow{}), ErrInvalidWorkflow)
}

func TestUnknownWorkflowWritesNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("nightly-report", Task{Name: "a", Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		_, err := r.Execute(ctx, "nightly-reprot", nil)
		require.ErrorIs(t, err, ErrUnknownWorkflow)
		require.Contains(t, err.Error(), `did you mean "nightly-report"?`)
		_, err = r.ExecuteAsync(ctx, "completely-other", nil)
		require.ErrorContains(t, err, "register it with Config.Workflows or Runner.Register (registered: nightly-report)")
		runs, err := r.List(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, runs)
		evs, err := r.Events(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, evs)
	})
}

func TestRegister(t *testing.T) {
	t.Parallel()
	r := openRunner(t, testdb.SQLiteURL(t), nil)
	a := MustWorkflow("w", Task{Name: "a", Run: ok})
	require.NoError(t, r.Register(a))
	require.NoError(t, r.Register(a), "registering the same workflow again is a no-op")
	other := MustWorkflow("w", Task{Name: "b", Run: ok})
	err := r.Register(other)
	require.ErrorContains(t, err, `a different workflow named "w" is already registered`)
}

func TestSchemaVersionChecks(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := testdb.SQLiteURL(t)
	// Skipping migrations on a fresh database is refused with the fix.
	_, err := Open(ctx, url, &Config{SkipMigrations: true, Logger: quietLogger()})
	require.ErrorIs(t, err, ErrSchemaOutdated)
	require.Contains(t, err.Error(), "cloacina migrate")

	version, err := Migrate(ctx, url, "")
	require.NoError(t, err)
	require.Positive(t, version)
	r, err := Open(ctx, url, &Config{SkipMigrations: true, Logger: quietLogger()})
	require.NoError(t, err)
	require.NoError(t, r.Close())

	// A database from the future is refused.
	path := strings.TrimPrefix(url, "sqlite://")
	db := openRawSQLite(t, path)
	_, err = db.ExecContext(ctx, "INSERT INTO cloacina_migrations (version, name, applied_at) VALUES (999, 'future', 'x')")
	require.NoError(t, err)
	_, err = Open(ctx, url, nil)
	require.ErrorIs(t, err, ErrSchemaTooNew)
	require.Contains(t, err.Error(), "upgrade cloacina")
	_, err = Open(ctx, url, &Config{SkipMigrations: true})
	require.ErrorIs(t, err, ErrSchemaTooNew)
}

func TestRunnerLifecycleErrors(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r, err := Open(ctx, testdb.SQLiteURL(t), &Config{Logger: quietLogger()})
	require.NoError(t, err)
	require.NoError(t, r.Start(ctx))
	require.ErrorIs(t, r.Start(ctx), ErrRunnerStarted)
	require.NoError(t, r.Register(MustWorkflow("w", Task{Name: "a", Run: ok})))
	exec, err := r.ExecuteAsync(ctx, "w", nil)
	require.NoError(t, err)
	_, err = exec.Wait(ctx)
	require.NoError(t, err)
	require.NoError(t, r.Stop(ctx))
	require.NoError(t, r.Stop(ctx), "stopping a stopped runner is a no-op")
	require.NoError(t, r.Start(context.Background()), "a stopped runner can start again")
	require.NoError(t, r.Close())
	require.NoError(t, r.Close())
	require.ErrorIs(t, r.Start(ctx), ErrRunnerClosed)
	_, err = r.ExecuteAsync(ctx, "w", nil)
	require.ErrorIs(t, err, ErrRunnerClosed)
	_, err = exec.Wait(ctx)
	require.ErrorIs(t, err, ErrRunnerClosed, "a handle outliving its runner says why it cannot read")
	_, err = r.Get(ctx, exec.ID())
	require.ErrorIs(t, err, ErrRunnerClosed)
}

// Query filters that can only be typos are refused with the fix, as the
// CLI refuses them: a negative ListOpts.Limit used to list 100 runs, and
// an unknown status or event type matched nothing, silently.
func TestQueryFiltersRefuseUnknownValues(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r := openRunner(t, testdb.SQLiteURL(t), nil)
	_, err := r.List(ctx, &ListOpts{Limit: -1})
	require.ErrorContains(t, err, "ListOpts.Limit -1 is negative: use 0 for the default (100), or a positive bound")
	_, err = r.List(ctx, &ListOpts{Statuses: []PipelineStatus{PipelineFailed, "complete"}})
	require.ErrorContains(t, err, `ListOpts.Statuses has "complete", which is none of them: did you mean "completed"?`)
	_, err = r.List(ctx, &ListOpts{Statuses: []PipelineStatus{"zzzzzzzz"}})
	require.ErrorContains(t, err, "use one of pending, running, paused, completed, failed, cancelled")
	_, err = r.Events(ctx, &EventQuery{Types: []EventType{"task_complete"}})
	require.ErrorContains(t, err, `EventQuery.Types has "task_complete", which is none of them: did you mean "task_completed"?`)
	_, err = r.List(ctx, &ListOpts{Statuses: runStatuses, Limit: 0})
	require.NoError(t, err, "every status is known")
	_, err = r.Events(ctx, &EventQuery{Types: slices.Clone(driver.EventTypes)})
	require.NoError(t, err, "every event type is known")
}

// A Config that Open refuses must leave no database behind: opening a
// SQLite file creates it (an empty database in WAL mode, which operator
// commands would then take for a database to inspect).
func TestOpenBadConfigCreatesNoFile(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "tenant.db")
	for _, c := range []*Config{
		{MaxConcurrentTasks: -1},
		{MaxConcurrentTasks: 40000},
		{HeartbeatInterval: 20 * time.Second, RunnerTimeout: 30 * time.Second},
		{RunnerID: "pod\x00-0"},
		{Workflows: []*Workflow{{}}},
		{Schedules: []Schedule{{Name: "nightly", Workflow: "unregistered", Cron: "0 3 * * *"}}},
	} {
		_, err := Open(ctx, "sqlite://"+path, c)
		require.Error(t, err, "%+v", c)
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		require.Empty(t, entries, "Open(%+v) refused the Config but created files", c)
	}
	// NewRunner checks the Config before it needs a backend.
	_, err := NewRunner(ctx, nil, &Config{MaxRecoveries: -1})
	require.ErrorContains(t, err, "negative")
	_, err = NewRunner(ctx, nil, nil)
	require.ErrorContains(t, err, "NewRunner needs a backend")
}

// A negative count or duration in Config is refused by its name: the
// error used to say only that some field was negative, leaving the reader
// to find which of seven.
func TestOpenNamesTheNegativeConfigField(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{MaxConcurrentTasks: -1}, "Config.MaxConcurrentTasks -1 is negative"},
		{Config{ClaimBatchSize: -5}, "Config.ClaimBatchSize -5 is negative"},
		{Config{PollInterval: -time.Second}, "Config.PollInterval -1s is negative"},
		{Config{TaskTimeout: -time.Minute}, "Config.TaskTimeout -1m0s is negative"},
		{Config{HeartbeatInterval: -time.Second}, "Config.HeartbeatInterval -1s is negative"},
		{Config{RunnerTimeout: -time.Second}, "Config.RunnerTimeout -1s is negative"},
		{Config{MaxRecoveries: -2}, "Config.MaxRecoveries -2 is negative"},
	} {
		_, err := NewRunner(ctx, nil, &c.cfg)
		require.ErrorContains(t, err, c.want, "%+v", c.cfg)
		require.ErrorContains(t, err, "use 0 for the default or a positive value", "the error names the fix")
	}
}

// An interval below a millisecond is a missing unit (PollInterval: 5 is
// five nanoseconds): it used to be taken, and an idle runner then polled
// the database without pause. Open refuses it with the fix.
func TestOpenRefusesIntervalsWithoutAUnit(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	for _, c := range []struct {
		cfg   Config
		field string
	}{
		{Config{PollInterval: 5}, "PollInterval"},
		{Config{HeartbeatInterval: 500 * time.Microsecond, RunnerTimeout: time.Second}, "HeartbeatInterval"},
		{Config{TaskTimeout: 30}, "TaskTimeout"},
	} {
		_, err := Open(ctx, testdb.SQLiteURL(t), &c.cfg)
		require.ErrorContains(t, err, "Config."+c.field, "%+v", c.cfg)
		require.ErrorContains(t, err, "time.Second", "the error names the fix")
	}
	r := openRunner(t, testdb.SQLiteURL(t), &Config{PollInterval: time.Millisecond, HeartbeatInterval: time.Millisecond, TaskTimeout: time.Millisecond})
	require.Equal(t, time.Millisecond, r.cfg.PollInterval, "a millisecond is taken")
	// A task's own Timeout likewise.
	_, err := NewWorkflow("w", Task{Name: "a", Run: ok, Timeout: 30})
	require.ErrorContains(t, err, "below a millisecond")
	_, err = NewWorkflow("w", Task{Name: "a", Run: ok, Timeout: time.Millisecond})
	require.NoError(t, err)
}

// Open says in the log when it creates the PostgreSQL schema, so that a
// mistyped schema= is seen (it gives a working store, empty, with no
// error); it says nothing when the schema is there already.
func TestOpenLogsTheSchemaItCreates(t *testing.T) {
	t.Parallel()
	schema := testdb.NewSchema(t)
	url := testdb.WithSchema(testdb.PostgresURL(), schema)
	open := func() string {
		var log syncBuffer
		r, err := Open(testContext(t), url, &Config{Logger: slog.New(slog.NewTextHandler(&log, nil))})
		require.NoError(t, err)
		require.NoError(t, r.Close())
		return log.String()
	}
	first := open()
	require.Contains(t, first, "created the PostgreSQL schema, which did not exist: if this runner was to join existing runs, check schema= in the database URL")
	require.Contains(t, first, "schema="+schema)
	require.NotContains(t, open(), "created the PostgreSQL schema", "the schema existed at the second Open")
}

// syncBuffer is a log's destination that goroutines may share.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
