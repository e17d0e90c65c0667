package sqlite

import (
	"database/sql"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// Row scanning. A claim and a completion each read a task row per task.
// Scanned into variables of its own, a row cost a dozen allocations more
// than the driver's: every variable handed to Scan escapes, and each
// nullable time and JSON column was copied into a new value of its own. A
// taskScan scans every row of a query into the same scratch fields,
// through destinations made once, and builds each task with one allocation
// for the task and the times it points to (plus a copy of each JSON
// document).

// taskScan scans the task columns (taskColumns) of a query's rows.
type taskScan struct {
	id, pid, status, created, updated string
	input, output                     sql.NullString
	available, started, completed     sql.NullString
	t                                 driver.Task // scanned in place, copied out
	dest                              []any
}

func newTaskScan() *taskScan {
	s := &taskScan{}
	t := &s.t
	s.dest = []any{&s.id, &s.pid, &t.WorkflowName, &t.Name, &t.Position, &s.status, &t.Attempt, &t.MaxAttempts,
		&s.input, &s.output, &t.Error, &t.RunnerID, &t.RecoveryCount, &t.SubStatus, &s.available, &s.created,
		&s.started, &s.completed, &s.updated, &t.OpenDeps}
	return s
}

// taskAlloc is a task with room for the times it points to: one
// allocation for both.
type taskAlloc struct {
	task  driver.Task
	times [3]time.Time
}

func (s *taskScan) scan(row interface{ Scan(...any) error }) (*driver.Task, error) {
	if err := row.Scan(s.dest...); err != nil {
		return nil, mapError(err)
	}
	a := &taskAlloc{task: s.t}
	t := &a.task
	var err error
	if t.ID, err = uuid.Parse(s.id); err != nil {
		return nil, fmt.Errorf("sqlite: bad task id %q: %w", s.id, err)
	}
	if t.PipelineID, err = uuid.Parse(s.pid); err != nil {
		return nil, fmt.Errorf("sqlite: bad pipeline id %q: %w", s.pid, err)
	}
	t.Status = driver.TaskStatus(s.status)
	t.Input = jsonValue(s.input)
	t.Output = jsonValue(s.output)
	if t.AvailableAt, err = parseTimeInto(s.available, &a.times[0]); err != nil {
		return nil, err
	}
	if t.CreatedAt, err = parseTime(s.created); err != nil {
		return nil, err
	}
	if t.UpdatedAt, err = parseTime(s.updated); err != nil {
		return nil, err
	}
	if t.StartedAt, err = parseTimeInto(s.started, &a.times[1]); err != nil {
		return nil, err
	}
	if t.CompletedAt, err = parseTimeInto(s.completed, &a.times[2]); err != nil {
		return nil, err
	}
	return t, nil
}

// pipelineScan scans the pipeline columns (pipelineColumns) of a query's
// rows.
type pipelineScan struct {
	id, status, created, updated      string
	input, output, started, completed sql.NullString
	parent, parentTask                sql.NullString
	p                                 driver.Pipeline // scanned in place, copied out
	dest                              []any
}

func newPipelineScan() *pipelineScan {
	s := &pipelineScan{}
	p := &s.p
	s.dest = []any{&s.id, &p.WorkflowName, &p.WorkflowVersion, &s.status, &s.input, &s.output, &p.Error,
		&s.created, &s.started, &s.completed, &s.updated, &s.parent, &s.parentTask}
	return s
}

// pipelineAlloc is a pipeline with room for the times it points to.
type pipelineAlloc struct {
	p     driver.Pipeline
	times [2]time.Time
}

func (s *pipelineScan) scan(row interface{ Scan(...any) error }) (*driver.Pipeline, error) {
	if err := row.Scan(s.dest...); err != nil {
		return nil, mapError(err)
	}
	a := &pipelineAlloc{p: s.p}
	p := &a.p
	var err error
	if p.ID, err = uuid.Parse(s.id); err != nil {
		return nil, fmt.Errorf("sqlite: bad pipeline id %q: %w", s.id, err)
	}
	p.Status = driver.PipelineStatus(s.status)
	p.Input = jsonValue(s.input)
	p.Output = jsonValue(s.output)
	if p.CreatedAt, err = parseTime(s.created); err != nil {
		return nil, err
	}
	if p.UpdatedAt, err = parseTime(s.updated); err != nil {
		return nil, err
	}
	if p.StartedAt, err = parseTimeInto(s.started, &a.times[0]); err != nil {
		return nil, err
	}
	if p.CompletedAt, err = parseTimeInto(s.completed, &a.times[1]); err != nil {
		return nil, err
	}
	if p.ParentPipelineID, err = parseOptID(s.parent); err != nil {
		return nil, fmt.Errorf("sqlite: pipeline %s: bad parent id: %w", p.ID, err)
	}
	if p.ParentTaskID, err = parseOptID(s.parentTask); err != nil {
		return nil, fmt.Errorf("sqlite: pipeline %s: bad parent task id: %w", p.ID, err)
	}
	return p, nil
}

// parseOptID parses a nullable id column: nil for NULL.
func parseOptID(ns sql.NullString) (*uuid.UUID, error) {
	if !ns.Valid {
		return nil, nil
	}
	id, err := uuid.Parse(ns.String)
	if err != nil {
		return nil, err
	}
	return &id, nil
}

// parseTimeInto parses a nullable time into slot and returns slot, or nil
// for NULL.
func parseTimeInto(ns sql.NullString, slot *time.Time) (*time.Time, error) {
	if !ns.Valid {
		return nil, nil
	}
	t, err := parseTime(ns.String)
	if err != nil {
		return nil, err
	}
	*slot = t
	return slot, nil
}
