package postgres

import (
	"context"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

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
