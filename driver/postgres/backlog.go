package postgres

import (
	"context"
	"fmt"

	"github.com/cloacina-go/cloacina/driver"
)

// backlogSQL counts, per workflow, outbox rows due by $1 and after it,
// running tasks, and unfinished runs: three grouped scans, each over an
// index-backed selection (the outbox is the backlog itself; running tasks
// and unfinished runs have partial and status indexes).
const backlogSQL = `SELECT workflow_name, count(*) FILTER (WHERE available_at <= $1), count(*) FILTER (WHERE available_at > $1),
		min(available_at) FILTER (WHERE available_at <= $1), 0, 0, 0, 0, 0
	FROM {s}.task_outbox GROUP BY workflow_name
	UNION ALL
	SELECT workflow_name, 0, 0, NULL, count(*), count(*) FILTER (WHERE sub_status = 'deferred'), 0, 0, 0
	FROM {s}.task_executions WHERE status = 'running' GROUP BY workflow_name
	UNION ALL
	SELECT workflow_name, 0, 0, NULL, 0, 0, count(*) FILTER (WHERE status = 'pending'),
		count(*) FILTER (WHERE status = 'running'), count(*) FILTER (WHERE status = 'paused')
	FROM {s}.pipeline_executions WHERE status IN ('pending', 'running', 'paused') GROUP BY workflow_name`

func (e *executor) BacklogList(ctx context.Context, p *driver.BacklogListParams) ([]*driver.Backlog, error) {
	rows, err := e.db.Query(ctx, e.q.backlog, p.Now.UTC())
	if err != nil {
		return nil, fmt.Errorf("postgres: list backlog: %w", mapError(err))
	}
	defer rows.Close()
	var parts []*driver.Backlog
	for rows.Next() {
		var b driver.Backlog
		if err := rows.Scan(&b.Workflow, &b.Ready, &b.Delayed, &b.OldestReadyAt, &b.Running, &b.Deferred,
			&b.PendingRuns, &b.RunningRuns, &b.PausedRuns); err != nil {
			return nil, fmt.Errorf("postgres: list backlog: %w", mapError(err))
		}
		b.OldestReadyAt = utcPtr(b.OldestReadyAt)
		parts = append(parts, &b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list backlog: %w", mapError(err))
	}
	return driver.MergeBacklogs(parts), nil
}
