package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/cloacina-go/cloacina/driver"
)

const scheduleColumns = `name, workflow_name, cron, timezone, input, catch_up, max_lateness_us, overlap, paused, next_fire_at,
	last_tick_at, last_run_id, last_fired_at, fired, skipped, created_at, updated_at`

func (e *executor) ScheduleSync(ctx context.Context, p *driver.ScheduleSyncParams) error {
	for _, s := range p.Schedules {
		// In an UPDATE's SET every column reads the row as it was, so the
		// timing is compared before it is overwritten.
		_, err := e.db.ExecContext(ctx, `INSERT INTO cloacina_schedules AS s
				(name, workflow_name, cron, timezone, input, catch_up, max_lateness_us, overlap, next_fire_at, created_at, updated_at)
			VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?10, ?8, ?9, ?9)
			ON CONFLICT (name) DO UPDATE SET
				workflow_name = excluded.workflow_name, cron = excluded.cron, timezone = excluded.timezone,
				input = excluded.input, catch_up = excluded.catch_up, max_lateness_us = excluded.max_lateness_us,
				overlap = excluded.overlap,
				next_fire_at = CASE WHEN s.cron = excluded.cron AND s.timezone = excluded.timezone
					THEN s.next_fire_at ELSE excluded.next_fire_at END,
				updated_at = excluded.updated_at
			WHERE s.workflow_name IS NOT excluded.workflow_name OR s.cron IS NOT excluded.cron
				OR s.timezone IS NOT excluded.timezone OR s.input IS NOT excluded.input
				OR s.catch_up IS NOT excluded.catch_up OR s.max_lateness_us IS NOT excluded.max_lateness_us
				OR s.overlap IS NOT excluded.overlap`,
			s.Name, s.WorkflowName, s.Cron, s.Timezone, string(s.Input), s.CatchUp, s.MaxLateness.Microseconds(),
			formatTime(s.NextFireAt), formatTime(p.Now), s.Overlap)
		if err != nil {
			return fmt.Errorf("sqlite: store schedule %q: %w", s.Name, mapError(err))
		}
	}
	return nil
}

func (e *executor) ScheduleList(ctx context.Context, p *driver.ScheduleListParams) ([]*driver.Schedule, error) {
	q := `SELECT ` + scheduleColumns + ` FROM cloacina_schedules`
	var args []any
	if len(p.Names) > 0 {
		q += ` WHERE name IN (` + placeholders(len(p.Names)) + `)`
		args = stringArgs(p.Names)
	}
	rows, err := e.db.QueryContext(ctx, q+` ORDER BY name`, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list schedules: %w", mapError(err))
	}
	return scanSchedules(rows, "list schedules")
}

// ScheduleDue needs no lock of its own: it runs in a write transaction,
// which holds the database's write lock from its start.
func (e *executor) ScheduleDue(ctx context.Context, p *driver.ScheduleDueParams) ([]*driver.Schedule, error) {
	if len(p.Names) == 0 {
		return nil, nil
	}
	args := append(stringArgs(p.Names), formatTime(p.Now))
	rows, err := e.db.QueryContext(ctx, `SELECT `+scheduleColumns+` FROM cloacina_schedules
		WHERE name IN (`+placeholders(len(p.Names))+`) AND NOT paused AND next_fire_at <= ? ORDER BY name`, args...)
	if err != nil {
		return nil, fmt.Errorf("sqlite: select due schedules: %w", mapError(err))
	}
	return scanSchedules(rows, "select due schedules")
}

