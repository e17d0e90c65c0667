package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// Migration 6 turns the jsonb context and event columns into json. A
// schema at version 5 with runs, tasks and events in it keeps every value
// (as jsonb rendered it: the text written before is gone), and what is
// written afterwards reads back byte for byte.
func TestMigrationToVerbatimJSONKeepsData(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv, schema := openAtVersion(t, 5)
	var err error

	const (
		input  = `{"b":{"yy":1,"x":[1e2,1.50]},"a":"\u00e9 <&>","big":12345678901234567890}`
		output = `{"done":true,"obj":{"dup":1,"dup":2}}`
		data   = `{"attempt":1,"error":"x < y"}`
	)
	pid, tid, eid := uuid.New(), uuid.New(), uuid.New()
	s := pgx.Identifier{schema}.Sanitize()
	_, err = drv.Pool().Exec(ctx, fmt.Sprintf(`
		WITH p AS (INSERT INTO %[1]s.pipeline_executions (id, workflow_name, workflow_version, status, input, output, created_at, updated_at)
				VALUES ($1, 'wf', 'v1', 'completed', $4::jsonb, $5::jsonb, now(), now())),
			t AS (INSERT INTO %[1]s.task_executions (id, pipeline_execution_id, workflow_name, task_name, position, status,
					attempt, max_attempts, input, output, created_at, updated_at)
				VALUES ($2, $1, 'wf', 'a', 0, 'completed', 1, 1, $4::jsonb, $5::jsonb, now(), now()),
					(gen_random_uuid(), $1, 'wf', 'b', 1, 'not_started', 0, 1, NULL, NULL, now(), now()))
		INSERT INTO %[1]s.execution_events (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
			VALUES ($3, $1, $2, 'task_completed', $6::jsonb, 'w', now())`, s),
		pid, tid, eid, input, output, data)
	require.NoError(t, err)

	require.NoError(t, drv.Migrate(ctx))
	current, latest, err := drv.MigrationVersion(ctx)
	require.NoError(t, err)
	require.Equal(t, latest, current)

	rows, err := drv.Pool().Query(ctx, `SELECT table_name || '.' || column_name, data_type FROM information_schema.columns
		WHERE table_schema = $1 AND column_name IN ('input', 'output', 'event_data') ORDER BY 1`, schema)
	require.NoError(t, err)
	types, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var c [2]string
		return c, r.Scan(&c[0], &c[1])
	})
	require.NoError(t, err)
	require.Equal(t, [][2]string{
		{"cloacina_schedules.input", "json"},
		{"execution_events.event_data", "json"},
		{"pipeline_executions.input", "json"}, {"pipeline_executions.output", "json"},
		{"task_executions.input", "json"}, {"task_executions.output", "json"},
	}, types)

	p, err := drv.Reader().PipelineGet(ctx, pid)
	require.NoError(t, err)
	requireSameValue(t, input, p.Input)
	requireSameValue(t, output, p.Output)
	tasks, err := drv.Reader().TaskList(ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{pid}, WithContexts: true})
	require.NoError(t, err)
	require.Len(t, tasks, 2)
	requireSameValue(t, input, tasks[0].Input)
	requireSameValue(t, output, tasks[0].Output)
	require.Nil(t, tasks[1].Input, "NULL stays NULL")
	require.Nil(t, tasks[1].Output)
	events, err := drv.Reader().EventList(ctx, &driver.EventListParams{PipelineID: &pid})
	require.NoError(t, err)
	require.Len(t, events, 1)
	requireSameValue(t, data, events[0].Data)

	// New writes keep their text.
	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(t.Context())
	now := time.Now()
	require.NoError(t, tx.ChangeSetApply(ctx, &driver.ChangeSet{
		Tasks: []driver.TaskUpdate{{ID: tasks[1].ID, FromStatus: driver.TaskNotStarted, Status: driver.TaskReady,
			Attempt: 1, Input: json.RawMessage(input), Now: now}},
		Events: []driver.EventInsert{{ID: uuid.New(), PipelineID: pid, Type: driver.EventTaskMarkedReady,
			Data: json.RawMessage(data), WorkerID: "w", CreatedAt: now}},
	}))
	require.NoError(t, tx.Commit(ctx))
	tasks, err = drv.Reader().TaskList(ctx, &driver.TaskListParams{IDs: []uuid.UUID{tasks[1].ID}, WithContexts: true})
	require.NoError(t, err)
	require.Equal(t, input, string(tasks[0].Input))
	events, err = drv.Reader().EventList(ctx, &driver.EventListParams{PipelineID: &pid})
	require.NoError(t, err)
	require.Len(t, events, 2)
	require.Equal(t, data, string(events[1].Data))
}

