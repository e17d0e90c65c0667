package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// The runner statements read the database's clock, which is the host's
// (see lease.go): every process sharing the file runs on the machine that
// holds it, and no engine clock takes part in deciding who is alive.

func (e *executor) RunnerUpsert(ctx context.Context, p *driver.RunnerUpsertParams) (*driver.RunnerUpsertResult, error) {
	workflows, err := json.Marshal(p.Workflows)
	if err != nil {
		return nil, err
	}
	now := clockNow()
	_, err = e.db.ExecContext(ctx, `INSERT INTO cloacina_runners (id, name, host, pid, workflows, started_at, heartbeat_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET name = excluded.name, host = excluded.host, pid = excluded.pid,
			workflows = excluded.workflows, heartbeat_at = excluded.heartbeat_at`,
		p.ID, p.Name, p.Host, p.PID, string(workflows), formatTime(now), formatTime(now))
	if err != nil {
		return nil, fmt.Errorf("sqlite: register runner %s: %w", p.ID, mapError(err))
	}
	return &driver.RunnerUpsertResult{HeartbeatAt: now}, nil
}

func (e *executor) RunnerHeartbeat(ctx context.Context, p *driver.RunnerHeartbeatParams) (*driver.RunnerHeartbeatResult, error) {
	now := clockNow()
	res, err := e.db.ExecContext(ctx, `UPDATE cloacina_runners SET heartbeat_at = ? WHERE id = ?`, formatTime(now), p.ID)
	if err != nil {
		return nil, fmt.Errorf("sqlite: heartbeat runner %s: %w", p.ID, mapError(err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return nil, fmt.Errorf("sqlite: heartbeat runner %s: %w", p.ID, mapError(err))
	}
	return &driver.RunnerHeartbeatResult{Alive: n == 1, Now: now}, nil
}

// ClockRead needs no statement: SQLite has no clock of its own, and the
// host's is the one the heartbeats are stamped with.
func (e *executor) ClockRead(context.Context) (time.Time, error) {
	return clockNow(), nil
}

// clockNow is the database's clock: the host's, in UTC, at the
// microseconds the fixed-width text layout stores.
func clockNow() time.Time {
	return time.Now().UTC().Truncate(time.Microsecond)
}

func (e *executor) RunnerDelete(ctx context.Context, p *driver.RunnerDeleteParams) error {
	if _, err := e.db.ExecContext(ctx, `DELETE FROM cloacina_runners WHERE id = ?`, p.ID); err != nil {
		return fmt.Errorf("sqlite: delete runner %s: %w", p.ID, mapError(err))
	}
	return nil
}

// expiredBefore is the heartbeat cutoff for a timeout, by the host's
// clock; a timeout that would declare every runner dead is refused.
func expiredBefore(timeout time.Duration) (string, error) {
	if timeout <= 0 {
		return "", fmt.Errorf("a timeout of %s declares every runner dead: pass a positive Timeout, how long a runner may go without a heartbeat", timeout)
	}
	return formatTime(time.Now().Add(-timeout)), nil
}

func (e *executor) RunnerDeleteExpired(ctx context.Context, p *driver.RunnerDeleteExpiredParams) ([]string, error) {
	before, err := expiredBefore(p.Timeout)
	if err != nil {
		return nil, fmt.Errorf("sqlite: delete expired runners: %w", err)
	}
	rows, err := e.db.QueryContext(ctx, `DELETE FROM cloacina_runners WHERE heartbeat_at < ? RETURNING id`, before)
	if err != nil {
		return nil, fmt.Errorf("sqlite: delete expired runners: %w", mapError(err))
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, mapError(err)
		}
		ids = append(ids, id)
	}
	return ids, mapError(rows.Err())
}

func (e *executor) RunnerList(ctx context.Context) ([]*driver.RunnerRow, error) {
	rows, err := e.db.QueryContext(ctx, `SELECT id, name, host, pid, workflows, started_at, heartbeat_at
		FROM cloacina_runners ORDER BY started_at, id`)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list runners: %w", mapError(err))
	}
	defer rows.Close()
	var out []*driver.RunnerRow
	for rows.Next() {
		var r driver.RunnerRow
		var workflows, started, beat string
		if err := rows.Scan(&r.ID, &r.Name, &r.Host, &r.PID, &workflows, &started, &beat); err != nil {
			return nil, mapError(err)
		}
		if err := json.Unmarshal([]byte(workflows), &r.Workflows); err != nil {
			return nil, fmt.Errorf("sqlite: runner %s workflows: %w", r.ID, err)
		}
		if r.StartedAt, err = parseTime(started); err != nil {
			return nil, err
		}
		if r.HeartbeatAt, err = parseTime(beat); err != nil {
			return nil, err
		}
		out = append(out, &r)
	}
	return out, mapError(rows.Err())
}

