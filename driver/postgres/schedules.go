package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/cloacina-go/cloacina/driver"
)

const scheduleColumns = `name, workflow_name, cron, timezone, input, catch_up, max_lateness_us, overlap, paused, next_fire_at,
	last_tick_at, last_run_id, last_fired_at, fired, skipped, created_at, updated_at`

func (e *executor) ScheduleSync(ctx context.Context, p *driver.ScheduleSyncParams) error {
	if len(p.Schedules) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, s := range p.Schedules {
		// The timing columns are compared before they are overwritten:
		// in an UPDATE's SET every column reads the row as it was.
		b.Queue(`INSERT INTO `+e.q.schema+`.cloacina_schedules AS s
				(name, workflow_name, cron, timezone, input, catch_up, max_lateness_us, overlap, next_fire_at, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5::json, $6, $7, $10, $8, $9, $9)
			ON CONFLICT (name) DO UPDATE SET
				workflow_name = excluded.workflow_name, cron = excluded.cron, timezone = excluded.timezone,
				input = excluded.input, catch_up = excluded.catch_up, max_lateness_us = excluded.max_lateness_us,
				overlap = excluded.overlap,
				next_fire_at = CASE WHEN s.cron = excluded.cron AND s.timezone = excluded.timezone
					THEN s.next_fire_at ELSE excluded.next_fire_at END,
				updated_at = excluded.updated_at
			WHERE (s.workflow_name, s.cron, s.timezone, s.input::text, s.catch_up, s.max_lateness_us, s.overlap)
				IS DISTINCT FROM (excluded.workflow_name, excluded.cron, excluded.timezone, excluded.input::text,
					excluded.catch_up, excluded.max_lateness_us, excluded.overlap)`,
			s.Name, s.WorkflowName, s.Cron, s.Timezone, string(s.Input), s.CatchUp, s.MaxLateness.Microseconds(),
			s.NextFireAt, p.Now, s.Overlap)
	}
	if err := e.db.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("postgres: store schedules: %w", mapError(err))
	}
	return nil
}

func (e *executor) ScheduleList(ctx context.Context, p *driver.ScheduleListParams) ([]*driver.Schedule, error) {
	lock := ""
	if p.Lock {
		lock = " FOR UPDATE"
	}
	rows, err := e.db.Query(ctx, `SELECT `+scheduleColumns+` FROM `+e.q.schema+`.cloacina_schedules
		WHERE COALESCE(cardinality($1::text[]), 0) = 0 OR name = ANY ($1) ORDER BY name`+lock, p.Names)
	if err != nil {
		return nil, fmt.Errorf("postgres: list schedules: %w", mapError(err))
	}
	return scanSchedules(rows, "list schedules")
}

func (e *executor) ScheduleDue(ctx context.Context, p *driver.ScheduleDueParams) ([]*driver.Schedule, error) {
	rows, err := e.db.Query(ctx, `SELECT `+scheduleColumns+` FROM `+e.q.schema+`.cloacina_schedules
		WHERE name = ANY ($1) AND NOT paused AND next_fire_at <= $2
		ORDER BY name FOR UPDATE SKIP LOCKED`, p.Names, p.Now)
	if err != nil {
		return nil, fmt.Errorf("postgres: select due schedules: %w", mapError(err))
	}
	return scanSchedules(rows, "select due schedules")
}

func (e *executor) ScheduleFire(ctx context.Context, p *driver.ScheduleFireParams) error {
	ticks, runs, skipped := make([]time.Time, len(p.Ticks)), make([]pgtype.UUID, len(p.Ticks)), make([]string, len(p.Ticks))
	for i, t := range p.Ticks {
		ticks[i], runs[i], skipped[i] = t.At, pgOptID(t.PipelineID), t.Skipped
	}
	// One statement: the ticks go in (a tick recorded already is left
	// out, and shows as a count short), and the schedule moves on only
	// from the tick it was expected at.
	var inserted int
	var moved bool
	err := e.db.QueryRow(ctx, `WITH t AS (
			INSERT INTO `+e.q.schema+`.cloacina_schedule_ticks (schedule_name, tick_at, pipeline_execution_id, skipped, fired_at)
			SELECT $1, tick, run, skip, $5 FROM unnest($2::timestamptz[], $3::uuid[], $7::text[]) AS x (tick, run, skip)
			ON CONFLICT DO NOTHING
			RETURNING tick_at, pipeline_execution_id),
		last AS (SELECT tick_at, pipeline_execution_id FROM t WHERE pipeline_execution_id IS NOT NULL ORDER BY tick_at DESC LIMIT 1),
		s AS (
			UPDATE `+e.q.schema+`.cloacina_schedules s
			SET next_fire_at = $4,
				last_tick_at = COALESCE((SELECT tick_at FROM last), s.last_tick_at),
				last_run_id = COALESCE((SELECT pipeline_execution_id FROM last), s.last_run_id),
				last_fired_at = CASE WHEN EXISTS (SELECT FROM last) THEN $5 ELSE s.last_fired_at END,
				fired = s.fired + (SELECT count(*) FROM t WHERE pipeline_execution_id IS NOT NULL),
				skipped = s.skipped + (SELECT count(*) FROM t WHERE pipeline_execution_id IS NULL)
			WHERE s.name = $1 AND s.next_fire_at = $6
			RETURNING 1)
		SELECT (SELECT count(*) FROM t), EXISTS (SELECT FROM s)`,
		p.Name, ticks, runs, p.NextFireAt, p.Now, p.Expect, skipped).Scan(&inserted, &moved)
	if err != nil {
		return fmt.Errorf("postgres: record ticks of schedule %q: %w", p.Name, mapError(err))
	}
	if inserted != len(p.Ticks) || !moved {
		return fmt.Errorf("postgres: record ticks of schedule %q: %w: fired by another transaction", p.Name, driver.ErrConflict)
	}
	return nil
}

