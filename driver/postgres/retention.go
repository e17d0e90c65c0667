package postgres

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// finishedBefore selects the finished runs that ended before $1 and have
// no task still running. created_at < $1 (a run ends after it is created)
// keeps the scan to the status index's range of old runs.
const finishedBefore = `q.status IN ('completed', 'failed', 'cancelled') AND q.created_at < $1 AND q.completed_at < $1
	AND NOT EXISTS (SELECT FROM %[1]s.task_executions t WHERE t.pipeline_execution_id = q.id AND t.status = 'running')`

// pipelineDeleteFinishedSQL deletes a batch of runs (their tasks, outbox
// rows and ticks go by cascade) and first copies each task's name into the
// run's events (migration 11), which stay, so that they still name their
// task once its row is gone. Both happen in one statement, on the runs
// the batch locked: the copy reads the tasks before the cascade deletes
// them. The events are found by run through execution_events_pipeline_idx,
// each task by its primary key.
const pipelineDeleteFinishedSQL = `WITH runs AS (
			SELECT q.id FROM %[1]s.pipeline_executions q WHERE ` + finishedBefore + ` LIMIT $2 FOR UPDATE SKIP LOCKED),
		named AS (
			UPDATE %[1]s.execution_events e SET task_name = t.task_name FROM %[1]s.task_executions t
			WHERE e.pipeline_execution_id = ANY(ARRAY(SELECT id FROM runs)) AND e.task_execution_id = t.id
				AND t.pipeline_execution_id = e.pipeline_execution_id AND e.task_name IS NULL),
		deleted AS (
			DELETE FROM %[1]s.pipeline_executions WHERE id IN (SELECT id FROM runs) RETURNING id)
		SELECT coalesce(array_agg(id), '{}'::uuid[]) FROM deleted`

func (e *executor) PipelineDeleteFinished(ctx context.Context, p *driver.PipelineDeleteParams) ([]uuid.UUID, error) {
	if p.Limit <= 0 {
		return nil, fmt.Errorf("postgres: delete finished runs: a limit of %d deletes nothing: pass a positive Limit", p.Limit)
	}
	var ids []uuid.UUID
	err := e.db.QueryRow(ctx, fmt.Sprintf(pipelineDeleteFinishedSQL, e.q.schema), driver.ClampTime(p.Before), p.Limit).Scan(&ids)
	if err != nil {
		return nil, fmt.Errorf("postgres: delete finished runs: %w", mapError(err))
	}
	return ids, nil
}

func (e *executor) PipelineCountFinished(ctx context.Context, p *driver.PipelineCountParams) (int64, error) {
	var n int64
	err := e.db.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %[1]s.pipeline_executions q WHERE `+finishedBefore, e.q.schema),
		driver.ClampTime(p.Before)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("postgres: count finished runs: %w", mapError(err))
	}
	return n, nil
}

func (e *executor) ScheduleTickDeleteSkipped(ctx context.Context, p *driver.ScheduleTickDeleteParams) (int, error) {
	if p.Limit <= 0 {
		return 0, fmt.Errorf("postgres: delete skipped ticks: a limit of %d deletes nothing: pass a positive Limit", p.Limit)
	}
	tag, err := e.db.Exec(ctx, fmt.Sprintf(`DELETE FROM %[1]s.cloacina_schedule_ticks WHERE (schedule_name, tick_at) IN (
			SELECT schedule_name, tick_at FROM %[1]s.cloacina_schedule_ticks
			WHERE pipeline_execution_id IS NULL AND fired_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)`, e.q.schema), driver.ClampTime(p.Before), p.Limit)
	if err != nil {
		return 0, fmt.Errorf("postgres: delete skipped ticks: %w", mapError(err))
	}
	return int(tag.RowsAffected()), nil
}
