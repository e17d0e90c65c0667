package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// timeLayout is fixed-width, so text order is time order.
const timeLayout = "2006-01-02T15:04:05.000000Z"

// formatTime writes t in the fixed-width layout. A time beyond the range
// it can write (a cutoff far in the future, say) is written as the bound
// (driver.ClampTime), so that text order stays time order.
func formatTime(t time.Time) string {
	return driver.ClampTime(t).Format(timeLayout)
}

func formatTimePtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return formatTime(*t)
}

// parseTime reads a stored timestamp. Every timestamp this driver writes
// has timeLayout's fixed width, and a completion reads several per task of
// its run, so those are read digit by digit (36 ns against time.Parse's 125);
// anything else goes to time.Parse, which also words the error.
func parseTime(s string) (time.Time, error) {
	if t, ok := parseFixedTime(s); ok {
		return t, nil
	}
	t, err := time.Parse(timeLayout, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("sqlite: bad timestamp %q: %w", s, err)
	}
	return t, nil
}

// parseFixedTime parses s when it is exactly in timeLayout with every field
// in range, and reports whether it was.
func parseFixedTime(s string) (time.Time, bool) {
	if len(s) != len(timeLayout) || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' ||
		s[19] != '.' || s[26] != 'Z' {
		return time.Time{}, false
	}
	ok := true
	num := func(from, to int) int {
		n := 0
		for i := from; i < to; i++ {
			c := s[i]
			if c < '0' || c > '9' {
				ok = false
				return 0
			}
			n = n*10 + int(c-'0')
		}
		return n
	}
	year, month, day := num(0, 4), num(5, 7), num(8, 10)
	hour, minute, sec, micro := num(11, 13), num(14, 16), num(17, 19), num(20, 26)
	if !ok || month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, micro*1000, time.UTC)
	if t.Day() != day { // the 31st of a 30-day month, say: time.Date would normalise it
		return time.Time{}, false
	}
	return t, true
}

