package sqlite

import (
	"context"
	"fmt"

	"github.com/cloacina-go/cloacina/driver"
)

// finishedBefore selects the finished runs that ended before ?1 and have
// no task still running. created_at < ?1 (a run ends after it is created)
// keeps the scan to the status index's range of old runs.
const finishedBefore = `q.status IN ('completed', 'failed', 'cancelled') AND q.created_at < ?1 AND q.completed_at < ?1
	AND NOT EXISTS (SELECT 1 FROM task_executions t WHERE t.pipeline_execution_id = q.id AND t.status = 'running')`

func (e *executor) PipelineDeleteFinished(ctx context.Context, p *driver.PipelineDeleteParams) (int, error) {
	if p.Limit <= 0 {
		return 0, fmt.Errorf("sqlite: delete finished runs: a limit of %d deletes nothing: pass a positive Limit", p.Limit)
	}
	res, err := e.db.ExecContext(ctx, `DELETE FROM pipeline_executions WHERE id IN (
			SELECT q.id FROM pipeline_executions q WHERE `+finishedBefore+` LIMIT ?2)`, formatTime(p.Before), p.Limit)
	if err != nil {
		return 0, fmt.Errorf("sqlite: delete finished runs: %w", mapError(err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("sqlite: delete finished runs: %w", mapError(err))
	}
	return int(n), nil
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
