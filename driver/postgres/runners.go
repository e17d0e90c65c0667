package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cloacina-go/cloacina/driver"
)

// The runner statements read the database's clock, clock_timestamp() as
// the lease does (see lease.go): a heartbeat vouches for the moment it
// runs, and expiry is measured back from the moment the sweep runs, so
// that no runner's clock takes part in deciding who is alive.

func (e *executor) RunnerUpsert(ctx context.Context, p *driver.RunnerUpsertParams) (*driver.RunnerUpsertResult, error) {
	workflows, err := json.Marshal(p.Workflows)
	if err != nil {
		return nil, err
	}
	var res driver.RunnerUpsertResult
	err = e.db.QueryRow(ctx, `INSERT INTO `+e.q.schema+`.cloacina_runners (id, name, host, pid, workflows, started_at, heartbeat_at)
		SELECT $1, $2, $3, $4, $5, clock.now, clock.now FROM (SELECT clock_timestamp() AS now) clock
		ON CONFLICT (id) DO UPDATE SET name = excluded.name, host = excluded.host, pid = excluded.pid,
			workflows = excluded.workflows, heartbeat_at = excluded.heartbeat_at
		RETURNING heartbeat_at`,
		p.ID, p.Name, p.Host, p.PID, string(workflows)).Scan(&res.HeartbeatAt)
	if err != nil {
		return nil, fmt.Errorf("postgres: register runner %s: %w", p.ID, mapError(err))
	}
	res.HeartbeatAt = res.HeartbeatAt.UTC()
	return &res, nil
}

// RunnerHeartbeat reads the clock once, in a CTE (materialised, as it is
// referenced twice), so that the time it returns is the heartbeat it
// wrote, and is returned even when the row is gone.
func (e *executor) RunnerHeartbeat(ctx context.Context, p *driver.RunnerHeartbeatParams) (*driver.RunnerHeartbeatResult, error) {
	var res driver.RunnerHeartbeatResult
	err := e.db.QueryRow(ctx, `WITH clock AS (SELECT clock_timestamp() AS now),
		beat AS (UPDATE `+e.q.schema+`.cloacina_runners r SET heartbeat_at = clock.now FROM clock WHERE r.id = $1 RETURNING r.id)
		SELECT clock.now, EXISTS (SELECT FROM beat) FROM clock`, p.ID).Scan(&res.Now, &res.Alive)
	if err != nil {
		return nil, fmt.Errorf("postgres: heartbeat runner %s: %w", p.ID, mapError(err))
	}
	res.Now = res.Now.UTC()
	return &res, nil
}

func (e *executor) ClockRead(ctx context.Context) (time.Time, error) {
	var now time.Time
	if err := e.db.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now); err != nil {
		return time.Time{}, fmt.Errorf("postgres: read the database's clock: %w", mapError(err))
	}
	return now.UTC(), nil
}

func (e *executor) RunnerDelete(ctx context.Context, p *driver.RunnerDeleteParams) error {
	if _, err := e.db.Exec(ctx, `DELETE FROM `+e.q.schema+`.cloacina_runners WHERE id = $1`, p.ID); err != nil {
		return fmt.Errorf("postgres: delete runner %s: %w", p.ID, mapError(err))
	}
	return nil
}

// expiredBefore is the heartbeat cutoff, by the database's clock, for a
// timeout passed as $1 in microseconds. As an uncorrelated subquery it is
// read once per statement.
const expiredBefore = `(SELECT clock_timestamp() - $1::float8 * interval '1 microsecond')`

// checkTimeout refuses a timeout that would declare every runner dead.
func checkTimeout(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("a timeout of %s declares every runner dead: pass a positive Timeout, how long a runner may go without a heartbeat", d)
	}
	return nil
}

func (e *executor) RunnerDeleteExpired(ctx context.Context, p *driver.RunnerDeleteExpiredParams) ([]string, error) {
	if err := checkTimeout(p.Timeout); err != nil {
		return nil, fmt.Errorf("postgres: delete expired runners: %w", err)
	}
	// SKIP LOCKED: a row held by a transaction that never ends (its process
	// froze between heartbeat and commit) must not stop the sweep, which
	// holds the leader lease meanwhile. That runner's tasks are found by
	// their expired heartbeat all the same.
	rows, err := e.db.Query(ctx, `DELETE FROM `+e.q.schema+`.cloacina_runners WHERE id IN (
			SELECT id FROM `+e.q.schema+`.cloacina_runners WHERE heartbeat_at < `+expiredBefore+` FOR UPDATE SKIP LOCKED)
		RETURNING id`, p.Timeout.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("postgres: delete expired runners: %w", mapError(err))
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("postgres: delete expired runners: %w", mapError(err))
	}
	return ids, nil
}

