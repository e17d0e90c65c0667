package postgres_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// Every session of a read-only backend is read-only, so the server itself
// refuses a write, whatever statement sends it.
func TestReadOnlySessions(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	require.NoError(t, open(t, schema).Migrate(ctx))
	ro := openWith(t, &postgres.Opts{Schema: schema, ReadOnly: true})
	require.True(t, ro.ReadOnly())

	var setting string
	require.NoError(t, ro.Pool().QueryRow(ctx, "SHOW default_transaction_read_only").Scan(&setting))
	require.Equal(t, "on", setting)
	_, err := ro.Pool().Exec(ctx, "CREATE TABLE "+pgx.Identifier{schema, "intruder"}.Sanitize()+" (i int)")
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "%v", err)
	require.Equal(t, "25006", pgErr.Code, "read_only_sql_transaction")
	_, err = ro.Begin(ctx)
	require.ErrorIs(t, err, driver.ErrReadOnly)
	require.ErrorContains(t, err, "open it without to write")
}

// A role that may only read the tables can inspect the schema through a
// read-only backend: the access check then asks for SELECT alone. A
// writable backend still asks that role for every privilege it writes
// with, and a read-only one for SELECT on every table.
func TestReadOnlyWithASelectOnlyRole(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	writer := open(t, schema)
	require.NoError(t, writer.Migrate(ctx))
	id := insertPipeline(t, writer)

	role, roURL := testdb.SelectOnlyRoleURL(t, testURL(t), schema)
	conn, err := pgx.Connect(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(ctx))
	r := pgx.Identifier{role}.Sanitize()

	rw, err := postgres.Open(ctx, roURL, &postgres.Opts{Schema: schema})
	require.NoError(t, err)
	defer rw.Close()
	_, _, err = rw.MigrationVersion(ctx)
	require.ErrorIs(t, err, postgres.ErrSchemaAccess)
	require.ErrorContains(t, err, "may not read and write table(s)")

	ro, err := postgres.Open(ctx, roURL, &postgres.Opts{Schema: schema, ReadOnly: true})
	require.NoError(t, err)
	defer ro.Close()
	current, latest, err := ro.MigrationVersion(ctx)
	require.NoError(t, err)
	require.Equal(t, latest, current)
	p, err := ro.Reader().PipelineGet(ctx, id)
	require.NoError(t, err)
	require.Equal(t, "wf", p.WorkflowName)

	_, err = conn.Exec(ctx, "REVOKE SELECT ON "+pgx.Identifier{schema, "execution_events"}.Sanitize()+" FROM "+r)
	require.NoError(t, err)
	_, _, err = ro.MigrationVersion(ctx)
	require.ErrorIs(t, err, postgres.ErrSchemaAccess)
	require.ErrorContains(t, err, `the connected role may not read table(s) execution_events in schema "`+schema+`": connect as a role that may, or grant SELECT on them`)
}

// The channel table is read, never written, by a runner, and not used by
// a read-only backend: a writable backend's role needs only SELECT on it,
// a read-only backend's role nothing at all.
func TestChannelTableNeedsOnlySelect(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	schema := testdb.NewSchema(t)
	writer := open(t, schema)
	require.NoError(t, writer.Migrate(ctx))
	conn, err := pgx.Connect(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	defer conn.Close(context.WithoutCancel(ctx))
	channel := pgx.Identifier{schema, "cloacina_channel"}.Sanitize()

	app, appURL := testdb.ReadWriteRoleURL(t, testURL(t), schema)
	_, err = conn.Exec(ctx, "REVOKE INSERT, UPDATE, DELETE ON "+channel+" FROM "+pgx.Identifier{app}.Sanitize())
	require.NoError(t, err)
	rw, err := postgres.Open(ctx, appURL, &postgres.Opts{Schema: schema})
	require.NoError(t, err)
	defer rw.Close()
	_, _, err = rw.MigrationVersion(ctx)
	require.NoError(t, err)
	sub, err := rw.Listen(ctx)
	require.NoError(t, err)
	sub.Close()

	reader, roURL := testdb.SelectOnlyRoleURL(t, testURL(t), schema)
	_, err = conn.Exec(ctx, "REVOKE SELECT ON "+channel+" FROM "+pgx.Identifier{reader}.Sanitize())
	require.NoError(t, err)
	ro, err := postgres.Open(ctx, roURL, &postgres.Opts{Schema: schema, ReadOnly: true})
	require.NoError(t, err)
	defer ro.Close()
	_, _, err = ro.MigrationVersion(ctx)
	require.NoError(t, err)
}
