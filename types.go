package cloacina

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// PipelineStatus is the status of a run: Pending → Running → Completed |
// Failed | Cancelled, and Running ↔ Paused.
type PipelineStatus = driver.PipelineStatus

// Run statuses.
const (
	// PipelinePending: created, no task claimed yet.
	PipelinePending = driver.PipelinePending
	// PipelineRunning: at least one task has been claimed.
	PipelineRunning = driver.PipelineRunning
	// PipelinePaused: no new task is claimed until Resume.
	PipelinePaused = driver.PipelinePaused
	// PipelineCompleted: every task Completed or was Skipped.
	PipelineCompleted = driver.PipelineCompleted
	// PipelineFailed: every task ended and at least one Failed.
	PipelineFailed = driver.PipelineFailed
	// PipelineCancelled: cancelled on request.
	PipelineCancelled = driver.PipelineCancelled
)

// TaskStatus is the status of one task of a run: NotStarted → Ready →
// Running → Completed | Failed, NotStarted → Skipped, Running → Ready
// (retry or recovery).
type TaskStatus = driver.TaskStatus

// Task statuses.
const (
	TaskStatusNotStarted = driver.TaskNotStarted
	TaskStatusReady      = driver.TaskReady
	TaskStatusRunning    = driver.TaskRunning
	TaskStatusCompleted  = driver.TaskCompleted
	TaskStatusFailed     = driver.TaskFailed
	TaskStatusSkipped    = driver.TaskSkipped
)

// EventType names a kind of state transition in the execution event log.
type EventType = driver.EventType

// Execution event types.
const (
	EventPipelineStarted    = driver.EventPipelineStarted
	EventPipelineCompleted  = driver.EventPipelineCompleted
	EventPipelineFailed     = driver.EventPipelineFailed
	EventPipelineCancelled  = driver.EventPipelineCancelled
	EventPipelinePaused     = driver.EventPipelinePaused
	EventPipelineResumed    = driver.EventPipelineResumed
	EventTaskCreated        = driver.EventTaskCreated
	EventTaskMarkedReady    = driver.EventTaskMarkedReady
	EventTaskClaimed        = driver.EventTaskClaimed
	EventTaskStarted        = driver.EventTaskStarted
	EventTaskDeferred       = driver.EventTaskDeferred
	EventTaskResumed        = driver.EventTaskResumed
	EventTaskCompleted      = driver.EventTaskCompleted
	EventTaskFailed         = driver.EventTaskFailed
	EventTaskRetryScheduled = driver.EventTaskRetryScheduled
	EventTaskSkipped        = driver.EventTaskSkipped
	EventTaskAbandoned      = driver.EventTaskAbandoned
	EventTaskReset          = driver.EventTaskReset
)

// ExecutionResult is the state of one run: returned by Execute, Wait and Get.
type ExecutionResult struct {
	ID              uuid.UUID
	Workflow        string
	WorkflowVersion string
	Status          PipelineStatus
	// Input is the context the run was started with.
	Input *Context
	// Context is the run's final context: the merge of its leaf tasks'
	// outputs in declaration order. Set once the run has Completed or
	// Failed; nil while it is unfinished. A Cancelled run has none, nor
	// has a run failed because its workflow changed shape under its name
	// (its leaves are not this code's to merge).
	Context   *Context
	Tasks     []TaskResult // in declaration order
	CreatedAt time.Time
	StartedAt *time.Time
	// CompletedAt is when the run reached a terminal status.
	CompletedAt *time.Time
	// Duration runs from creation to completion (0 while running).
	Duration time.Duration
	// Error describes why the run failed or was cancelled.
	Error string
	// ParentRunID and ParentTaskID identify the run and task that started
	// this run from inside a task function (see Runner.Execute); nil for a
	// run started otherwise.
	ParentRunID  *uuid.UUID
	ParentTaskID *uuid.UUID
}

// TaskDetail is one task with the contexts it received and produced,
// returned by Runner.GetTask: what to look at when a task did not do what
// was expected of it.
type TaskDetail struct {
	TaskResult
	// RunID and Workflow identify the task's run.
	RunID    uuid.UUID
	Workflow string
	// MaxAttempts is the retry policy's limit on attempts; Attempts is the
	// number of the latest one (a task waiting for its retry after one
	// failed try shows 2).
	MaxAttempts int
	// Input is the context the task received: the run's input for a first
	// task, else its dependencies' outputs merged (a dependency that failed
	// or was skipped passes on its own input). For a skipped task it is
	// the context the task would have received. Nil until the task is
	// ready or skipped.
	Input *Context
	// Output is the context the task produced. Nil until it completes.
	Output *Context
	// RunnerID is the runner holding the task's claim while it is Running.
	RunnerID string
	// DueAt is when a Ready task may be claimed: a retry's due time, or
	// when the task became ready. Nil for a task that is not Ready.
	DueAt *time.Time
}

// Backlog is the unfinished work of one workflow, as Runner.Backlog
// reports it: whether its runners keep up.
type Backlog struct {
	Workflow string
	// Ready counts tasks that any runner of the workflow may claim now;
	// Delayed counts Ready tasks whose retry delay has not passed yet. A
	// paused run's Ready tasks are in neither: pausing holds them back.
	Ready, Delayed int
	// OldestReadyAt is when the longest-waiting claimable task became
	// claimable; nil when Ready is 0. Its age is how far behind the
	// workflow's runners are.
	OldestReadyAt *time.Time
	// Running counts Running tasks, and Deferred those of them waiting in
	// DeferUntil without a concurrency slot.
	Running, Deferred int
	// PendingRuns, RunningRuns and PausedRuns count the workflow's runs
	// that have not finished, by status.
	PendingRuns, RunningRuns, PausedRuns int
}

