package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/cloacina-go/cloacina/driver"
)

// backlogSQL is the PostgreSQL backend's query (see there) with SQLite's
// parameters; due times are fixed-width text, which compares as times.
const backlogSQL = `SELECT workflow_name, count(*) FILTER (WHERE available_at <= ?1), count(*) FILTER (WHERE available_at > ?1),
		min(available_at) FILTER (WHERE available_at <= ?1), 0, 0, 0, 0, 0
	FROM task_outbox GROUP BY workflow_name
	UNION ALL
	SELECT workflow_name, 0, 0, NULL, count(*), count(*) FILTER (WHERE sub_status = 'deferred'), 0, 0, 0
	FROM task_executions WHERE status = 'running' GROUP BY workflow_name
	UNION ALL
	SELECT workflow_name, 0, 0, NULL, 0, 0, count(*) FILTER (WHERE status = 'pending'),
		count(*) FILTER (WHERE status = 'running'), count(*) FILTER (WHERE status = 'paused')
	FROM pipeline_executions WHERE status IN ('pending', 'running', 'paused') GROUP BY workflow_name`

func (e *executor) BacklogList(ctx context.Context, p *driver.BacklogListParams) ([]*driver.Backlog, error) {
	rows, err := e.db.QueryContext(ctx, backlogSQL, formatTime(p.Now))
	if err != nil {
		return nil, fmt.Errorf("sqlite: list backlog: %w", mapError(err))
	}
	defer rows.Close()
	var parts []*driver.Backlog
	for rows.Next() {
		var b driver.Backlog
		var oldest sql.NullString
		if err := rows.Scan(&b.Workflow, &b.Ready, &b.Delayed, &oldest, &b.Running, &b.Deferred,
			&b.PendingRuns, &b.RunningRuns, &b.PausedRuns); err != nil {
			return nil, fmt.Errorf("sqlite: list backlog: %w", mapError(err))
		}
		if b.OldestReadyAt, err = parseTimePtr(oldest); err != nil {
			return nil, fmt.Errorf("sqlite: list backlog: %w", err)
		}
		parts = append(parts, &b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list backlog: %w", mapError(err))
	}
	return driver.MergeBacklogs(parts), nil
}
