package postgres

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// The engine's transactions plan with indexes and without JIT, and leave
// the session's settings as they were.
func TestTransactionSettings(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	u, err := url.Parse(testdb.PostgresURL())
	require.NoError(t, err)
	q := u.Query()
	q.Set("pool_max_conns", "1")
	u.RawQuery = q.Encode()
	drv, err := Open(ctx, u.String(), &Opts{Schema: testdb.NewSchema(t)})
	require.NoError(t, err)
	defer drv.Close()

	type querier interface {
		QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	}
	show := func(q querier) (seq, jit string) {
		t.Helper()
		require.NoError(t, q.QueryRow(ctx, "SELECT current_setting('enable_seqscan'), current_setting('jit')").Scan(&seq, &jit))
		return seq, jit
	}
	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	seq, jit := show(tx.(*pgTx))
	require.Equal(t, "off", seq)
	require.Equal(t, "off", jit)
	require.NoError(t, tx.Commit(ctx))

	// The pool's one connection, after the transaction.
	seq, _ = show(drv.pool)
	require.Equal(t, "on", seq, "the setting ended with the transaction")
}

// A lock wait bound lasts until it is lifted (LimitLockWait with zero),
// and a transaction that notifies lifts it for its COMMIT, whose
// notification lock every notifying commit shares: the bound is for row
// locks. Each case reads the setting its next statement runs under.
func TestLockWaitBoundIsLifted(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv, err := Open(ctx, testdb.PostgresURL(), &Opts{Schema: testdb.NewSchema(t)})
	require.NoError(t, err)
	t.Cleanup(func() { drv.Close() }) // after the transactions' rollbacks
	require.NoError(t, drv.Migrate(ctx))

	timeout := func(tx *pgTx) string {
		t.Helper()
		var v string
		require.NoError(t, tx.QueryRow(ctx, "SELECT current_setting('lock_timeout')").Scan(&v))
		return v
	}
	begin := func() *pgTx {
		t.Helper()
		tx, err := drv.Begin(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { tx.Rollback(context.WithoutCancel(ctx)) })
		return tx.(*pgTx)
	}

	tx := begin()
	tx.LimitLockWait(200 * time.Millisecond)
	require.Equal(t, "200ms", timeout(tx), "sent with BEGIN")
	tx.LimitLockWait(0)
	require.Equal(t, "0", timeout(tx), "lifted mid-transaction")
	tx.LimitLockWait(-time.Second)
	require.Equal(t, "0", timeout(tx))
	tx.LimitLockWait(time.Microsecond)
	require.Equal(t, "1ms", timeout(tx), "a positive bound is at least a millisecond")

	tx = begin()
	tx.LimitLockWait(50 * time.Millisecond)
	tx.LimitLockWait(0)
	require.Equal(t, "0", timeout(tx), "lifted before BEGIN went out")

	tx = begin()
	tx.LimitLockWait(50 * time.Millisecond)
	require.NoError(t, tx.ChangeSetApply(ctx, &driver.ChangeSet{}))
	require.Equal(t, "50ms", timeout(tx), "no notification: the bound stays")
	require.NoError(t, tx.ChangeSetApply(ctx, &driver.ChangeSet{Notify: []string{"wake"}}))
	require.Equal(t, "0", timeout(tx), "a notifying transaction commits without the bound")
	require.NoError(t, tx.Commit(ctx))
}