func (e *executor) RunnerList(ctx context.Context) ([]*driver.RunnerRow, error) {
	rows, err := e.db.Query(ctx, `SELECT id, name, host, pid, workflows, started_at, heartbeat_at
		FROM `+e.q.schema+`.cloacina_runners ORDER BY started_at, id`)
	if err != nil {
		return nil, fmt.Errorf("postgres: list runners: %w", mapError(err))
	}
	defer rows.Close()
	var out []*driver.RunnerRow
	for rows.Next() {
		var r driver.RunnerRow
		var workflows []byte
		if err := rows.Scan(&r.ID, &r.Name, &r.Host, &r.PID, &workflows, &r.StartedAt, &r.HeartbeatAt); err != nil {
			return nil, fmt.Errorf("postgres: list runners: %w", mapError(err))
		}
		if err := json.Unmarshal(workflows, &r.Workflows); err != nil {
			return nil, fmt.Errorf("postgres: runner %s workflows: %w", r.ID, err)
		}
		r.StartedAt, r.HeartbeatAt = r.StartedAt.UTC(), r.HeartbeatAt.UTC()
		out = append(out, &r)
	}
	return out, mapError(rows.Err())
}

func (e *executor) TaskListOrphaned(ctx context.Context, p *driver.TaskListOrphanedParams) ([]*driver.Task, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 1000
	}
	var q string
	var args []any
	if p.RunnerID != "" {
		q = `SELECT ` + taskColumns("t.", false) + ` FROM ` + e.q.taskTable + ` t
			WHERE t.status = 'running' AND t.runner_id = $1 ORDER BY t.updated_at LIMIT $2`
		args = []any{p.RunnerID, limit}
	} else {
		if err := checkTimeout(p.Timeout); err != nil {
			return nil, fmt.Errorf("postgres: list orphaned tasks: %w", err)
		}
		q = `SELECT ` + taskColumns("t.", false) + ` FROM ` + e.q.taskTable + ` t
			LEFT JOIN ` + e.q.schema + `.cloacina_runners r ON r.id = t.runner_id
			WHERE t.status = 'running' AND (r.id IS NULL OR r.heartbeat_at < ` + expiredBefore + `)
			ORDER BY t.updated_at LIMIT $2`
		args = []any{p.Timeout.Microseconds(), limit}
	}
	rows, err := e.db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("postgres: list orphaned tasks: %w", mapError(err))
	}
	defer rows.Close()
	var out []*driver.Task
	s := newTaskScan(nil)
	for rows.Next() {
		t, err := s.scan(rows)
		if err != nil {
			return nil, fmt.Errorf("postgres: list orphaned tasks: %w", err)
		}
		out = append(out, t)
	}
	return out, mapError(rows.Err())
}

func (e *executor) TaskSubStatusSet(ctx context.Context, p *driver.TaskSubStatusParams) (bool, error) {
	f := p.Fence
	tag, err := e.db.Exec(ctx, `UPDATE `+e.q.taskTable+` SET sub_status = $1, updated_at = $2
		WHERE id = $3 AND status = 'running' AND runner_id = $4 AND attempt = $5 AND recovery_count = $6`,
		p.SubStatus, p.Now.UTC(), pgID(f.TaskID), f.RunnerID, f.Attempt, f.RecoveryCount)
	if err != nil {
		return false, fmt.Errorf("postgres: set sub-status of task %s: %w", f.TaskID, mapError(err))
	}
	return tag.RowsAffected() == 1, nil
}

func (e *executor) TaskFenceCheck(ctx context.Context, p *driver.TaskFenceCheckParams) (*driver.TaskFenceCheckResult, error) {
	res := &driver.TaskFenceCheckResult{}
	if len(p.Fences) == 0 {
		return res, nil
	}
	n := len(p.Fences)
	ids, runners := make([][16]byte, n), make([]string, n)
	attempts, recoveries := make([]int32, n), make([]int32, n)
	for i, f := range p.Fences {
		ids[i], runners[i], attempts[i], recoveries[i] = f.TaskID, f.RunnerID, int32(f.Attempt), int32(f.RecoveryCount)
	}
	lost, err := collectIDs(e.db.Query(ctx, `SELECT f.id FROM unnest($1::uuid[], $2::text[], $3::int[], $4::int[]) AS f(id, runner, attempt, recovery)
		LEFT JOIN `+e.q.taskTable+` t ON t.id = f.id AND t.status = 'running' AND t.runner_id = f.runner
			AND t.attempt = f.attempt AND t.recovery_count = f.recovery
		WHERE t.id IS NULL`, ids, runners, attempts, recoveries))
	if err != nil {
		return nil, fmt.Errorf("postgres: check claims: %w", mapError(err))
	}
	res.Lost = lost
	return res, nil
}