func (e *executor) SchedulePause(ctx context.Context, p *driver.SchedulePauseParams) error {
	tag, err := e.db.Exec(ctx, `UPDATE `+e.q.schema+`.cloacina_schedules
		SET paused = $2, next_fire_at = CASE WHEN $2 THEN next_fire_at ELSE $3 END, updated_at = $4
		WHERE name = $1`, p.Name, p.Paused, p.NextFireAt, p.Now)
	if err != nil {
		return fmt.Errorf("postgres: pause schedule %q: %w", p.Name, mapError(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("postgres: schedule %q: %w", p.Name, driver.ErrNotFound)
	}
	return nil
}

func (e *executor) ScheduleDelete(ctx context.Context, name string) error {
	tag, err := e.db.Exec(ctx, `DELETE FROM `+e.q.schema+`.cloacina_schedules WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("postgres: delete schedule %q: %w", name, mapError(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("postgres: schedule %q: %w", name, driver.ErrNotFound)
	}
	return nil
}

func (e *executor) ScheduleTickList(ctx context.Context, p *driver.ScheduleTickListParams) ([]*driver.ScheduleTickRow, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := e.db.Query(ctx, `SELECT schedule_name, tick_at, pipeline_execution_id, skipped, fired_at
		FROM `+e.q.schema+`.cloacina_schedule_ticks WHERE schedule_name = $1 ORDER BY tick_at DESC LIMIT $2`, p.Name, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: list ticks of schedule %q: %w", p.Name, mapError(err))
	}
	defer rows.Close()
	var out []*driver.ScheduleTickRow
	for rows.Next() {
		var t driver.ScheduleTickRow
		var run pgtype.UUID
		if err := rows.Scan(&t.ScheduleName, &t.At, &run, &t.Skipped, &t.FiredAt); err != nil {
			return nil, fmt.Errorf("postgres: list ticks of schedule %q: %w", p.Name, mapError(err))
		}
		t.PipelineID = optID(run)
		t.At, t.FiredAt = t.At.UTC(), t.FiredAt.UTC()
		out = append(out, &t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: list ticks of schedule %q: %w", p.Name, mapError(err))
	}
	return out, nil
}

func scanSchedules(rows pgx.Rows, what string) ([]*driver.Schedule, error) {
	defer rows.Close()
	var out []*driver.Schedule
	for rows.Next() {
		var s driver.Schedule
		var input jsonCol
		var lateness int64
		var lastTick, lastFired pgtype.Timestamptz
		var lastRun pgtype.UUID
		var lastTickT, lastFiredT time.Time
		if err := rows.Scan(&s.Name, &s.WorkflowName, &s.Cron, &s.Timezone, &input, &s.CatchUp, &lateness, &s.Overlap, &s.Paused,
			&s.NextFireAt, &lastTick, &lastRun, &lastFired, &s.Fired, &s.Skipped, &s.CreatedAt, &s.UpdatedAt); err != nil {
			return nil, fmt.Errorf("postgres: %s: %w", what, mapError(err))
		}
		s.Input = input.b
		s.MaxLateness = time.Duration(lateness) * time.Microsecond
		s.NextFireAt, s.CreatedAt, s.UpdatedAt = s.NextFireAt.UTC(), s.CreatedAt.UTC(), s.UpdatedAt.UTC()
		if err := optional(lastTick, &lastTickT, &s.LastTickAt); err != nil {
			return nil, err
		}
		if err := optional(lastFired, &lastFiredT, &s.LastFiredAt); err != nil {
			return nil, err
		}
		s.LastRunID = optID(lastRun)
		out = append(out, &s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("postgres: %s: %w", what, mapError(err))
	}
	return out, nil
}

// optID is the id of a nullable uuid column, nil for NULL.
func optID(u pgtype.UUID) *uuid.UUID {
	if !u.Valid {
		return nil
	}
	id := uuid.UUID(u.Bytes)
	return &id
}