// Err returns a *RunError when the run Failed or was Cancelled, else nil.
func (r *ExecutionResult) Err() error {
	if r.Status == PipelineFailed || r.Status == PipelineCancelled {
		return &RunError{RunID: r.ID, Workflow: r.Workflow, Status: r.Status, Message: r.Error}
	}
	return nil
}

// Task returns the result of the named task, or nil.
func (r *ExecutionResult) Task(name string) *TaskResult {
	for i := range r.Tasks {
		if r.Tasks[i].Name == name {
			return &r.Tasks[i]
		}
	}
	return nil
}

// TaskResult is the state of one task of a run.
type TaskResult struct {
	ID     uuid.UUID
	Name   string
	Status TaskStatus
	// Attempts is the number of the latest attempt (0 if never ready).
	Attempts    int
	StartedAt   *time.Time // start of the latest attempt
	CompletedAt *time.Time
	// Duration of the latest attempt, for a task that ended after running.
	Duration time.Duration
	// Error is the failure text, or the reason the task was skipped.
	Error string
	// Recoveries counts how often the task was reset after its runner died.
	Recoveries int
	// SubStatus is "deferred" while a Running task waits in DeferUntil.
	SubStatus string
}

// RunnerInfo is a registered, heartbeating runner. StartedAt and
// HeartbeatAt are the database's clock (the server's on PostgreSQL), by
// which liveness is judged, not the runner's.
type RunnerInfo struct {
	ID          string
	Name        string
	Host        string
	PID         int
	Workflows   []string
	StartedAt   time.Time
	HeartbeatAt time.Time
	// Leader reports that the runner holds the maintenance lease, by the
	// database's clock: it is the one that sweeps for dead runners and
	// resets their tasks. At most one runner is leader; between terms,
	// none is.
	Leader bool
}

// RunSummary is one run in a listing.
type RunSummary struct {
	ID              uuid.UUID
	Workflow        string
	WorkflowVersion string
	Status          PipelineStatus
	CreatedAt       time.Time
	StartedAt       *time.Time
	CompletedAt     *time.Time
	Error           string
	// ParentRunID and ParentTaskID identify the run and task that started
	// this run, as in ExecutionResult; nil for a run without a parent.
	ParentRunID  *uuid.UUID
	ParentTaskID *uuid.UUID
}

// Event is one entry of the execution event log.
type Event struct {
	// SequenceNum strictly increases across the database.
	SequenceNum int64
	ID          uuid.UUID
	PipelineID  uuid.UUID
	// TaskID is nil for pipeline events.
	TaskID *uuid.UUID
	// TaskName is the name of the event's task, "" for pipeline events.
	// It outlives the task: run retention (DeleteRunsBefore) keeps it on
	// the events of the runs it deletes. (The events of runs deleted
	// before that, by a version without migration 11, have none.)
	TaskName string
	Type     EventType
	// Data is the event's JSON payload: EventData as encoding/json encodes
	// it, the same bytes on every backend. Payload decodes it.
	Data json.RawMessage
	// WorkerID is the id of the runner that caused the transition.
	WorkerID  string
	CreatedAt time.Time
}

// Payload decodes the event's data.
func (e *Event) Payload() (*EventData, error) {
	var d EventData
	if len(e.Data) == 0 {
		return &d, nil
	}
	if err := json.Unmarshal(e.Data, &d); err != nil {
		return nil, fmt.Errorf("decode data of event %d: %w", e.SequenceNum, err)
	}
	return &d, nil
}

// EventData is the payload of an execution event; fields not relevant to
// the event type are empty.
type EventData struct {
	// Attempt is the attempt the event concerns.
	Attempt int `json:"attempt,omitempty"`
	// MaxAttempts is the task's attempt budget.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// NextAttempt is the attempt a retry will run.
	NextAttempt int `json:"next_attempt,omitempty"`
	// Error is the failure text.
	Error string `json:"error,omitempty"`
	// RetryAt is when a scheduled retry becomes claimable.
	RetryAt *time.Time `json:"retry_at,omitempty"`
	// DelayMS is the retry delay in milliseconds.
	DelayMS *int64 `json:"delay_ms,omitempty"`
	// Reason says why a task was skipped, reset or abandoned, why a run
	// was cancelled, or which run a deferred task waits for.
	Reason string `json:"reason,omitempty"`
	// DurationMS is how long the attempt (or the run) took.
	DurationMS *int64 `json:"duration_ms,omitempty"`
	// RunnerName is the human name of the runner (WorkerID is its id).
	RunnerName string `json:"runner_name,omitempty"`
	// Workflow and WorkflowVersion identify the workflow of a started run.
	Workflow        string `json:"workflow,omitempty"`
	WorkflowVersion string `json:"workflow_version,omitempty"`
	// RecoveryCount is the task's recovery count after a reset.
	RecoveryCount int `json:"recovery_count,omitempty"`
	// OutboxRows is how many queued tasks a pause removed or a resume restored.
	OutboxRows *int `json:"outbox_rows,omitempty"`
}

func ms(d time.Duration) *int64 {
	v := d.Milliseconds()
	return &v
}

func eventFromDriver(e *driver.Event) *Event {
	return &Event{SequenceNum: e.SequenceNum, ID: e.ID, PipelineID: e.PipelineID, TaskID: e.TaskID, TaskName: e.TaskName,
		Type: e.Type, Data: e.Data, WorkerID: e.WorkerID, CreatedAt: e.CreatedAt}
}
