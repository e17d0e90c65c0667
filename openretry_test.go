package cloacina

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// flakyProxy forwards TCP connections to the test's PostgreSQL server,
// failing some first: it closes the first refuse connections as soon as
// they are accepted (a server that drops connections while it restarts),
// and, when cutAfter is set, it cuts the first connection it forwards once
// the client has sent cutAfter bytes through it (a connection lost in the
// middle of a session).
type flakyProxy struct {
	t        *testing.T
	target   string
	refuse   int64
	cutAfter int64

	ln       net.Listener
	accepted atomic.Int64
	refused  atomic.Int64
	cut      atomic.Int64
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

// newFlakyProxy starts a proxy (see flakyProxy), stopped when the test ends.
func newFlakyProxy(t *testing.T, refuse, cutAfter int64) *flakyProxy {
	t.Helper()
	u, err := url.Parse(testdb.PostgresURL())
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &flakyProxy{t: t, target: u.Host, refuse: refuse, cutAfter: cutAfter, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.stop)
	return p
}

// url returns base (a PostgreSQL URL) pointed at the proxy.
func (p *flakyProxy) url(base string) string {
	u, err := url.Parse(base)
	require.NoError(p.t, err)
	u.Host = p.ln.Addr().String()
	return u.String()
}

func (p *flakyProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		n := p.accepted.Add(1)
		if n <= p.refuse {
			p.refused.Add(1)
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, s) {
			return
		}
		var budget int64 = -1
		if p.cutAfter > 0 && n == p.refuse+1 {
			budget = p.cutAfter
		}
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			p.pipe(s, c, budget)
			s.Close()
			c.Close()
		}()
		go func() {
			defer p.wg.Done()
			io.Copy(c, s)
			s.Close()
			c.Close()
		}()
	}
}

// pipe copies from client to server; with a budget (not -1), it closes
// both once the client has sent that many bytes.
func (p *flakyProxy) pipe(server, client net.Conn, budget int64) {
	if budget < 0 {
		io.Copy(server, client)
		return
	}
	n, _ := io.CopyN(server, client, budget)
	if n == budget {
		p.cut.Add(1)
	}
}

func (p *flakyProxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *flakyProxy) stop() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// A PostgreSQL server that drops the first connections (restarting, or
// behind a proxy failing over) is retried: Open succeeds once it accepts.
func TestOpenRetriesDroppedConnections(t *testing.T) {
	t.Parallel()
	p := newFlakyProxy(t, 3, 0)
	r, err := Open(testContext(t), p.url(testdb.PostgresSchemaURL(t)), &Config{Logger: quietLogger()})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.EqualValues(t, 3, p.refused.Load())
}

// A connection lost while the schema is migrated is retried from scratch:
// the migration's transaction rolled back, the next attempt applies it.
func TestOpenRetriesAMigrationCutShort(t *testing.T) {
	t.Parallel()
	// The migrations' SQL is several times this long: the first
	// connection is lost while it is sent.
	p := newFlakyProxy(t, 0, 4096)
	url := p.url(testdb.PostgresSchemaURL(t))
	r, err := Open(testContext(t), url, &Config{Logger: quietLogger()})
	require.NoError(t, err)
	defer func() { require.NoError(t, r.Close()) }()
	require.EqualValues(t, 1, p.cut.Load(), "the first connection was cut")
	current, latest, err := r.Driver().MigrationVersion(testContext(t))
	require.NoError(t, err)
	require.Equal(t, latest, current)
}

// When the database stays unreachable, Open gives up as its ctx ends, with
// the transient failure that kept it retrying and what to do about it.
func TestOpenGivesUpWithItsContext(t *testing.T) {
	t.Parallel()
	p := newFlakyProxy(t, 1<<40, 0)
	ctx, cancel := context.WithCancel(testContext(t))
	logger, retried := messageLogger("open: retrying a transient failure")
	go func() {
		<-retried
		<-retried // two retries: Open goes on after the first
		cancel()
	}()
	_, err := Open(ctx, p.url(testdb.PostgresSchemaURL(t)), &Config{Logger: logger})
	require.ErrorIs(t, err, driver.ErrTransient)
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorContains(t, err, "check that the database is up and reachable")
	require.GreaterOrEqual(t, p.refused.Load(), int64(3))
}

// Failures that no retry mends are returned at once, before ctx ends.
func TestOpenFailsAtOnceOnPermanentErrors(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	u, err := url.Parse(testdb.PostgresSchemaURL(t))
	require.NoError(t, err)
	u.User = url.User("cloacina_no_such_role")
	_, err = Open(ctx, u.String(), &Config{Logger: quietLogger()})
	require.Error(t, err)
	require.NotErrorIs(t, err, driver.ErrTransient)
	require.NoError(t, ctx.Err(), "returned before its context ended")

	_, err = Open(ctx, "sqlite://"+t.TempDir()+"/no/such/dir/x.db", &Config{Logger: quietLogger()})
	require.ErrorContains(t, err, "create the directory first")
	require.NoError(t, ctx.Err())
}

// messageLogger returns a logger that sends on the channel, without
// waiting, each time it logs a record whose message starts with msg.
func messageLogger(msg string) (*slog.Logger, <-chan struct{}) {
	ch := make(chan struct{}, 16)
	return slog.New(messageHandler{msg: msg, ch: ch}), ch
}

type messageHandler struct {
	msg string
	ch  chan struct{}
}

func (h messageHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h messageHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h messageHandler) WithGroup(string) slog.Handler            { return h }
func (h messageHandler) Handle(_ context.Context, rec slog.Record) error {
	if strings.HasPrefix(rec.Message, h.msg) {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return nil
}

// Without a deadline on ctx, Open retries for Config.OpenRetry and then
// gives up, saying which setting waits longer; a negative OpenRetry does
// not retry at all.
func TestOpenRetryBoundsAContextWithoutDeadline(t *testing.T) {
	t.Parallel()
	p := newFlakyProxy(t, 1<<40, 0)
	logger, retried := messageLogger("open: retrying a transient failure")
	_, err := Open(context.Background(), p.url(testdb.PostgresSchemaURL(t)), &Config{Logger: logger, OpenRetry: 100 * time.Millisecond})
	require.ErrorIs(t, err, driver.ErrTransient)
	require.ErrorContains(t, err, "Config.OpenRetry")
	require.NotEmpty(t, retried, "it retried before giving up")

	logger, retried = messageLogger("open: retrying a transient failure")
	_, err = Open(context.Background(), p.url(testdb.PostgresSchemaURL(t)), &Config{Logger: logger, OpenRetry: -1})
	require.ErrorIs(t, err, driver.ErrTransient)
	require.Empty(t, retried, "no retry")
}

// Migrate retries as Open does: a connection lost while the schema is
// migrated, then a server that refuses connections for a while.
func TestMigrateRetriesTransientFailures(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	base := testdb.PostgresSchemaURL(t)
	p := newFlakyProxy(t, 0, 4096)
	current, err := Migrate(ctx, p.url(base), "")
	require.NoError(t, err)
	require.EqualValues(t, 1, p.cut.Load(), "the first connection was cut")
	r, err := Open(ctx, base, &Config{Logger: quietLogger(), SkipMigrations: true})
	require.NoError(t, err)
	_, latest, err := r.Driver().MigrationVersion(ctx)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.Equal(t, latest, current)

	p = newFlakyProxy(t, 3, 0)
	again, err := Migrate(ctx, p.url(base), "")
	require.NoError(t, err)
	require.Equal(t, current, again)
	require.EqualValues(t, 3, p.refused.Load())
}