func parseTimePtr(ns sql.NullString) (*time.Time, error) {
	if !ns.Valid {
		return nil, nil
	}
	t, err := parseTime(ns.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

func jsonArg(m json.RawMessage) any {
	if m == nil {
		return nil
	}
	return string(m)
}

func jsonValue(ns sql.NullString) json.RawMessage {
	if !ns.Valid {
		return nil
	}
	return json.RawMessage(ns.String)
}

// dbtx is what *sql.DB and *sql.Tx have in common.
type dbtx interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

// stmtOnce is a statement run once per row by a loop: it is taken from
// the write transaction's statement cache, or prepared on first use and
// reused for the rest of the call, so SQLite parses it once per connection
// or at worst once per call rather than once per row.
type stmtOnce struct {
	e     *executor
	query string
	stmt  *sql.Stmt
}

func (s *stmtOnce) exec(ctx context.Context, args ...any) (sql.Result, error) {
	if s.stmt == nil {
		st := s.e.stmt(ctx, s.query)
		if st == nil {
			var err error
			if st, err = s.e.db.PrepareContext(ctx, s.query); err != nil {
				return nil, err
			}
		}
		s.stmt = st
	}
	return s.stmt.ExecContext(ctx, args...)
}

func (s *stmtOnce) close() {
	if s.stmt != nil {
		s.stmt.Close()
	}
}

type executor struct {
	db dbtx
	// cache and tx are set on a write transaction's executor: its hot
	// statements come from cache, bound to tx (which is db).
	cache *stmtCache
	tx    *sql.Tx
}

func placeholders(n int) string {
	if n == 0 {
		return ""
	}
	return strings.Repeat("?,", n-1) + "?"
}

// boxed keeps the last value bound in one column of a multi-row statement
// with its bind argument, so that a value that repeats from row to row is
// formatted and boxed once.
type boxed[K comparable] struct {
	key K
	arg any
}

// get returns key's bind argument, made by format unless key is the last
// value got.
func (b *boxed[K]) get(key K, format func(K) any) any {
	if b.arg == nil || key != b.key {
		b.key, b.arg = key, format(key)
	}
	return b.arg
}

func uuidArg(id uuid.UUID) any { return id.String() }
func stringArg(s string) any   { return s }
func timeArg(t time.Time) any  { return formatTime(t) }

func textArg[S ~string](s S) any { return string(s) }

// timePtrArg is the bind argument of a nullable time, boxed once in b
// while it repeats.
func timePtrArg(b *boxed[time.Time], t *time.Time) any {
	if t == nil {
		return nil
	}
	return b.get(*t, timeArg)
}

// optIDArg is the bind argument of a nullable id: nil is NULL.
func optIDArg(id *uuid.UUID) any {
	if id == nil {
		return nil
	}
	return id.String()
}

func uuidArgs(ids []uuid.UUID) []any {
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id.String()
	}
	return args
}

func stringArgs[T ~string](ss []T) []any {
	args := make([]any, len(ss))
	for i, s := range ss {
		args[i] = string(s)
	}
	return args
}

const pipelineColumns = `id, workflow_name, workflow_version, status, input, output, error, created_at, started_at, completed_at, updated_at,
	parent_pipeline_execution_id, parent_task_execution_id`

func collectPipelines(rows *sql.Rows, err error) ([]*driver.Pipeline, error) {
	if err != nil {
		return nil, mapError(err)
	}
	defer rows.Close()
	var out []*driver.Pipeline
	s := newPipelineScan()
	for rows.Next() {
		p, err := s.scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, mapError(rows.Err())
}

// PipelineInsertMany inserts row by row: statements cost no round trip
// here.
func (e *executor) PipelineInsertMany(ctx context.Context, ps []*driver.PipelineInsertParams) ([]uuid.UUID, error) {
	var inserted []uuid.UUID
	insert := &stmtOnce{e: e, query: `INSERT INTO pipeline_executions
			(id, workflow_name, workflow_version, status, input, started_at, created_at, updated_at,
				parent_pipeline_execution_id, parent_task_execution_id)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`}
	defer insert.close()
	for _, p := range ps {
		now := formatTime(p.Now)
		var started any
		if p.Status == driver.PipelineRunning {
			started = now
		}
		res, err := insert.exec(ctx,
			p.ID.String(), p.WorkflowName, p.WorkflowVersion, string(p.Status), string(p.Input), started, now, now,
			optIDArg(p.ParentPipelineID), optIDArg(p.ParentTaskID))
		if err != nil {
			return nil, fmt.Errorf("sqlite: insert pipeline %s: %w", p.ID, mapError(err))
		}
		n, err := res.RowsAffected()
		if err != nil {
			return nil, mapError(err)
		}
		if n == 1 {
			inserted = append(inserted, p.ID)
		}
	}
	return inserted, nil
}

func (e *executor) PipelineGet(ctx context.Context, id uuid.UUID) (*driver.Pipeline, error) {
	p, err := newPipelineScan().scan(e.db.QueryRowContext(ctx, `SELECT `+pipelineColumns+` FROM pipeline_executions WHERE id = ?`, id.String()))
	if err != nil {
		return nil, fmt.Errorf("sqlite: get pipeline %s: %w", id, err)
	}
	return p, nil
}

func (e *executor) PipelineList(ctx context.Context, p *driver.PipelineListParams) ([]*driver.Pipeline, error) {
	var where []string
	var args []any
	if len(p.IDs) > 0 {
		where = append(where, "id IN ("+placeholders(len(p.IDs))+")")
		args = append(args, uuidArgs(p.IDs)...)
	}
	if len(p.Statuses) > 0 {
		where = append(where, "status IN ("+placeholders(len(p.Statuses))+")")
		args = append(args, stringArgs(p.Statuses)...)
	}
	if p.WorkflowName != "" {
		where = append(where, "workflow_name = ?")
		args = append(args, p.WorkflowName)
	}
	if len(p.ParentPipelineIDs) > 0 {
		// IS NOT NULL is implied; it is spelled out as on PostgreSQL,
		// where it steers the planner to the partial index on parents.
		where = append(where, "parent_pipeline_execution_id IS NOT NULL AND parent_pipeline_execution_id IN ("+placeholders(len(p.ParentPipelineIDs))+")")
		args = append(args, uuidArgs(p.ParentPipelineIDs)...)
	}
	if p.CreatedBefore != nil {
		where = append(where, "(created_at, id) < (?, ?)")
		args = append(args, formatTime(*p.CreatedBefore), p.BeforeID.String())
	}
	if p.CreatedSince != nil {
		where = append(where, "created_at >= ?")
		args = append(args, formatTime(*p.CreatedSince))
	}
	if p.CreatedUntil != nil {
		where = append(where, "created_at < ?")
		args = append(args, formatTime(*p.CreatedUntil))
	}
	q := `SELECT ` + pipelineColumns + ` FROM pipeline_executions`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY created_at DESC, id DESC"
	if p.Limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", p.Limit)
	}
	out, err := collectPipelines(e.db.QueryContext(ctx, q, args...))
	if err != nil {
		return nil, fmt.Errorf("sqlite: list pipelines: %w", err)
	}
	return out, nil
}

// PipelineLockNoWait is PipelineLock: the write lock the transaction holds
// serialises every writer, so nothing is waited for.
func (e *executor) PipelineLockNoWait(ctx context.Context, ids []uuid.UUID) ([]*driver.Pipeline, error) {
	return e.PipelineLock(ctx, ids)
}

// PipelineLockSkipLocked is PipelineLock: no other transaction can hold a
// row while this one holds the database.
func (e *executor) PipelineLockSkipLocked(ctx context.Context, ids []uuid.UUID) ([]*driver.Pipeline, error) {
	return e.PipelineLock(ctx, ids)
}

// PipelineLock needs no row locks on SQLite: the IMMEDIATE transaction
// already holds the database write lock.
func (e *executor) PipelineLock(ctx context.Context, ids []uuid.UUID) ([]*driver.Pipeline, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	out, err := collectPipelines(e.queryIn(ctx, len(ids), `SELECT `+pipelineColumns+` FROM pipeline_executions
		WHERE id IN (`+inList(len(ids))+`) ORDER BY id`, padIn(uuidArgs(ids), len(ids))...))
	if err != nil {
		return nil, fmt.Errorf("sqlite: lock pipelines: %w", err)
	}
	return out, nil
}

func (e *executor) TaskInsertMany(ctx context.Context, tasks []driver.TaskInsert) error {
	const cols = 16
	for start := 0; start < len(tasks); {
		part := tasks[start : start+insertChunk(len(tasks)-start)]
		start += len(part)
		args := make([]any, 0, len(part)*cols)
		for _, t := range part {
			now := formatTime(t.Now)
			var started any
			if t.Status == driver.TaskRunning {
				started = now
			}
			args = append(args, t.ID.String(), t.PipelineID.String(), t.WorkflowName, t.Name, t.Position, string(t.Status),
				t.Attempt, t.MaxAttempts, jsonArg(t.Input), t.Error, formatTimePtr(t.AvailableAt), t.RunnerID, started, now, now,
				openDepsArg(t.OpenDeps))
		}
		q := valuesRows(`INSERT INTO task_executions (id, pipeline_execution_id, workflow_name, task_name, position, status,
			attempt, max_attempts, input, error, available_at, runner_id, started_at, created_at, updated_at, open_deps) VALUES `, cols, len(part))
		if _, err := e.hotExec(ctx, q, args...); err != nil {
			return fmt.Errorf("sqlite: insert tasks: %w", mapError(err))
		}
	}
	return nil
}

const taskColumns = `id, pipeline_execution_id, workflow_name, task_name, position, status, attempt, max_attempts,
	%s, error, runner_id, recovery_count, sub_status, available_at, created_at, started_at, completed_at, updated_at,
	COALESCE(open_deps, 0)`

// taskSelect returns the task columns, with the contexts or without.
func taskSelect(withContexts bool) string {
	if withContexts {
		return taskColumnsWithContexts
	}
	return taskColumnsWithoutContexts
}

var (
	taskColumnsWithContexts    = fmt.Sprintf(taskColumns, "input, output")
	taskColumnsWithoutContexts = fmt.Sprintf(taskColumns, "NULL, NULL")
)

func collectTasks(rows *sql.Rows, err error) ([]*driver.Task, error) {
	if err != nil {
		return nil, mapError(err)
	}
	defer rows.Close()
	var out []*driver.Task
	s := newTaskScan()
	for rows.Next() {
		t, err := s.scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, mapError(rows.Err())
}

func (e *executor) TaskList(ctx context.Context, p *driver.TaskListParams) ([]*driver.Task, error) {
	var where []string
	var args []any
	if len(p.PipelineIDs) > 0 {
		where = append(where, "pipeline_execution_id IN ("+inList(len(p.PipelineIDs))+")")
		args = padIn(append(args, uuidArgs(p.PipelineIDs)...), len(p.PipelineIDs))
	}
	if len(p.IDs) > 0 {
		where = append(where, "id IN ("+inList(len(p.IDs))+")")
		args = padIn(append(args, uuidArgs(p.IDs)...), len(p.IDs))
	}
	if len(p.Names) > 0 {
		where = append(where, "task_name IN ("+inList(len(p.Names))+")")
		args = padIn(append(args, stringArgs(p.Names)...), len(p.Names))
	}
	if len(where) == 0 || len(p.Names) > 0 && len(p.PipelineIDs) == 0 {
		return nil, errors.New("sqlite: list tasks: give pipeline ids or task ids")
	}
	q := `SELECT ` + taskSelect(p.WithContexts) + ` FROM task_executions WHERE ` + strings.Join(where, " AND ") +
		` ORDER BY pipeline_execution_id, position`
	out, err := collectTasks(e.queryIn(ctx, max(len(p.PipelineIDs), len(p.IDs), len(p.Names)), q, args...))
	if err != nil {
		return nil, fmt.Errorf("sqlite: list tasks: %w", err)
	}
	return out, nil
}

func (e *executor) TaskClaim(ctx context.Context, p *driver.TaskClaimParams) (*driver.TaskClaimResult, error) {
	res := &driver.TaskClaimResult{}
	if len(p.Workflows) == 0 || p.Limit <= 0 {
		return res, nil
	}
	now := formatTime(p.Now)
	args := padIn(append([]any{now}, stringArgs(p.Workflows)...), len(p.Workflows))
	filter := ""
	if n := len(p.RunIDs); n > 0 {
		filter = ` AND task_execution_id IN (SELECT id FROM task_executions WHERE pipeline_execution_id IN (` + inList(n) + `))`
		args = padIn(append(args, uuidArgs(p.RunIDs)...), n)
	}
	args = append(args, p.Limit)
	rows, err := e.queryIn(ctx, max(len(p.Workflows), len(p.RunIDs)), `DELETE FROM task_outbox WHERE id IN (
			SELECT id FROM task_outbox WHERE available_at <= ? AND workflow_name IN (`+inList(len(p.Workflows))+`)`+filter+`
			ORDER BY available_at, id LIMIT ?)
		RETURNING task_execution_id, attempt`, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: claim outbox rows: %w", mapError(err))
	}
	attempts := map[string]int{}
	var ids []any
	var id string
	var attempt int
	for rows.Next() {
		if err := rows.Scan(&id, &attempt); err != nil {
			rows.Close()
			return nil, mapError(err)
		}
		attempts[id] = attempt
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, mapError(err)
	}
	if len(ids) == 0 {
		return res, nil
	}
	args = padIn(append([]any{p.RunnerID, now, now}, ids...), len(ids))
	tasks, err := collectTasks(e.queryIn(ctx, len(ids), `UPDATE task_executions
		SET status = 'running', runner_id = ?, started_at = ?, updated_at = ?
		WHERE id IN (`+inList(len(ids))+`) AND status = 'ready'
		RETURNING `+taskSelect(true), args...))
	if err != nil {
		return nil, fmt.Errorf("sqlite: claim tasks: %w", err)
	}
	var pids []any
	seen := map[uuid.UUID]bool{}
	for _, t := range tasks {
		if attempts[t.ID.String()] != t.Attempt {
			return nil, fmt.Errorf("sqlite: claim task %s: outbox attempt %d does not match task attempt %d", t.ID, attempts[t.ID.String()], t.Attempt)
		}
		if !seen[t.PipelineID] {
			seen[t.PipelineID] = true
			pids = append(pids, t.PipelineID.String())
		}
	}
	res.Tasks = tasks
	// The write transaction holds the database lock: no run can be locked
	// by anyone else, so every Pending run of these tasks starts. The
	// unary + keeps SQLite from walking every Pending run through the
	// status index, which it guesses is cheaper than two or more lookups
	// by id.
	rows, err = e.queryIn(ctx, len(pids), `UPDATE pipeline_executions SET status = 'running', started_at = ?, updated_at = ?
		WHERE id IN (`+inList(len(pids))+`) AND +status = 'pending' RETURNING id, workflow_version`, padIn(append([]any{now, now}, pids...), len(pids))...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: start pipelines: %w", mapError(err))
	}
	defer rows.Close()
	for rows.Next() {
		var id, version string
		if err := rows.Scan(&id, &version); err != nil {
			return nil, mapError(err)
		}
		pid, err := uuid.Parse(id)
		if err != nil {
			return nil, err
		}
		res.Started = append(res.Started, pid)
		res.StartedVersions = append(res.StartedVersions, version)
	}
	return res, mapError(rows.Err())
}

func (e *executor) TaskFinishMany(ctx context.Context, p *driver.TaskFinishParams) (*driver.TaskFinishResult, error) {
	res := &driver.TaskFinishResult{}
	if len(p.LockPipelineIDs) > 0 {
		pipes, err := e.PipelineLock(ctx, p.LockPipelineIDs)
		if err != nil {
			return nil, err
		}
		res.Pipelines = pipes
	}
	finish := &stmtOnce{e: e, query: `UPDATE task_executions
			SET status = ?, output = COALESCE(?, output), error = ?, attempt = ?, available_at = ?,
				completed_at = COALESCE(?, completed_at), runner_id = ?, recovery_count = ?, sub_status = '', updated_at = ?
			WHERE id = ? AND status = 'running' AND runner_id = ? AND attempt = ? AND recovery_count = ?`}
	defer finish.close()
	var status boxed[driver.TaskStatus]
	var runner boxed[string]
	var now, available boxed[time.Time]
	for i := range p.Finishes {
		f := &p.Finishes[i]
		nowArg := now.get(f.Now, timeArg)
		var completed any
		if f.Status.Terminal() {
			completed = nowArg
		}
		fence := runner.get(f.Fence.RunnerID, stringArg)
		newRunner := fence
		if f.Status == driver.TaskReady {
			newRunner = ""
		}
		r, err := finish.exec(ctx,
			status.get(f.Status, textArg), jsonArg(f.Output), f.Error, f.Attempt, timePtrArg(&available, f.AvailableAt), completed, newRunner,
			f.RecoveryCount, nowArg, f.Fence.TaskID.String(), fence, f.Fence.Attempt, f.Fence.RecoveryCount)
		if err != nil {
			return nil, fmt.Errorf("sqlite: finish task %s: %w", f.Fence.TaskID, mapError(err))
		}
		if n, err := r.RowsAffected(); err != nil {
			return nil, mapError(err)
		} else if n == 1 {
			res.Finished = append(res.Finished, f.Fence.TaskID)
		}
	}
	if len(p.ListPipelineIDs) > 0 {
		tasks, err := e.TaskList(ctx, &driver.TaskListParams{PipelineIDs: p.ListPipelineIDs, WithContexts: !p.ListStatusOnly})
		if err != nil {
			return nil, err
		}
		res.Tasks = tasks
	}
	return res, nil
}

func (e *executor) OutboxPeek(ctx context.Context, p *driver.OutboxPeekParams) (*driver.OutboxPeekResult, error) {
	if len(p.Workflows) == 0 {
		return &driver.OutboxPeekResult{}, nil
	}
	now := formatTime(p.Now)
	in := placeholders(len(p.Workflows))
	args := append([]any{now}, stringArgs(p.Workflows)...)
	args = append(args, now)
	args = append(args, stringArgs(p.Workflows)...)
	var claimable bool
	var next sql.NullString
	err := e.db.QueryRowContext(ctx, `SELECT
		EXISTS (SELECT 1 FROM task_outbox WHERE available_at <= ? AND workflow_name IN (`+in+`)),
		(SELECT MIN(available_at) FROM task_outbox WHERE available_at > ? AND workflow_name IN (`+in+`))`, args...).Scan(&claimable, &next)
	if err != nil {
		return nil, fmt.Errorf("sqlite: peek outbox: %w", mapError(err))
	}
	nextAt, err := parseTimePtr(next)
	if err != nil {
		return nil, err
	}
	return &driver.OutboxPeekResult{Claimable: claimable, NextAvailableAt: nextAt}, nil
}

func (e *executor) OutboxDelete(ctx context.Context, p *driver.OutboxDeleteParams) (int, error) {
	res, err := e.db.ExecContext(ctx, `DELETE FROM task_outbox WHERE task_execution_id IN
		(SELECT id FROM task_executions WHERE pipeline_execution_id = ?)`, p.PipelineID.String())
	if err != nil {
		return 0, fmt.Errorf("sqlite: delete outbox rows of pipeline %s: %w", p.PipelineID, mapError(err))
	}
	n, err := res.RowsAffected()
	return int(n), mapError(err)
}

func (e *executor) ChangeSetApply(ctx context.Context, c *driver.ChangeSet) error {
	if len(c.NewPipelines) > 0 {
		ids, err := e.PipelineInsertMany(ctx, c.NewPipelines)
		if err != nil {
			return err
		}
		if len(ids) != len(c.NewPipelines) {
			return fmt.Errorf("sqlite: insert pipelines: %d of %d exist already: %w", len(c.NewPipelines)-len(ids), len(c.NewPipelines), driver.ErrConflict)
		}
	}
	if err := e.TaskInsertMany(ctx, c.NewTasks); err != nil {
		return err
	}
	taskUpdate := &stmtOnce{e: e, query: `UPDATE task_executions
			SET status = ?, attempt = ?, input = COALESCE(?, input), error = ?, available_at = ?,
				completed_at = COALESCE(?, completed_at), runner_id = COALESCE(?, runner_id),
				started_at = COALESCE(?, started_at), updated_at = ?, open_deps = ?
			WHERE id = ? AND status = ?`}
	defer taskUpdate.close()
	var status, from boxed[driver.TaskStatus]
	var runners boxed[string]
	var now, available boxed[time.Time]
	for i := range c.Tasks {
		u := &c.Tasks[i]
		nowArg := now.get(u.Now, timeArg)
		var completed, runner, started any
		if u.Status.Terminal() {
			completed = nowArg
		}
		if u.Status == driver.TaskRunning {
			runner, started = runners.get(u.RunnerID, stringArg), nowArg
		}
		res, err := taskUpdate.exec(ctx,
			status.get(u.Status, textArg), u.Attempt, jsonArg(u.Input), u.Error, timePtrArg(&available, u.AvailableAt), completed, runner,
			started, nowArg, openDepsArg(u.OpenDeps), u.ID.String(), from.get(u.FromStatus, textArg))
		if err != nil {
			return fmt.Errorf("sqlite: update task %s: %w", u.ID, mapError(err))
		}
		if n, err := res.RowsAffected(); err != nil {
			return mapError(err)
		} else if n != 1 {
			return fmt.Errorf("sqlite: update task %s from %s to %s: %w", u.ID, u.FromStatus, u.Status, driver.ErrConflict)
		}
	}
	if len(c.Outbox) > 0 {
		const cols = 5
		var workflow boxed[string]
		var available, now boxed[time.Time]
		for start := 0; start < len(c.Outbox); {
			part := c.Outbox[start : start+insertChunk(len(c.Outbox)-start)]
			start += len(part)
			args := make([]any, 0, len(part)*cols)
			for i := range part {
				o := &part[i]
				args = append(args, o.TaskID.String(), o.Attempt, workflow.get(o.WorkflowName, stringArg),
					available.get(o.AvailableAt, timeArg), now.get(o.Now, timeArg))
			}
			q := valuesRows(`INSERT INTO task_outbox (task_execution_id, attempt, workflow_name, available_at, created_at) VALUES `, cols, len(part))
			if _, err := e.hotExec(ctx, q, args...); err != nil {
				return fmt.Errorf("sqlite: insert outbox rows: %w", mapError(err))
			}
		}
	}
	pipelineUpdate := &stmtOnce{e: e, query: `UPDATE pipeline_executions
			SET status = ?, output = COALESCE(?, output), error = ?, started_at = COALESCE(started_at, ?),
				completed_at = COALESCE(?, completed_at), updated_at = ?
			WHERE id = ? AND status = ?`}
	defer pipelineUpdate.close()
	var pstatus, pfrom boxed[driver.PipelineStatus]
	var pnow, started, completed boxed[time.Time]
	for i := range c.Pipelines {
		u := &c.Pipelines[i]
		res, err := pipelineUpdate.exec(ctx,
			pstatus.get(u.Status, textArg), jsonArg(u.Output), u.Error, timePtrArg(&started, u.StartedAt), timePtrArg(&completed, u.CompletedAt),
			pnow.get(u.Now, timeArg), u.ID.String(), pfrom.get(u.FromStatus, textArg))
		if err != nil {
			return fmt.Errorf("sqlite: update pipeline %s: %w", u.ID, mapError(err))
		}
		if n, err := res.RowsAffected(); err != nil {
			return mapError(err)
		} else if n != 1 {
			return fmt.Errorf("sqlite: update pipeline %s from %s to %s: %w", u.ID, u.FromStatus, u.Status, driver.ErrConflict)
		}
	}
	if err := e.eventInsertMany(ctx, c.Events); err != nil {
		return err
	}
	return nil
}

func (e *executor) eventInsertMany(ctx context.Context, events []driver.EventInsert) error {
	const cols = 7
	for start := 0; start < len(events); {
		part := events[start : start+insertChunk(len(events)-start)]
		start += len(part)
		args := make([]any, 0, len(part)*cols)
		// The events' data share one string; the values that repeat from
		// event to event (the run, the task, the type, the runner, the
		// time) are formatted and boxed once each.
		var texts strings.Builder
		for i := range part {
			if part[i].Data == nil {
				texts.WriteString("{}")
			}
			texts.Write(part[i].Data)
		}
		data := texts.String()
		var pid, task boxed[uuid.UUID]
		var worker boxed[string]
		var created boxed[time.Time]
		types := map[driver.EventType]any{}
		for i := range part {
			ev := &part[i]
			var taskArg any
			if ev.TaskID != nil {
				taskArg = task.get(*ev.TaskID, uuidArg)
			}
			typ, ok := types[ev.Type]
			if !ok {
				typ = string(ev.Type)
				types[ev.Type] = typ
			}
			n := len(ev.Data)
			if ev.Data == nil {
				n = len("{}")
			}
			args = append(args, ev.ID.String(), pid.get(ev.PipelineID, uuidArg), taskArg, typ, data[:n],
				worker.get(ev.WorkerID, stringArg), created.get(ev.CreatedAt, timeArg))
			data = data[n:]
		}
		q := valuesRows(`INSERT INTO execution_events (id, pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at) VALUES `, cols, len(part))
		if _, err := e.hotExec(ctx, q, args...); err != nil {
			return fmt.Errorf("sqlite: insert events: %w", mapError(err))
		}
	}
	return nil
}

func (e *executor) EventList(ctx context.Context, p *driver.EventListParams) ([]*driver.Event, error) {
	var where []string
	var args []any
	if p.PipelineID != nil {
		where = append(where, "e.pipeline_execution_id = ?")
		args = append(args, p.PipelineID.String())
	}
	if p.TaskID != nil {
		where = append(where, "e.task_execution_id = ?")
		args = append(args, p.TaskID.String())
	}
	if len(p.Types) > 0 {
		where = append(where, "e.event_type IN ("+placeholders(len(p.Types))+")")
		args = append(args, stringArgs(p.Types)...)
		if f := driver.IndexedEventTypesFilter("e.event_type", p.Types); f != "" {
			// Implied already; spelled out it lets SQLite use the partial
			// index on types (migration 12), which it does only for a
			// query that has the index's own terms.
			where = append(where, f)
		}
	}
	// The time bounds, without the alias. The listing itself tests them
	// unindexed (+): by the created_at index SQLite would sort every event
	// of the window, all 2 M of a wide one, for the newest few.
	var window []string
	var windowArgs []any
	if p.CreatedFrom != nil {
		window = append(window, "created_at >= ?")
		windowArgs = append(windowArgs, formatTime(*p.CreatedFrom))
	}
	if p.CreatedBefore != nil {
		window = append(window, "created_at < ?")
		windowArgs = append(windowArgs, formatTime(*p.CreatedBefore))
	}
	for _, w := range window {
		where = append(where, "+e."+w)
	}
	args = append(args, windowArgs...)
	if p.BeforeSeq > 0 {
		where = append(where, "e.sequence_num < ?")
		args = append(args, p.BeforeSeq)
	}
	with := ""
	if p.Windowed() {
		// The window's range is read through the created_at index.
		span, err := e.eventSpan(ctx, p)
		if err != nil {
			return nil, err
		}
		if span.Bound(p.Newest, p.Limit) {
			with = `WITH w AS MATERIALIZED (SELECT min(sequence_num) AS lo, max(sequence_num) AS hi FROM execution_events WHERE ` +
				strings.Join(window, " AND ") + `) `
			where = append(where, "e.sequence_num >= (SELECT lo FROM w)", "e.sequence_num <= (SELECT hi FROM w)")
			args = append(append([]any{}, windowArgs...), args...)
		}
	}
	// One writer at a time: sequence order is commit order, so following
	// needs no horizon here.
	if p.AfterSeq != 0 {
		where = append(where, "e.sequence_num > ?")
		args = append(args, p.AfterSeq)
	}
	// A task's name comes from its row while it exists, then from the
	// copy run retention keeps on its events (migration 11).
	q := with + `SELECT e.sequence_num, e.id, e.pipeline_execution_id, e.task_execution_id, COALESCE(t.task_name, e.task_name, ''),
		e.event_type, e.event_data, e.worker_id, e.created_at
		FROM execution_events e LEFT JOIN task_executions t ON t.id = e.task_execution_id`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if p.Newest {
		q += " ORDER BY e.sequence_num DESC"
	} else {
		q += " ORDER BY e.sequence_num"
	}
	if p.Limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", p.Limit)
	}
	rows, err := e.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list events: %w", mapError(err))
	}
	defer rows.Close()
	var out []*driver.Event
	for rows.Next() {
		var (
			ev                    driver.Event
			id, pid, typ, created string
			data                  string
			task                  sql.NullString
		)
		if err := rows.Scan(&ev.SequenceNum, &id, &pid, &task, &ev.TaskName, &typ, &data, &ev.WorkerID, &created); err != nil {
			return nil, mapError(err)
		}
		if ev.ID, err = uuid.Parse(id); err != nil {
			return nil, err
		}
		if ev.PipelineID, err = uuid.Parse(pid); err != nil {
			return nil, err
		}
		if task.Valid {
			tid, err := uuid.Parse(task.String)
			if err != nil {
				return nil, err
			}
			ev.TaskID = &tid
		}
		ev.Type = driver.EventType(typ)
		ev.Data = json.RawMessage(data)
		if ev.CreatedAt, err = parseTime(created); err != nil {
			return nil, err
		}
		out = append(out, &ev)
	}
	return out, mapError(rows.Err())
}

