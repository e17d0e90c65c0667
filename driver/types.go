package driver

import (
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// PipelineStatus is the lifecycle state of a pipeline execution (a run).
type PipelineStatus string

// Pipeline statuses. Pending → Running → Completed | Failed | Cancelled, and
// Running ↔ Paused (a Pending run can be paused too).
const (
	PipelinePending   PipelineStatus = "pending"
	PipelineRunning   PipelineStatus = "running"
	PipelinePaused    PipelineStatus = "paused"
	PipelineCompleted PipelineStatus = "completed"
	PipelineFailed    PipelineStatus = "failed"
	PipelineCancelled PipelineStatus = "cancelled"
)

// Terminal reports whether no further transition can happen to the run.
func (s PipelineStatus) Terminal() bool {
	return s == PipelineCompleted || s == PipelineFailed || s == PipelineCancelled
}

// TaskStatus is the lifecycle state of one task execution inside a run.
type TaskStatus string

// Task statuses. NotStarted → Ready → Running → Completed | Failed,
// NotStarted → Skipped, and Running → Ready (retry or recovery).
const (
	TaskNotStarted TaskStatus = "not_started"
	TaskReady      TaskStatus = "ready"
	TaskRunning    TaskStatus = "running"
	TaskCompleted  TaskStatus = "completed"
	TaskFailed     TaskStatus = "failed"
	TaskSkipped    TaskStatus = "skipped"
)

// Terminal reports whether the task will not run again.
func (s TaskStatus) Terminal() bool {
	return s == TaskCompleted || s == TaskFailed || s == TaskSkipped
}

// EventType names one kind of state transition in the execution event log.
type EventType string

// Execution event types, one per kind of transition.
const (
	EventPipelineStarted    EventType = "pipeline_started"
	EventPipelineCompleted  EventType = "pipeline_completed"
	EventPipelineFailed     EventType = "pipeline_failed"
	EventPipelineCancelled  EventType = "pipeline_cancelled"
	EventPipelinePaused     EventType = "pipeline_paused"
	EventPipelineResumed    EventType = "pipeline_resumed"
	EventTaskCreated        EventType = "task_created"
	EventTaskMarkedReady    EventType = "task_marked_ready"
	EventTaskClaimed        EventType = "task_claimed"
	EventTaskStarted        EventType = "task_started"
	EventTaskDeferred       EventType = "task_deferred"
	EventTaskResumed        EventType = "task_resumed"
	EventTaskCompleted      EventType = "task_completed"
	EventTaskFailed         EventType = "task_failed"
	EventTaskRetryScheduled EventType = "task_retry_scheduled"
	EventTaskSkipped        EventType = "task_skipped"
	EventTaskAbandoned      EventType = "task_abandoned"
	EventTaskReset          EventType = "task_reset"
)

// EventTypes lists every event type in a stable order.
var EventTypes = []EventType{
	EventPipelineStarted, EventPipelineCompleted, EventPipelineFailed, EventPipelineCancelled,
	EventPipelinePaused, EventPipelineResumed, EventTaskCreated, EventTaskMarkedReady,
	EventTaskClaimed, EventTaskStarted, EventTaskDeferred, EventTaskResumed, EventTaskCompleted,
	EventTaskFailed, EventTaskRetryScheduled, EventTaskSkipped, EventTaskAbandoned, EventTaskReset,
}

// IndexedEventTypes lists the event types that migration 12's partial
// index on (event_type, sequence_num) holds: those not written for every
// task, and those the engine does not write. task_started is written for
// every task, with task_claimed: keeping it out spares the hot path's
// event insert a btree entry per task. A read by type finds the
// others quickly by walking the log (each task writes them), these
// through the index.
var IndexedEventTypes = []EventType{
	EventPipelineFailed, EventPipelineCancelled, EventPipelinePaused, EventPipelineResumed,
	EventTaskDeferred, EventTaskResumed, EventTaskFailed, EventTaskRetryScheduled, EventTaskSkipped,
	EventTaskAbandoned, EventTaskReset,
}

// IndexedEventTypesFilter returns the predicate of migration 12's index
// on column (event_type, or an alias's) when every type of types is one
// of IndexedEventTypes, else "". A read by those types adds it to its
// WHERE: the planner uses a partial index only when the query's own
// terms imply the index's predicate, which a placeholder (PostgreSQL's
// generic plans, SQLite's every plan) does not show.
func IndexedEventTypesFilter(column string, types []EventType) string {
	if len(types) == 0 {
		return ""
	}
	for _, t := range types {
		if !slices.Contains(IndexedEventTypes, t) {
			return ""
		}
	}
	quoted := make([]string, len(IndexedEventTypes))
	for i, t := range IndexedEventTypes {
		quoted[i] = "'" + string(t) + "'"
	}
	return column + " IN (" + strings.Join(quoted, ", ") + ")"
}

// Pipeline is a stored pipeline execution row.
//
// JSON fields (here, in Task and in Event) read back byte for byte as they
// were written: a backend stores the text, not a parsed form that would
// reorder keys, drop duplicates, respace or reformat numbers, so that the
// same run reads the same on every backend.
type Pipeline struct {
	ID              uuid.UUID
	WorkflowName    string
	WorkflowVersion string
	Status          PipelineStatus
	Input           json.RawMessage
	Output          json.RawMessage // nil until the run completes
	Error           string
	CreatedAt       time.Time
	StartedAt       *time.Time
	CompletedAt     *time.Time
	UpdatedAt       time.Time
	// ParentPipelineID and ParentTaskID are the run and task that started
	// this run from inside a task function; nil for a run started
	// otherwise.
	ParentPipelineID *uuid.UUID
	ParentTaskID     *uuid.UUID
}

// Task is a stored task execution row.
type Task struct {
	ID            uuid.UUID
	PipelineID    uuid.UUID
	WorkflowName  string // denormalised from the pipeline, so claims need no join
	Name          string
	Position      int // declaration order within the workflow
	Status        TaskStatus
	Attempt       int // the attempt queued or running; 0 before the task is first ready
	MaxAttempts   int
	Input         json.RawMessage // set when the task becomes ready
	Output        json.RawMessage // set when the task completes
	Error         string          // failure text or skip reason
	RunnerID      string          // the runner holding the claim, while Running
	RecoveryCount int
	// SubStatus qualifies a Running task: "deferred" while it waits for a
	// condition outside its concurrency slot, else empty.
	SubStatus   string
	AvailableAt *time.Time // when a Ready task may be claimed (retry due time)
	CreatedAt   time.Time
	StartedAt   *time.Time // start of the latest attempt
	CompletedAt *time.Time
	UpdatedAt   time.Time
	// OpenDeps is, for a NotStarted task, how many of its dependencies
	// had not ended when they were last counted; 0 when they were not
	// counted (stored as NULL). The engine keeps it under the run's lock.
	OpenDeps int
}

// Event is one stored execution event.
type Event struct {
	SequenceNum int64
	ID          uuid.UUID
	PipelineID  uuid.UUID
	TaskID      *uuid.UUID
	TaskName    string // from task_executions, else kept on the event by run retention; empty for pipeline events
	Type        EventType
	Data        json.RawMessage
	WorkerID    string
	CreatedAt   time.Time
	// TxID is, on PostgreSQL, the place of the transaction that wrote the
	// event (an xid8: its own id, or the newest that had ended when it
	// wrote the event if that is greater): with SequenceNum, the event's
	// place in following order (EventListParams.AfterTx). Zero on SQLite.
	TxID int64
}

// Fence identifies one claim of a task. Every write for a claimed task is
// conditional on the task still being Running under exactly this claim; a
// mismatch means the claim was lost and the write must change nothing.
type Fence struct {
	TaskID        uuid.UUID
	RunnerID      string
	Attempt       int
	RecoveryCount int
}
