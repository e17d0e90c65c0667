package soak

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/driver/sqlite"
)

// store reads the engine's tables (and writes the application's) directly
// with SQL, from the test process: the state the audit log must agree
// with, read without going through the engine.
type store struct {
	db       *sql.DB
	postgres bool
	schema   string
}

// openStore opens a database/sql handle on the database a Cloacina URL
// names.
func openStore(t *testing.T, url string) *store {
	t.Helper()
	u, err := cloacina.ParseDatabaseURL(url)
	require.NoError(t, err)
	s := &store{postgres: u.Backend == "postgres", schema: u.Schema}
	if s.postgres {
		s.db, err = sql.Open("pgx", u.DSN)
		s.db.SetMaxOpenConns(2)
	} else {
		s.db, err = sql.Open("sqlite", sqlite.DSN(u.Path))
	}
	require.NoError(t, err)
	t.Cleanup(func() { s.db.Close() })
	return s
}

// table returns a table name, schema-qualified on PostgreSQL.
func (s *store) table(name string) string {
	if s.postgres {
		return pgx.Identifier{s.schema, name}.Sanitize()
	}
	return name
}

// rebind turns $1-style placeholders into SQLite's ?1.
func (s *store) rebind(q string) string {
	if s.postgres {
		return q
	}
	return strings.ReplaceAll(q, "$", "?")
}

func (s *store) createExecutionsTable(ctx context.Context) error {
	ddl := `CREATE TABLE ` + s.table(executionsTable) + ` (
		id integer PRIMARY KEY, run_id text NOT NULL, task_id text NOT NULL, task_name text NOT NULL,
		attempt integer NOT NULL, runner_id text NOT NULL, pid integer NOT NULL,
		started_at text NOT NULL, ended_at text NOT NULL, outcome text NOT NULL)`
	if s.postgres {
		ddl = `CREATE TABLE ` + s.table(executionsTable) + ` (
			id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run_id uuid NOT NULL, task_id uuid NOT NULL,
			task_name text NOT NULL, attempt integer NOT NULL, runner_id text NOT NULL, pid integer NOT NULL,
			started_at timestamptz NOT NULL, ended_at timestamptz NOT NULL, outcome text NOT NULL)`
	}
	_, err := s.db.ExecContext(ctx, ddl)
	return err
}

// unfinishedRuns counts the runs that have not ended (through the status
// index: the submitter asks often).
func (s *store) unfinishedRuns(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM `+s.table("pipeline_executions")+`
		WHERE status IN ('pending', 'running', 'paused')`).Scan(&n)
	return n, err
}

// runCounts counts all runs and the unfinished ones.
func (s *store) runCounts(ctx context.Context) (total, unfinished int, err error) {
	err = s.db.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(CASE WHEN status IN ('pending', 'running', 'paused') THEN 1 ELSE 0 END), 0)
		FROM `+s.table("pipeline_executions")).Scan(&total, &unfinished)
	return total, unfinished, err
}

// runningTasks counts the Running tasks claimed by one runner, or by any
// runner when runnerID is "".
func (s *store) runningTasks(ctx context.Context, runnerID string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, s.rebind(`SELECT count(*) FROM `+s.table("task_executions")+`
		WHERE status = 'running' AND ($1 = '' OR runner_id = $1)`), runnerID).Scan(&n)
	return n, err
}

// leader returns the holder of the maintenance lease (its newest term), or "".
func (s *store) leader(ctx context.Context) (string, error) {
	var holder string
	err := s.db.QueryRowContext(ctx, `SELECT holder FROM `+s.table("cloacina_lease_terms")+`
		WHERE name = 'cloacina_leader' ORDER BY term DESC LIMIT 1`).Scan(&holder)
	if err == sql.ErrNoRows {
		return "", nil
	}
	return holder, err
}

// heartbeats returns each registered runner's last heartbeat.
func (s *store) heartbeats(ctx context.Context) (map[string]time.Time, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, heartbeat_at FROM `+s.table("cloacina_runners"))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var id string
		var at sqlTime
		if err := rows.Scan(&id, &at); err != nil {
			return nil, err
		}
		out[id] = at.Time
	}
	return out, rows.Err()
}

type runRow struct {
	ID          uuid.UUID
	Status      cloacina.PipelineStatus
	CompletedAt *time.Time
}

type taskRow struct {
	ID     uuid.UUID
	RunID  uuid.UUID
	Name   string
	Status cloacina.TaskStatus
}

func (s *store) runs(ctx context.Context) (map[uuid.UUID]*runRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, status, completed_at FROM `+s.table("pipeline_executions"))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uuid.UUID]*runRow{}
	for rows.Next() {
		var r runRow
		var id uuidText
		var completed sqlTime
		if err := rows.Scan(&id, &r.Status, &completed); err != nil {
			return nil, err
		}
		r.ID = id.UUID
		if completed.Valid {
			r.CompletedAt = &completed.Time
		}
		out[r.ID] = &r
	}
	return out, rows.Err()
}

func (s *store) tasks(ctx context.Context) (map[uuid.UUID]*taskRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, pipeline_execution_id, task_name, status FROM `+s.table("task_executions"))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uuid.UUID]*taskRow{}
	for rows.Next() {
		var r taskRow
		var id, run uuidText
		if err := rows.Scan(&id, &run, &r.Name, &r.Status); err != nil {
			return nil, err
		}
		r.ID, r.RunID = id.UUID, run.UUID
		out[r.ID] = &r
	}
	return out, rows.Err()
}

func (s *store) executions(ctx context.Context) ([]*execution, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT run_id, task_id, task_name, attempt, runner_id, pid, started_at, ended_at, outcome
		FROM `+s.table(executionsTable)+` ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*execution
	for rows.Next() {
		var ex execution
		var run, task uuidText
		var started, ended sqlTime
		if err := rows.Scan(&run, &task, &ex.Task, &ex.Attempt, &ex.RunnerID, &ex.PID, &started, &ended, &ex.Outcome); err != nil {
			return nil, err
		}
		ex.RunID, ex.TaskID, ex.StartedAt, ex.EndedAt = run.UUID, task.UUID, started.Time, ended.Time
		out = append(out, &ex)
	}
	return out, rows.Err()
}

// sqlTime scans a timestamp from either backend: a time.Time from
// PostgreSQL, fixed-width text from SQLite.
type sqlTime struct {
	Time  time.Time
	Valid bool
}

func (t *sqlTime) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*t = sqlTime{}
		return nil
	case time.Time:
		*t = sqlTime{Time: v.UTC(), Valid: true}
		return nil
	case string:
		return t.parse(v)
	case []byte:
		return t.parse(string(v))
	}
	return fmt.Errorf("scan timestamp: unexpected %T", src)
}

func (t *sqlTime) parse(s string) error {
	v, err := time.Parse("2006-01-02T15:04:05.000000Z", s)
	if err != nil {
		return fmt.Errorf("scan timestamp %q: %w", s, err)
	}
	*t = sqlTime{Time: v, Valid: true}
	return nil
}

// uuidText scans a UUID stored as uuid (PostgreSQL) or text (SQLite).
type uuidText struct{ uuid.UUID }

func (u *uuidText) Scan(src any) error {
	switch v := src.(type) {
	case string:
		return u.UUID.Scan(v)
	case []byte:
		if len(v) == 16 {
			copy(u.UUID[:], v)
			return nil
		}
		return u.UUID.Scan(string(v))
	case [16]byte:
		u.UUID = v
		return nil
	}
	return u.UUID.Scan(src)
}
