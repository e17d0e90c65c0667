package postgres

import (
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/cloacina-go/cloacina/driver"
)

// Row scanning. A claim and a completion each read a task row per task
// (and a completion a run row per run). Scanned field by field into a new
// driver.Task, a row cost a dozen allocations: a destination list, a
// string per text column, a time.Time per nullable timestamp twice over
// (pgx's, then a UTC copy) and a slice per JSON column. A taskScan scans
// every row of a query into the same scratch fields instead, through
// destinations made once, and builds each task with one allocation (the
// task and the times it points to), one for its JSON documents, and a
// string only for text that differs from the previous row's (the rows of
// one query mostly share their workflow, runner and status).

// text scans a non-null text column. It keeps the previous row's string
// when the bytes are the same.
type text struct{ s string }

func (x *text) ScanBytes(b []byte) error {
	if b == nil {
		return errors.New("unexpected NULL text")
	}
	if string(b) != x.s {
		x.s = string(b)
	}
	return nil
}

// jsonCol scans a nullable JSON column into a buffer it reuses.
type jsonCol struct {
	b    []byte
	null bool
}

func (x *jsonCol) ScanBytes(b []byte) error {
	x.null = b == nil
	x.b = append(x.b[:0], b...)
	return nil
}

// docs copies the documents of the columns cols into one new buffer and
// returns them in order, nil for NULL (or empty). JSON columns are scanned as bytes:
// pgx hands a json.RawMessage to json.Unmarshal, which validates and
// copies every context again.
func docs(cols ...*jsonCol) [2][]byte {
	var out [2][]byte
	n := 0
	for _, c := range cols {
		n += len(c.b)
	}
	if n == 0 {
		return out
	}
	buf := make([]byte, 0, n)
	for i, c := range cols {
		if c.null || len(c.b) == 0 {
			continue
		}
		start := len(buf)
		buf = append(buf, c.b...)
		out[i] = buf[start:len(buf):len(buf)]
	}
	return out
}

// finite returns the UTC time of a non-null timestamp.
func finite(ts pgtype.Timestamptz) (time.Time, error) {
	if !ts.Valid {
		return time.Time{}, errors.New("unexpected NULL timestamp")
	}
	if ts.InfinityModifier != pgtype.Finite {
		return time.Time{}, errors.New("cannot scan an infinite timestamp into a time.Time")
	}
	return ts.Time.UTC(), nil
}

// optional sets *dst to the UTC time of a nullable timestamp, in slot.
func optional(ts pgtype.Timestamptz, slot *time.Time, dst **time.Time) error {
	if !ts.Valid {
		*dst = nil
		return nil
	}
	t, err := finite(ts)
	if err != nil {
		return err
	}
	*slot = t
	*dst = slot
	return nil
}

// taskScan scans the task columns (taskColumns) of a query's rows,
// between the extra columns the query selects before and after them.
type taskScan struct {
	id, pid                                         uuid.UUID
	workflow, name, status, errText, runner, sub    text
	position, attempt, maxAttempts, recovery, open  int
	input, output                                   jsonCol
	available, created, started, completed, updated pgtype.Timestamptz
	dest                                            []any
}

// newTaskScan returns a scanner of task rows; before and after are the
// destinations of the extra columns, scanned again for each row.
func newTaskScan(before []any, after ...any) *taskScan {
	s := &taskScan{}
	s.dest = append(before, scanID{&s.id}, scanID{&s.pid}, &s.workflow, &s.name, &s.position, &s.status, &s.attempt,
		&s.maxAttempts, &s.input, &s.output, &s.errText, &s.runner, &s.recovery, &s.sub, &s.available, &s.created,
		&s.started, &s.completed, &s.updated, &s.open)
	s.dest = append(s.dest, after...)
	return s
}

// taskAlloc is a task with room for the times it points to: one
// allocation for both.
type taskAlloc struct {
	task  driver.Task
	times [3]time.Time
}

func (s *taskScan) scan(row pgx.Row) (*driver.Task, error) {
	if err := row.Scan(s.dest...); err != nil {
		return nil, mapError(err)
	}
	a := &taskAlloc{}
	t := &a.task
	t.ID, t.PipelineID = s.id, s.pid
	t.WorkflowName, t.Name, t.Status = s.workflow.s, s.name.s, driver.TaskStatus(s.status.s)
	t.Position, t.Attempt, t.MaxAttempts, t.RecoveryCount, t.OpenDeps = s.position, s.attempt, s.maxAttempts, s.recovery, s.open
	t.Error, t.RunnerID, t.SubStatus = s.errText.s, s.runner.s, s.sub.s
	d := docs(&s.input, &s.output)
	t.Input, t.Output = d[0], d[1]
	var err error
	if t.CreatedAt, err = finite(s.created); err != nil {
		return nil, err
	}
	if t.UpdatedAt, err = finite(s.updated); err != nil {
		return nil, err
	}
	if err := optional(s.available, &a.times[0], &t.AvailableAt); err != nil {
		return nil, err
	}
	if err := optional(s.started, &a.times[1], &t.StartedAt); err != nil {
		return nil, err
	}
	if err := optional(s.completed, &a.times[2], &t.CompletedAt); err != nil {
		return nil, err
	}
	return t, nil
}

// pipelineScan scans the pipeline columns (pipelineColumns) of a query's
// rows.
type pipelineScan struct {
	id                                   uuid.UUID
	workflow, version, status, errText   text
	input, output                        jsonCol
	created, started, completed, updated pgtype.Timestamptz
	parent, parentTask                   *uuid.UUID
	dest                                 []any
}

func newPipelineScan() *pipelineScan {
	s := &pipelineScan{}
	s.dest = []any{scanID{&s.id}, &s.workflow, &s.version, &s.status, &s.input, &s.output, &s.errText,
		&s.created, &s.started, &s.completed, &s.updated, scanOptID{&s.parent}, scanOptID{&s.parentTask}}
	return s
}

// pipelineAlloc is a pipeline with room for the times it points to.
type pipelineAlloc struct {
	p     driver.Pipeline
	times [2]time.Time
}

func (s *pipelineScan) scan(row pgx.Row) (*driver.Pipeline, error) {
	if err := row.Scan(s.dest...); err != nil {
		return nil, mapError(err)
	}
	a := &pipelineAlloc{}
	p := &a.p
	p.ID, p.WorkflowName, p.WorkflowVersion = s.id, s.workflow.s, s.version.s
	p.Status, p.Error = driver.PipelineStatus(s.status.s), s.errText.s
	// scanOptID allocates each id it scans: the pointers are this row's.
	p.ParentPipelineID, p.ParentTaskID = s.parent, s.parentTask
	d := docs(&s.input, &s.output)
	p.Input, p.Output = d[0], d[1]
	var err error
	if p.CreatedAt, err = finite(s.created); err != nil {
		return nil, err
	}
	if p.UpdatedAt, err = finite(s.updated); err != nil {
		return nil, err
	}
	if err := optional(s.started, &a.times[0], &p.StartedAt); err != nil {
		return nil, err
	}
	if err := optional(s.completed, &a.times[1], &p.CompletedAt); err != nil {
		return nil, err
	}
	return p, nil
}