// requireSameValue checks that got is the JSON value want (jsonb drops
// duplicate keys, keeping the last, and prints numbers as numeric does).
func requireSameValue(t *testing.T, want string, got json.RawMessage) {
	t.Helper()
	decode := func(b []byte) any {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		var v any
		require.NoError(t, dec.Decode(&v), "decode %s", b)
		return v
	}
	require.NotNil(t, got)
	w := decode([]byte(want))
	// numeric prints 1e2 as 100: compare numbers by value.
	require.Equal(t, normNumbers(t, w), normNumbers(t, decode(got)), "want %s, got %s", want, got)
}

func normNumbers(t *testing.T, v any) any {
	switch x := v.(type) {
	case json.Number:
		r, ok := new(big.Rat).SetString(string(x))
		require.True(t, ok, "number %s", x)
		return r.RatString()
	case map[string]any:
		for k, e := range x {
			x[k] = normNumbers(t, e)
		}
	case []any:
		for i, e := range x {
			x[i] = normNumbers(t, e)
		}
	}
	return v
}

// Migration 8 adds the parent of a run and drops the lease table that
// migration 7 replaced. A schema at version 7 keeps its runs, which have
// no parent, and takes runs with parents afterwards.
func TestMigrationToRunParentsKeepsRuns(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv, schema := openAtVersion(t, 7)
	var err error
	s := pgx.Identifier{schema}.Sanitize()
	old := uuid.New()
	_, err = drv.Pool().Exec(ctx, fmt.Sprintf(`
		WITH p AS (INSERT INTO %[1]s.pipeline_executions (id, workflow_name, workflow_version, status, input, created_at, updated_at)
			VALUES ($1, 'wf', 'v1', 'running', '{"a":1}', now(), now()))
		INSERT INTO %[1]s.cloacina_leases (name, holder, expires_at) VALUES ('leader', 'r', now())`, s), old)
	require.NoError(t, err)

	require.NoError(t, drv.Migrate(ctx))
	current, latest, err := drv.MigrationVersion(ctx)
	require.NoError(t, err)
	require.Equal(t, latest, current)

	var table *string
	require.NoError(t, drv.Pool().QueryRow(ctx, "SELECT to_regclass($1)::text", pgx.Identifier{schema, "cloacina_leases"}.Sanitize()).Scan(&table))
	require.Nil(t, table, "the old lease table is gone")
	p, err := drv.Reader().PipelineGet(ctx, old)
	require.NoError(t, err)
	require.Equal(t, driver.PipelineRunning, p.Status)
	require.JSONEq(t, `{"a":1}`, string(p.Input))
	require.Nil(t, p.ParentPipelineID, "a run from before the migration has no parent")
	require.Nil(t, p.ParentTaskID)

	task := uuid.New()
	child := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1", Status: driver.PipelinePending,
		Input: json.RawMessage(`{}`), Now: time.Now(), ParentPipelineID: &old, ParentTaskID: &task}
	tx, err := drv.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(t.Context())
	_, err = tx.PipelineInsertMany(ctx, []*driver.PipelineInsertParams{child})
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	children, err := drv.Reader().PipelineList(ctx, &driver.PipelineListParams{ParentPipelineIDs: []uuid.UUID{old}})
	require.NoError(t, err)
	require.Len(t, children, 1)
	require.Equal(t, child.ID, children[0].ID)
	require.Equal(t, task, *children[0].ParentTaskID)
}

