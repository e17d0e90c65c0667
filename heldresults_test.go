package cloacina

import (
	"context"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/internal/testdb"
)

// signalHandler is a slog handler that closes seen at the first record
// whose message starts with one of prefixes.
type signalHandler struct {
	prefixes []string
	minLevel slog.Level // records below it are ignored
	seen     chan struct{}
	once     *sync.Once
}

// refusalLogger signals the first time the runner reports a write the
// database refused: a transaction it retries, or task results it could not
// record.
func refusalLogger() (*slog.Logger, <-chan struct{}) {
	seen := make(chan struct{})
	return slog.New(signalHandler{prefixes: []string{"retrying transaction", "record task result"}, minLevel: slog.LevelDebug,
		seen: seen, once: &sync.Once{}}), seen
}

// timeoutURL migrates a schema of its own and returns its URL with
// statement_timeout set to ms milliseconds (after migrating: DDL on a
// loaded server can take longer).
func timeoutURL(t *testing.T, ms string) (schema, rawURL string) {
	t.Helper()
	schema = testdb.NewSchema(t)
	u, err := url.Parse(testdb.WithSchema(testdb.PostgresURL(), schema))
	require.NoError(t, err)
	_, err = Migrate(testContext(t), u.String(), "")
	require.NoError(t, err)
	q := u.Query()
	q.Set("statement_timeout", ms)
	u.RawQuery = q.Encode()
	return schema, u.String()
}

// lockTable locks a table of schema in a transaction of the administrator
// until unlock (which the test's cleanup also calls: register it after the
// runner's, so that it runs before the runner closes).
func lockTable(t *testing.T, schema, table string) (unlock func()) {
	t.Helper()
	tx, err := adminConn(t).Begin(testContext(t))
	require.NoError(t, err)
	_, err = tx.Exec(testContext(t), "LOCK TABLE "+pgx.Identifier{schema, table}.Sanitize()+" IN ACCESS EXCLUSIVE MODE")
	require.NoError(t, err)
	var once sync.Once
	unlock = func() { once.Do(func() { tx.Rollback(context.Background()) }) }
	t.Cleanup(unlock)
	return unlock
}

func (h signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h signalHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h signalHandler) WithGroup(string) slog.Handler            { return h }
func (h signalHandler) Handle(_ context.Context, rec slog.Record) error {
	if rec.Level < h.minLevel {
		return nil
	}
	for _, p := range h.prefixes {
		if strings.HasPrefix(rec.Message, p) {
			h.once.Do(func() { close(h.seen) })
		}
	}
	return nil
}

// whileRefused runs a two-task workflow whose first task returns while
// block() makes the database refuse its completion; once the runner has
// met the refusal, unblock() lets writes through. The run must complete
// with the task's real outcome.
func whileRefused(t *testing.T, url string, block, unblock func()) {
	t.Helper()
	ctx := testContext(t)
	started, release := make(chan struct{}), make(chan struct{})
	wf := MustWorkflow("w", Task{Name: "a", Run: func(_ context.Context, c *Context) error {
		close(started)
		<-release
		return c.Set("done", true)
	}}, Task{Name: "b", DependsOn: []string{"a"}, Run: setKey("b", 1)})
	logger, refused := refusalLogger()
	r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, Logger: logger})
	exec, err := r.ExecuteAsync(ctx, "w", nil)
	require.NoError(t, err)
	waitFor(t, started, "task a to start")
	block()
	close(release)
	waitFor(t, refused, "the completion to be refused")
	unblock()

	res, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status, "task a: %q", res.Task("a").Error)
	require.Equal(t, 1, res.Task("a").Attempts)
	done, err := Get[bool](res.Context, "done")
	require.NoError(t, err)
	require.True(t, done)
	requireReplays(t, r, res)
}

// A statement timeout (here: every completion waits on a table lock past
// statement_timeout) is transient: the completion is retried until the
// lock goes.
func TestCompletionRetriedPastStatementTimeouts(t *testing.T) {
	t.Parallel()
	schema, url := timeoutURL(t, "200")
	var unlock func()
	whileRefused(t, url, func() { unlock = lockTable(t, schema, "task_executions") }, func() { unlock() })
}

// A result the database refuses for a reason that is not transient (here:
// the runner's role lost UPDATE on the task table) is held and written
// when the database takes it again, as what the task did. It used to be
// recorded as a failure after one more try, or dropped — leaving the task
// Running under a live runner and the run unfinished.
func TestResultsAreHeldUntilTheDatabaseTakesThem(t *testing.T) {
	t.Parallel()
	tn := newTenant(t)
	admin := adminConn(t)
	table := pgx.Identifier{tn.Schema, "task_executions"}.Sanitize()
	role := pgx.Identifier{tn.Role}.Sanitize()
	whileRefused(t, tn.URL, func() {
		_, err := admin.Exec(testContext(t), "REVOKE UPDATE ON "+table+" FROM "+role)
		require.NoError(t, err)
	}, func() {
		_, err := admin.Exec(testContext(t), "GRANT UPDATE ON "+table+" TO "+role)
		require.NoError(t, err)
	})
}

// Stop keeps its deadline while a claim round retries against a database
// that refuses it (here: the outbox locked past statement_timeout, as an
// outage would): the round is ended instead of waited for. Stop used to
// wait for it, and so for the database, however long.
func TestStopKeepsItsDeadlineWhileAClaimRetries(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	schema, url := timeoutURL(t, "200")
	logger, refused := refusalLogger()
	r := startRunner(t, url, &Config{Workflows: []*Workflow{MustWorkflow("w", Task{Name: "a", Run: ok})},
		PollInterval: 50 * time.Millisecond, Logger: logger})
	unlock := lockTable(t, schema, "task_outbox")
	waitFor(t, refused, "a claim to be retried")

	stopCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- r.Stop(stopCtx) }()
	select {
	case err := <-stopped:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(testTimeout):
		unlock()
		t.Fatalf("Stop waited for the claim round %s past its deadline; it returned %v once the lock went", testTimeout, <-stopped)
	}
}

// A transaction that keeps failing is reported at WARN (here a claim
// against an outbox locked past statement_timeout): retries used to be
// logged at DEBUG only, however long they went on.
func TestRetriesThatGoOnAreWarnedOf(t *testing.T) {
	t.Parallel()
	schema, url := timeoutURL(t, "100")
	warned := make(chan struct{})
	logger := slog.New(signalHandler{prefixes: []string{"retrying transaction"}, minLevel: slog.LevelWarn, seen: warned, once: &sync.Once{}})
	startRunner(t, url, &Config{Workflows: []*Workflow{MustWorkflow("w", Task{Name: "a", Run: ok})},
		PollInterval: 50 * time.Millisecond, Logger: logger})
	lockTable(t, schema, "task_outbox")
	waitFor(t, warned, "a warning that the claim keeps failing")
}