func (e *executor) ScheduleFire(ctx context.Context, p *driver.ScheduleFireParams) error {
	fail := func(err error) error {
		return fmt.Errorf("sqlite: record ticks of schedule %q: %w", p.Name, err)
	}
	var last *driver.ScheduleTick
	skipped := 0
	for i := range p.Ticks {
		t := &p.Ticks[i]
		res, err := e.db.ExecContext(ctx, `INSERT INTO cloacina_schedule_ticks (schedule_name, tick_at, pipeline_execution_id, skipped, fired_at)
			VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, p.Name, formatTime(t.At), optIDArg(t.PipelineID), t.Skipped, formatTime(p.Now))
		if err != nil {
			return fail(mapError(err))
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			return fail(fmt.Errorf("%w: tick %s fired by another transaction", driver.ErrConflict, formatTime(t.At)))
		}
		if t.PipelineID == nil {
			skipped++
		} else if last == nil || t.At.After(last.At) {
			last = t
		}
	}
	q := `UPDATE cloacina_schedules SET next_fire_at = ?, fired = fired + ?, skipped = skipped + ?`
	args := []any{formatTime(p.NextFireAt), len(p.Ticks) - skipped, skipped}
	if last != nil {
		q += `, last_tick_at = ?, last_run_id = ?, last_fired_at = ?`
		args = append(args, formatTime(last.At), last.PipelineID.String(), formatTime(p.Now))
	}
	res, err := e.db.ExecContext(ctx, q+` WHERE name = ? AND next_fire_at = ?`, append(args, p.Name, formatTime(p.Expect))...)
	if err != nil {
		return fail(mapError(err))
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return fail(fmt.Errorf("%w: fired by another transaction", driver.ErrConflict))
	}
	return nil
}

func (e *executor) SchedulePause(ctx context.Context, p *driver.SchedulePauseParams) error {
	q := `UPDATE cloacina_schedules SET paused = 1, updated_at = ? WHERE name = ?`
	args := []any{formatTime(p.Now), p.Name}
	if !p.Paused {
		q = `UPDATE cloacina_schedules SET paused = 0, next_fire_at = ?, updated_at = ? WHERE name = ?`
		args = append([]any{formatTime(p.NextFireAt)}, args...)
	}
	return e.execOne(ctx, fmt.Sprintf("pause schedule %q", p.Name), q, args...)
}

func (e *executor) ScheduleDelete(ctx context.Context, name string) error {
	return e.execOne(ctx, fmt.Sprintf("delete schedule %q", name), `DELETE FROM cloacina_schedules WHERE name = ?`, name)
}

// execOne runs a statement that must change one row: none is ErrNotFound.
func (e *executor) execOne(ctx context.Context, what, q string, args ...any) error {
	res, err := e.db.ExecContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("sqlite: %s: %w", what, mapError(err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("sqlite: %s: %w", what, mapError(err))
	}
	if n == 0 {
		return fmt.Errorf("sqlite: %s: %w", what, driver.ErrNotFound)
	}
	return nil
}

func (e *executor) ScheduleTickList(ctx context.Context, p *driver.ScheduleTickListParams) ([]*driver.ScheduleTickRow, error) {
	limit := p.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := e.db.QueryContext(ctx, `SELECT schedule_name, tick_at, pipeline_execution_id, skipped, fired_at
		FROM cloacina_schedule_ticks WHERE schedule_name = ? ORDER BY tick_at DESC LIMIT ?`, p.Name, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list ticks of schedule %q: %w", p.Name, mapError(err))
	}
	defer rows.Close()
	var out []*driver.ScheduleTickRow
	for rows.Next() {
		var t driver.ScheduleTickRow
		var at, fired string
		var run sql.NullString
		if err := rows.Scan(&t.ScheduleName, &at, &run, &t.Skipped, &fired); err != nil {
			return nil, fmt.Errorf("sqlite: list ticks of schedule %q: %w", p.Name, mapError(err))
		}
		if t.At, err = parseTime(at); err != nil {
			return nil, err
		}
		if t.FiredAt, err = parseTime(fired); err != nil {
			return nil, err
		}
		if t.PipelineID, err = parseOptID(run); err != nil {
			return nil, err
		}
		out = append(out, &t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list ticks of schedule %q: %w", p.Name, mapError(err))
	}
	return out, nil
}

func scanSchedules(rows *sql.Rows, what string) ([]*driver.Schedule, error) {
	defer rows.Close()
	var out []*driver.Schedule
	for rows.Next() {
		var s driver.Schedule
		var input, next, created, updated string
		var lastTick, lastRun, lastFired sql.NullString
		var lateness int64
		if err := rows.Scan(&s.Name, &s.WorkflowName, &s.Cron, &s.Timezone, &input, &s.CatchUp, &lateness, &s.Overlap, &s.Paused,
			&next, &lastTick, &lastRun, &lastFired, &s.Fired, &s.Skipped, &created, &updated); err != nil {
			return nil, fmt.Errorf("sqlite: %s: %w", what, mapError(err))
		}
		s.Input = []byte(input)
		s.MaxLateness = time.Duration(lateness) * time.Microsecond
		var err error
		for _, f := range []struct {
			src string
			dst *time.Time
		}{{next, &s.NextFireAt}, {created, &s.CreatedAt}, {updated, &s.UpdatedAt}} {
			if *f.dst, err = parseTime(f.src); err != nil {
				return nil, err
			}
		}
		if s.LastTickAt, err = parseTimePtr(lastTick); err != nil {
			return nil, err
		}
		if s.LastFiredAt, err = parseTimePtr(lastFired); err != nil {
			return nil, err
		}
		if s.LastRunID, err = parseOptID(lastRun); err != nil {
			return nil, err
		}
		out = append(out, &s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: %s: %w", what, mapError(err))
	}
	return out, nil
}
