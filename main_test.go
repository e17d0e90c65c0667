package cloacina

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

func TestMain(m *testing.M) {
	// CI runs the engine's semantics tests a second time with every
	// workflow decided narrowly (see narrowMin), which the suite's small
	// workflows would otherwise never reach.
	if os.Getenv("CLOACINA_TEST_NARROW") == "all" {
		narrowMin = 0
	}
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait in a test; a hang fails instead of blocking.
const testTimeout = 60 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func quietLogger() *slog.Logger {
	if os.Getenv("CLOACINA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// forEachBackend runs fn as a parallel subtest on SQLite and on PostgreSQL,
// each with its own fresh database.
func forEachBackend(t *testing.T, fn func(t *testing.T, url string)) {
	t.Helper()
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			fn(t, b.URL(t))
		})
	}
}

// openRunner opens a runner on url with fast polling and a quiet logger,
// closed when the test ends.
func openRunner(t *testing.T, url string, cfg *Config) *Runner {
	t.Helper()
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.PollInterval == 0 {
		c.PollInterval = 50 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = quietLogger()
	}
	r, err := Open(testContext(t), url, &c)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	return r
}

// startRunner opens and starts a runner.
func startRunner(t *testing.T, url string, cfg *Config) *Runner {
	t.Helper()
	r := openRunner(t, url, cfg)
	require.NoError(t, r.Start(testContext(t)))
	return r
}

// ok is a task body that does nothing.
func ok(context.Context, *Context) error { return nil }

// setKey returns a task body that sets key to value.
func setKey(key string, value any) TaskFunc {
	return func(_ context.Context, tc *Context) error { return tc.Set(key, value) }
}

// hookTxs returns drv with every transaction wrapped by wrap: a test's
// hook into the engine's transactions (a commit reported lost, a write
// held at a gate, a failure injected).
func hookTxs(drv driver.Driver, wrap func(driver.Tx) driver.Tx) driver.Driver {
	return &txHooks{Driver: drv, wrap: wrap}
}

// hookReader returns drv with its Reader wrapped by wrap: a test's hook
// into the engine's reads outside transactions (a read failed, held or
// slowed).
func hookReader(drv driver.Driver, wrap func(driver.Executor) driver.Executor) driver.Driver {
	return &readerHook{Driver: drv, wrap: wrap}
}

type readerHook struct {
	driver.Driver
	wrap func(driver.Executor) driver.Executor
}

func (d *readerHook) Reader() driver.Executor { return d.wrap(d.Driver.Reader()) }

type txHooks struct {
	driver.Driver
	wrap func(driver.Tx) driver.Tx
}

func (d *txHooks) Begin(ctx context.Context) (driver.Tx, error) {
	tx, err := d.Driver.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return d.wrap(tx), nil
}

// claimerIdle returns a channel that receives each time r's claimer has
// claimed what it could and is about to wait (missed signals are dropped
// past 16).
func claimerIdle(r *Runner) <-chan struct{} {
	idle := make(chan struct{}, 16)
	hook := func(context.Context) {
		select {
		case idle <- struct{}{}:
		default:
		}
	}
	r.idleHook.Store(&hook)
	return idle
}

// waitStartedIdle starts r and waits until its claimer has looked for
// work once as it started and once more with its wake-up subscription in
// place: it then waits for a wake-up or its poll.
func waitStartedIdle(t *testing.T, r *Runner) {
	t.Helper()
	idle := claimerIdle(r)
	require.NoError(t, r.Start(testContext(t)))
	waitFor(t, idle, "the first claim")
	waitFor(t, idle, "the claim after subscribing to wake-ups")
	r.idleHook.Store(nil)
}

// onEvent returns a channel that receives every event this runner commits
// from now on that matches pred: a signal to wait on instead of polling.
func onEvent(r *Runner, pred func(e driver.EventInsert) bool) <-chan driver.EventInsert {
	ch := make(chan driver.EventInsert, 1024)
	prev := r.commitHook.Load()
	hook := func(c *changes) {
		if prev != nil {
			(*prev)(c)
		}
		for _, e := range c.cs.Events {
			if pred(e) {
				select {
				case ch <- e:
				default:
				}
			}
		}
	}
	r.commitHook.Store(&hook)
	return ch
}

// eventOf matches events of one type.
func eventOf(typ EventType) func(driver.EventInsert) bool {
	return func(e driver.EventInsert) bool { return e.Type == typ }
}

// waitFor receives from ch or fails the test at the deadline.
func waitFor[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// openRawSQLite opens a SQLite file directly, for tests that tamper with it.
func openRawSQLite(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", sqlite.DSN(path))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

// slotsFree waits until every slot of r is free again: a slot given back
// twice, or taken and never given back, shows here.
func slotsFree(t *testing.T, r *Runner) {
	t.Helper()
	svc := r.services()
	require.Eventually(t, func() bool { return len(svc.slots) == 0 }, testTimeout, 5*time.Millisecond, "slots still taken")
}

// holdClaimer wakes r's claimer and holds it where it waits for work, so
// that no round of it claims anything, until the returned function (also
// called when the test ends) lets it go.
func holdClaimer(t *testing.T, r *Runner) (letGo func()) {
	t.Helper()
	held, hold := make(chan struct{}, 1), make(chan struct{})
	hook := func(ctx context.Context) {
		select {
		case held <- struct{}{}:
		default:
		}
		select {
		case <-hold:
		case <-ctx.Done():
		}
	}
	r.idleHook.Store(&hook)
	r.wakeClaimer()
	waitFor(t, held, "the claimer to be held")
	letGo = sync.OnceFunc(func() {
		r.idleHook.Store(nil)
		close(hold)
	})
	t.Cleanup(letGo)
	return letGo
}