// Migration 11 adds the task name that run retention keeps on events. A
// schema at version 10 keeps its events, unnamed, without a rewrite of the
// event table (the column is nullable, with no default), and they take
// their name from their task while it exists. Roles granted the tables
// before the migration need no grant for the column: the role an
// application runs retention as names the events of the runs it deletes,
// and a role that may only read reads the names.
func TestMigrationToEventTaskNamesKeepsEvents(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	drv, schema := openAtVersion(t, 10)
	s := pgx.Identifier{schema}.Sanitize()
	pid, tid := uuid.New(), uuid.New()
	_, err := drv.Pool().Exec(ctx, fmt.Sprintf(`
		WITH p AS (INSERT INTO %[1]s.pipeline_executions (id, workflow_name, workflow_version, status, input, created_at, completed_at, updated_at)
				VALUES ($1, 'wf', 'v1', 'failed', '{}', now() - interval '2 days', now() - interval '2 days', now())),
			t AS (INSERT INTO %[1]s.task_executions (id, pipeline_execution_id, workflow_name, task_name, position, status,
					attempt, max_attempts, created_at, updated_at)
				VALUES ($2, $1, 'wf', 'charge_card', 0, 'failed', 1, 1, now(), now()))
		INSERT INTO %[1]s.execution_events (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at)
			VALUES (gen_random_uuid(), $1, NULL, 'pipeline_started', '{}', 'w', now()),
				(gen_random_uuid(), $1, $2, 'task_failed', '{}', 'w', now())`, s), pid, tid)
	require.NoError(t, err)
	_, app := testdb.ReadWriteRoleURL(t, testdb.PostgresURL(), schema)
	_, reader := testdb.SelectOnlyRoleURL(t, testdb.PostgresURL(), schema)
	file := func() (f uint32) {
		require.NoError(t, drv.Pool().QueryRow(ctx, "SELECT relfilenode FROM pg_class WHERE oid = $1::regclass",
			pgx.Identifier{schema, "execution_events"}.Sanitize()).Scan(&f))
		return f
	}
	before := file()

	require.NoError(t, drv.Migrate(ctx))
	require.Equal(t, before, file(), "the event table is not rewritten")
	var unnamed int
	require.NoError(t, drv.Pool().QueryRow(ctx, "SELECT count(*) FROM "+s+".execution_events WHERE task_name IS NULL").Scan(&unnamed))
	require.Equal(t, 2, unnamed, "existing events stay unnamed")

	names := func(d *Driver) []string {
		t.Helper()
		events, err := d.Reader().EventList(ctx, &driver.EventListParams{PipelineID: &pid})
		require.NoError(t, err)
		var out []string
		for _, ev := range events {
			out = append(out, ev.TaskName)
		}
		return out
	}
	require.Equal(t, []string{"", "charge_card"}, names(drv), "named by their task")

	appDrv, err := Open(ctx, app, &Opts{Schema: schema})
	require.NoError(t, err)
	defer appDrv.Close()
	require.NoError(t, appDrv.Migrate(ctx), "nothing is pending")
	tx, err := appDrv.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.WithoutCancel(ctx))
	ids, err := tx.PipelineDeleteFinished(ctx, &driver.PipelineDeleteParams{Before: time.Now(), Limit: 10})
	require.NoError(t, err)
	require.Len(t, ids, 1)
	require.NoError(t, tx.Commit(ctx))

	readDrv, err := Open(ctx, reader, &Opts{Schema: schema, ReadOnly: true})
	require.NoError(t, err)
	defer readDrv.Close()
	require.Equal(t, []string{"", "charge_card"}, names(readDrv), "named by the copy on the event, once the task is gone")
}

// openAtVersion opens a fresh schema migrated up to version v only.
func openAtVersion(t *testing.T, v int) (*Driver, string) {
	t.Helper()
	schema := testdb.NewSchema(t)
	drv, err := Open(t.Context(), testdb.PostgresURL(), &Opts{Schema: schema})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, drv.Close()) })
	require.NoError(t, drv.migrateTo(t.Context(), v))
	return drv, schema
}

// An application role that may read and write the tables but create
// nothing (the schema's owner migrates) can open with migrations when none
// is pending; with one pending it is told to have the owner migrate, and
// a role that may only read is refused even when nothing is pending.
func TestMigrateAsARoleThatMayNotCreateTables(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	owner, schema := openAtVersion(t, len(migrations)-1)
	migrateAs := func(roleURL string) error {
		drv, err := Open(ctx, roleURL, &Opts{Schema: schema})
		require.NoError(t, err)
		defer drv.Close()
		return drv.Migrate(ctx)
	}
	_, app := testdb.ReadWriteRoleURL(t, testdb.PostgresURL(), schema)
	err := migrateAs(app)
	require.ErrorIs(t, err, ErrSchemaAccess, "a migration is pending")
	require.ErrorContains(t, err, "may not create tables in schema")

	require.NoError(t, owner.Migrate(ctx))
	_, app = testdb.ReadWriteRoleURL(t, testdb.PostgresURL(), schema) // grants cover the new tables
	require.NoError(t, migrateAs(app), "nothing is pending")

	_, reader := testdb.SelectOnlyRoleURL(t, testdb.PostgresURL(), schema)
	err = migrateAs(reader)
	require.ErrorIs(t, err, ErrSchemaAccess)
	require.ErrorContains(t, err, "may not create tables in schema")
}

// A schema a newer release migrated is refused as too new whoever opens
// it, an application role that may not create tables included: telling
// that role to have the owner migrate (and to skip migrations) sent
// users the wrong way.
func TestSchemaTooNewForARoleThatMayNotCreateTables(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	owner, schema := openAtVersion(t, len(migrations))
	_, err := owner.pool.Exec(ctx, "INSERT INTO "+pgx.Identifier{schema}.Sanitize()+".cloacina_migrations (version, name) VALUES ($1, 'future')", len(migrations)+1)
	require.NoError(t, err)
	_, app := testdb.ReadWriteRoleURL(t, testdb.PostgresURL(), schema)
	drv, err := Open(ctx, app, &Opts{Schema: schema})
	require.NoError(t, err)
	defer drv.Close()
	err = drv.Migrate(ctx)
	require.ErrorIs(t, err, driver.ErrSchemaTooNew)
	require.ErrorContains(t, err, "upgrade cloacina")
	require.NotErrorIs(t, err, ErrSchemaAccess)
}