func (e *executor) TaskListOrphaned(ctx context.Context, p *driver.TaskListOrphanedParams) ([]*driver.Task, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 1000
	}
	cols := strings.ReplaceAll(taskSelect(false), "\n", " ")
	var q string
	var args []any
	if p.RunnerID != "" {
		q = `SELECT ` + prefixColumns(cols, "t.") + ` FROM task_executions t
			WHERE t.status = 'running' AND t.runner_id = ? ORDER BY t.updated_at LIMIT ?`
		args = []any{p.RunnerID, limit}
	} else {
		before, err := expiredBefore(p.Timeout)
		if err != nil {
			return nil, fmt.Errorf("sqlite: list orphaned tasks: %w", err)
		}
		q = `SELECT ` + prefixColumns(cols, "t.") + ` FROM task_executions t
			LEFT JOIN cloacina_runners r ON r.id = t.runner_id
			WHERE t.status = 'running' AND (r.id IS NULL OR r.heartbeat_at < ?)
			ORDER BY t.updated_at LIMIT ?`
		args = []any{before, limit}
	}
	out, err := collectTasks(e.db.QueryContext(ctx, q, args...))
	if err != nil {
		return nil, fmt.Errorf("sqlite: list orphaned tasks: %w", err)
	}
	return out, nil
}

// prefixColumns qualifies a column list with a table alias; NULL
// placeholders stay as they are.
func prefixColumns(cols, prefix string) string {
	parts := strings.Split(strings.ReplaceAll(cols, ", 0)", "|0)"), ",")
	for i, c := range parts {
		c = strings.TrimSpace(c)
		switch {
		case c == "NULL":
		case strings.HasPrefix(c, "COALESCE("):
			c = "COALESCE(" + prefix + strings.TrimPrefix(c, "COALESCE(")
		default:
			c = prefix + c
		}
		parts[i] = c
	}
	return strings.ReplaceAll(strings.Join(parts, ", "), "|0)", ", 0)")
}

func (e *executor) TaskSubStatusSet(ctx context.Context, p *driver.TaskSubStatusParams) (bool, error) {
	f := p.Fence
	res, err := e.db.ExecContext(ctx, `UPDATE task_executions SET sub_status = ?, updated_at = ?
		WHERE id = ? AND status = 'running' AND runner_id = ? AND attempt = ? AND recovery_count = ?`,
		p.SubStatus, formatTime(p.Now), f.TaskID.String(), f.RunnerID, f.Attempt, f.RecoveryCount)
	if err != nil {
		return false, fmt.Errorf("sqlite: set sub-status of task %s: %w", f.TaskID, mapError(err))
	}
	n, err := res.RowsAffected()
	return n == 1, mapError(err)
}

func (e *executor) TaskFenceCheck(ctx context.Context, p *driver.TaskFenceCheckParams) (*driver.TaskFenceCheckResult, error) {
	res := &driver.TaskFenceCheckResult{}
	if len(p.Fences) == 0 {
		return res, nil
	}
	ids := make([]uuid.UUID, len(p.Fences))
	for i, f := range p.Fences {
		ids[i] = f.TaskID
	}
	rows, err := e.db.QueryContext(ctx, `SELECT id, status, runner_id, attempt, recovery_count FROM task_executions
		WHERE id IN (`+placeholders(len(ids))+`)`, uuidArgs(ids)...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: check claims: %w", mapError(err))
	}
	defer rows.Close()
	// Each fence is judged on its own: one task may be given under an old
	// (lost) claim and a new one.
	current := map[uuid.UUID]driver.Fence{}
	for rows.Next() {
		var id, status string
		var f driver.Fence
		if err := rows.Scan(&id, &status, &f.RunnerID, &f.Attempt, &f.RecoveryCount); err != nil {
			return nil, mapError(err)
		}
		if f.TaskID, err = uuid.Parse(id); err != nil {
			return nil, err
		}
		if status == string(driver.TaskRunning) {
			current[f.TaskID] = f
		}
	}
	if err := rows.Err(); err != nil {
		return nil, mapError(err)
	}
	for _, f := range p.Fences {
		if cur, ok := current[f.TaskID]; !ok || cur != f {
			res.Lost = append(res.Lost, f.TaskID)
		}
	}
	return res, nil
}
