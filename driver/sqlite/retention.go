package sqlite

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// finishedBefore selects the finished runs that ended before ?1 and have
// no task still running. created_at < ?1 (a run ends after it is created)
// keeps the scan to the status index's range of old runs.
const finishedBefore = `q.status IN ('completed', 'failed', 'cancelled') AND q.created_at < ?1 AND q.completed_at < ?1
	AND NOT EXISTS (SELECT 1 FROM task_executions t WHERE t.pipeline_execution_id = q.id AND t.status = 'running')`

// PipelineDeleteFinished picks a batch of runs, copies each of their
// tasks' names into the runs' events (migration 11), which stay, so that
// they still name their task once its row is gone, then deletes the runs
// (their tasks, outbox rows and ticks go by cascade). The write
// transaction holds the database, so the batch cannot change between the
// statements; it travels as one JSON array, whatever its size. The events
// are found by run through execution_events_pipeline_idx, each task by
// its primary key.
func (e *executor) PipelineDeleteFinished(ctx context.Context, p *driver.PipelineDeleteParams) ([]uuid.UUID, error) {
	if p.Limit <= 0 {
		return nil, fmt.Errorf("sqlite: delete finished runs: a limit of %d deletes nothing: pass a positive Limit", p.Limit)
	}
	rows, err := e.db.QueryContext(ctx, `SELECT q.id FROM pipeline_executions q WHERE `+finishedBefore+` LIMIT ?2`,
		formatTime(p.Before), p.Limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: delete finished runs: %w", mapError(err))
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sqlite: delete finished runs: %w", mapError(err))
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: delete finished runs: %w", mapError(err))
	}
	if len(ids) == 0 {
		return nil, nil
	}
	batch, err := json.Marshal(ids)
	if err != nil {
		return nil, fmt.Errorf("sqlite: delete finished runs: %w", err)
	}
	if _, err := e.db.ExecContext(ctx, `UPDATE execution_events AS e
		SET task_name = (SELECT t.task_name FROM task_executions t WHERE t.id = e.task_execution_id)
		WHERE e.pipeline_execution_id IN (SELECT value FROM json_each(?)) AND e.task_execution_id IS NOT NULL
			AND e.task_name IS NULL`, string(batch)); err != nil {
		return nil, fmt.Errorf("sqlite: delete finished runs: name their events' tasks: %w", mapError(err))
	}
	if _, err := e.db.ExecContext(ctx, `DELETE FROM pipeline_executions WHERE id IN (SELECT value FROM json_each(?))`, string(batch)); err != nil {
		return nil, fmt.Errorf("sqlite: delete finished runs: %w", mapError(err))
	}
	// The write transaction holds the database: every run picked is
	// deleted.
	out := make([]uuid.UUID, len(ids))
	for i, id := range ids {
		if out[i], err = uuid.Parse(id); err != nil {
			return nil, fmt.Errorf("sqlite: delete finished runs: %w", err)
		}
	}
	return out, nil
}

func (e *executor) PipelineCountFinished(ctx context.Context, p *driver.PipelineCountParams) (int64, error) {
	var n int64
	if err := e.db.QueryRowContext(ctx, `SELECT count(*) FROM pipeline_executions q WHERE `+finishedBefore,
		formatTime(p.Before)).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqlite: count finished runs: %w", mapError(err))
	}
	return n, nil
}

func (e *executor) ScheduleTickDeleteSkipped(ctx context.Context, p *driver.ScheduleTickDeleteParams) (int, error) {
	if p.Limit <= 0 {
		return 0, fmt.Errorf("sqlite: delete skipped ticks: a limit of %d deletes nothing: pass a positive Limit", p.Limit)
	}
	res, err := e.db.ExecContext(ctx, `DELETE FROM cloacina_schedule_ticks WHERE rowid IN (
			SELECT rowid FROM cloacina_schedule_ticks WHERE pipeline_execution_id IS NULL AND fired_at < ? LIMIT ?)`,
		formatTime(p.Before), p.Limit)
	if err != nil {
		return 0, fmt.Errorf("sqlite: delete skipped ticks: %w", mapError(err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("sqlite: delete skipped ticks: %w", mapError(err))
	}
	return int(n), nil
}