// eventSpan places p's time window among the sequence numbers of the
// events p may list (driver.EventSpan): each bound is the number of the
// earliest event at or after it in the created_at index.
func (e *executor) eventSpan(ctx context.Context, p *driver.EventListParams) (driver.EventSpan, error) {
	below := int64(math.MaxInt64)
	if p.BeforeSeq > 0 {
		below = p.BeforeSeq
	}
	at := func(t *time.Time) (string, []any) {
		if t == nil {
			return "NULL", nil
		}
		return "(SELECT sequence_num FROM execution_events WHERE created_at >= ? ORDER BY created_at LIMIT 1)", []any{formatTime(*t)}
	}
	fromQ, fromArgs := at(p.CreatedFrom)
	beforeQ, beforeArgs := at(p.CreatedBefore)
	var first, last, from, before sql.NullInt64
	if err := e.db.QueryRowContext(ctx, `SELECT (SELECT min(sequence_num) FROM execution_events),
			(SELECT max(sequence_num) FROM execution_events WHERE sequence_num < ?), `+fromQ+`, `+beforeQ,
		append(append([]any{below}, fromArgs...), beforeArgs...)...).Scan(&first, &last, &from, &before); err != nil {
		return driver.EventSpan{}, fmt.Errorf("sqlite: list events: place the time window: %w", mapError(err))
	}
	if !last.Valid {
		return driver.EventSpan{First: 1}, nil // no event: Last < First
	}
	s := driver.EventSpan{First: first.Int64, Last: last.Int64, From: first.Int64, Before: last.Int64 + 1}
	switch {
	case !from.Valid && p.CreatedFrom != nil:
		s.From = s.Before // no event at or after the start
	case from.Valid:
		s.From = min(from.Int64, s.Before)
	}
	if before.Valid {
		s.Before = min(before.Int64, s.Before)
	}
	return s, nil
}

