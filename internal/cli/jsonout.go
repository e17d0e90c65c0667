package cli

import (
	"encoding/json"
	"io"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina"
)

// The shapes of --json output: snake_case keys that stay stable across
// versions, times in RFC 3339 with nanoseconds (UTC), contexts and event
// data as the JSON objects they are, and absent values as null (texts as
// ""): an object has the same keys whatever the state of what it shows, so
// a script can rely on the shape it once saw. Lists are JSON Lines, one
// object a line, so a follower's output can be piped as it comes.

// runJSON is a run in `runs list --json`.
type runJSON struct {
	ID              uuid.UUID  `json:"id"`
	Workflow        string     `json:"workflow"`
	WorkflowVersion string     `json:"workflow_version"`
	Status          string     `json:"status"`
	CreatedAt       time.Time  `json:"created_at"`
	StartedAt       *time.Time `json:"started_at"`
	CompletedAt     *time.Time `json:"completed_at"`
	DurationMS      *int64     `json:"duration_ms"`
	Error           string     `json:"error"`
	ParentRunID     *uuid.UUID `json:"parent_run_id"`
	ParentTaskID    *uuid.UUID `json:"parent_task_id"`
}

// runDetailJSON is a run in `runs get --json`: with its input, its final
// context (null until it has finished) and its tasks.
type runDetailJSON struct {
	runJSON
	Input   *cloacina.Context `json:"input"`
	Context *cloacina.Context `json:"context"`
	Tasks   []taskJSON        `json:"tasks"`
}

// taskJSON is a task of `runs get --json`.
type taskJSON struct {
	ID          uuid.UUID  `json:"id"`
	Name        string     `json:"name"`
	Status      string     `json:"status"`
	Attempts    int        `json:"attempts"`
	StartedAt   *time.Time `json:"started_at"`
	CompletedAt *time.Time `json:"completed_at"`
	DurationMS  *int64     `json:"duration_ms"`
	Error       string     `json:"error"`
	Recoveries  int        `json:"recoveries"`
	SubStatus   string     `json:"sub_status"`
}

// taskDetailJSON is `runs get --task NAME --json`: the task with its run,
// its claim (runner_id "" and due_at null when there is none) and its
// contexts (null until it has received or produced one).
type taskDetailJSON struct {
	taskJSON
	RunID       uuid.UUID         `json:"run_id"`
	Workflow    string            `json:"workflow"`
	MaxAttempts int               `json:"max_attempts"`
	RunnerID    string            `json:"runner_id"`
	DueAt       *time.Time        `json:"due_at"`
	Input       *cloacina.Context `json:"input"`
	Output      *cloacina.Context `json:"output"`
}

// eventJSON is an event of `events list --json`.
type eventJSON struct {
	Seq       int64           `json:"seq"`
	ID        uuid.UUID       `json:"id"`
	RunID     uuid.UUID       `json:"run_id"`
	TaskID    *uuid.UUID      `json:"task_id"`
	Task      *string         `json:"task"`
	Type      string          `json:"type"`
	Data      json.RawMessage `json:"data"`
	WorkerID  string          `json:"worker_id"`
	CreatedAt time.Time       `json:"created_at"`
}

// utc returns t in UTC, nil for nil.
func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func millis(d time.Duration) *int64 {
	ms := d.Milliseconds()
	return &ms
}

func newRunSummaryJSON(r *cloacina.RunSummary) runJSON {
	j := runJSON{ID: r.ID, Workflow: r.Workflow, WorkflowVersion: r.WorkflowVersion, Status: string(r.Status),
		CreatedAt: r.CreatedAt.UTC(), StartedAt: utc(r.StartedAt), CompletedAt: utc(r.CompletedAt), Error: r.Error,
		ParentRunID: r.ParentRunID, ParentTaskID: r.ParentTaskID}
	if r.CompletedAt != nil {
		j.DurationMS = millis(r.CompletedAt.Sub(r.CreatedAt))
	}
	return j
}

func newRunJSON(res *cloacina.ExecutionResult) runDetailJSON {
	j := runDetailJSON{runJSON: runJSON{ID: res.ID, Workflow: res.Workflow, WorkflowVersion: res.WorkflowVersion, Status: string(res.Status),
		CreatedAt: res.CreatedAt.UTC(), StartedAt: utc(res.StartedAt), CompletedAt: utc(res.CompletedAt), Error: res.Error,
		ParentRunID: res.ParentRunID, ParentTaskID: res.ParentTaskID}, Input: res.Input, Context: res.Context,
		Tasks: make([]taskJSON, len(res.Tasks))}
	if res.CompletedAt != nil {
		j.DurationMS = millis(res.Duration)
	}
	for i := range res.Tasks {
		j.Tasks[i] = newTaskJSON(&res.Tasks[i])
	}
	return j
}

func newTaskJSON(t *cloacina.TaskResult) taskJSON {
	j := taskJSON{ID: t.ID, Name: t.Name, Status: string(t.Status), Attempts: t.Attempts, StartedAt: utc(t.StartedAt),
		CompletedAt: utc(t.CompletedAt), Error: t.Error, Recoveries: t.Recoveries, SubStatus: t.SubStatus}
	if t.StartedAt != nil && t.CompletedAt != nil && t.Status != cloacina.TaskStatusSkipped {
		j.DurationMS = millis(t.Duration)
	}
	return j
}

func newTaskDetailJSON(t *cloacina.TaskDetail) taskDetailJSON {
	return taskDetailJSON{taskJSON: newTaskJSON(&t.TaskResult), RunID: t.RunID, Workflow: t.Workflow, MaxAttempts: t.MaxAttempts,
		RunnerID: t.RunnerID, DueAt: utc(t.DueAt), Input: t.Input, Output: t.Output}
}

func newEventJSON(e *cloacina.Event) eventJSON {
	j := eventJSON{Seq: e.SequenceNum, ID: e.ID, RunID: e.PipelineID, TaskID: e.TaskID, Type: string(e.Type),
		Data: e.Data, WorkerID: e.WorkerID, CreatedAt: e.CreatedAt.UTC()}
	if e.TaskID != nil {
		j.Task = &e.TaskName
	}
	if len(j.Data) == 0 {
		j.Data = json.RawMessage("{}")
	}
	return j
}

// writeJSONLines writes each value as one line of JSON.
func writeJSONLines[T any](w io.Writer, values []T, conv func(T) any) error {
	enc := json.NewEncoder(w)
	for _, v := range values {
		if err := enc.Encode(conv(v)); err != nil {
			return err
		}
	}
	return nil
}