func (e *executor) EventCount(ctx context.Context, p *driver.EventCountParams) (int64, error) {
	var where []string
	var args []any
	if p.PipelineID != nil {
		where = append(where, "pipeline_execution_id = ?")
		args = append(args, p.PipelineID.String())
	}
	if p.Before != nil {
		where = append(where, "created_at < ?")
		args = append(args, formatTime(*p.Before))
	}
	if p.ExcludeUnfinishedRuns {
		where = append(where, notOfUnfinishedRun)
	}
	q := "SELECT count(*) FROM execution_events e"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	var n int64
	if err := e.db.QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqlite: count events: %w", mapError(err))
	}
	return n, nil
}

func (e *executor) EventLastBefore(ctx context.Context, t time.Time) (int64, error) {
	var seq int64
	if err := e.db.QueryRowContext(ctx, `SELECT coalesce(max(sequence_num), 0) FROM execution_events WHERE created_at < ?`,
		formatTime(t)).Scan(&seq); err != nil {
		return 0, fmt.Errorf("sqlite: find the last event before %s: %w", formatTime(t), mapError(err))
	}
	return seq, nil
}

func (e *executor) EventDelete(ctx context.Context, p *driver.EventDeleteParams) (*driver.EventDeleteResult, error) {
	if p.Limit <= 0 {
		return nil, errors.New("sqlite: delete events: limit must be positive")
	}
	filter := ""
	if p.ExcludeUnfinishedRuns {
		filter = " AND " + notOfUnfinishedRun
	}
	upTo := p.UpTo
	if upTo <= 0 {
		upTo = math.MaxInt64
	}
	// The unary + keeps SQLite on the primary key: by the created_at index
	// it would sort the old events for every batch.
	rows, err := e.db.QueryContext(ctx, `DELETE FROM execution_events WHERE sequence_num IN (
		SELECT sequence_num FROM execution_events e WHERE sequence_num > ? AND sequence_num <= ? AND +created_at < ?`+filter+`
		ORDER BY sequence_num LIMIT ?) RETURNING sequence_num`,
		max(p.After, 0), upTo, formatTime(p.Before), p.Limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: delete events: %w", mapError(err))
	}
	defer rows.Close()
	var res driver.EventDeleteResult
	for rows.Next() {
		var seq int64
		if err := rows.Scan(&seq); err != nil {
			return nil, fmt.Errorf("sqlite: delete events: %w", mapError(err))
		}
		res.Deleted++
		res.Last = max(res.Last, seq)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: delete events: %w", mapError(err))
	}
	return &res, nil
}

// notOfUnfinishedRun holds for an event (aliased e) unless its run is
// Pending, Running or Paused, or has a task still Running (a Cancelled run
// whose task has not returned); it holds for an event whose run row is
// gone.
// SQLite looks each old event's run up by id: a deleting batch walks the
// primary key and stops at its limit.
var notOfUnfinishedRun = fmt.Sprintf(`NOT EXISTS (SELECT 1 FROM pipeline_executions p
		WHERE p.id = e.pipeline_execution_id AND p.status IN ('%s', '%s', '%s'))
	AND NOT EXISTS (SELECT 1 FROM task_executions rt
		WHERE rt.pipeline_execution_id = e.pipeline_execution_id AND rt.status = '%s')`,
	driver.PipelinePending, driver.PipelineRunning, driver.PipelinePaused, driver.TaskRunning)

// openDepsArg stores a count of open dependencies, 0 as NULL (not counted).
func openDepsArg(n int) any {
	if n == 0 {
		return nil
	}
	return n
}
