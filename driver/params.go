package driver

import (
	"encoding/json"
	"time"

	"github.com/google/uuid"
)

// PipelineInsertParams creates one pipeline row.
//
// A run created Running (its first tasks claimed in the same transaction)
// starts at Now.
type PipelineInsertParams struct {
	ID              uuid.UUID
	WorkflowName    string
	WorkflowVersion string
	Status          PipelineStatus
	Input           json.RawMessage
	Now             time.Time
	// ParentPipelineID and ParentTaskID record the run and task that
	// started this run; nil for a run without a parent.
	ParentPipelineID *uuid.UUID
	ParentTaskID     *uuid.UUID
}

// TaskInsert is one task row to create. A task created Running is claimed
// by RunnerID in the same transaction; its attempt starts at Now.
type TaskInsert struct {
	ID           uuid.UUID
	PipelineID   uuid.UUID
	WorkflowName string
	Name         string
	Position     int // declaration order within the workflow
	Status       TaskStatus
	Attempt      int
	MaxAttempts  int
	Input        json.RawMessage // for tasks created Ready
	Error        string          // skip reason for tasks created Skipped
	AvailableAt  *time.Time
	RunnerID     string // for tasks created Running
	OpenDeps     int    // see Task.OpenDeps; 0 stores NULL
	Now          time.Time
}

// PipelineListParams selects pipelines. Zero fields do not filter.
type PipelineListParams struct {
	IDs          []uuid.UUID
	Statuses     []PipelineStatus
	WorkflowName string
	// ParentPipelineIDs keeps the children of these runs: the runs whose
	// ParentPipelineID is one of them.
	ParentPipelineIDs []uuid.UUID
	// CreatedBefore and BeforeID page backwards through the list: when set,
	// only runs created strictly before (CreatedBefore, BeforeID) are returned.
	CreatedBefore *time.Time
	BeforeID      uuid.UUID
	// CreatedSince keeps runs created at or after it, CreatedUntil those
	// created strictly before it; nil does not filter.
	CreatedSince, CreatedUntil *time.Time
	Limit                      int // 0 means no limit
}

// TaskListParams selects tasks, ordered by pipeline and position.
type TaskListParams struct {
	PipelineIDs []uuid.UUID
	IDs         []uuid.UUID
	// Names, with PipelineIDs, narrows the listing to the tasks of those
	// names (for one run: the few of a wide run a decision reads).
	Names []string
	// WithContexts loads Input and Output; without it they are left nil,
	// which keeps status-only reads cheap.
	WithContexts bool
}

// TaskClaimParams claims up to Limit claimable outbox rows in one
// transaction: the rows are deleted and their tasks flipped Ready → Running
// under the runner's claim.
type TaskClaimParams struct {
	RunnerID  string
	Workflows []string // only rows of these workflows are claimed
	// RunIDs, when not empty, narrows the claim to tasks of these runs (a
	// stopping runner finishing the child runs its tasks wait for).
	RunIDs []uuid.UUID
	Limit  int
	Now    time.Time
}

// OutboxPeekParams asks whether claimable work exists without taking it.
type OutboxPeekParams struct {
	Workflows []string
	Now       time.Time
}

// OutboxPeekResult describes the outbox as seen by one runner.
type OutboxPeekResult struct {
	// Claimable is true when at least one row is available now.
	Claimable bool
	// NextAvailableAt is the earliest due time of a row that is not yet
	// claimable, or nil when there is none.
	NextAvailableAt *time.Time
}

// TaskFinish is one fenced transition of a Running task: to Completed,
// Failed, or back to Ready for a retry.
type TaskFinish struct {
	Fence   Fence
	Status  TaskStatus
	Output  json.RawMessage // for Completed
	Error   string          // for Failed and Ready (the error that caused the retry)
	Attempt int             // the task's attempt after the transition (incremented for a retry)
	// RecoveryCount is the task's recovery count after the transition
	// (incremented when a dead runner's task is reset).
	RecoveryCount int
	AvailableAt   *time.Time // for Ready: the retry due time
	Now           time.Time
}

// TaskFinishParams applies fenced transitions, and optionally reads back
// the tasks of some runs afterwards.
type TaskFinishParams struct {
	Finishes []TaskFinish
	// ListPipelineIDs asks for every task of these runs, with contexts, as
	// they are after the transitions.
	ListPipelineIDs []uuid.UUID
	// ListStatusOnly lists those tasks without Input and Output (left
	// nil), as TaskList does without WithContexts: a run's contexts can
	// be large, and a caller that needs a few of them reads those alone.
	ListStatusOnly bool
	// LockPipelineIDs locks these runs, as PipelineLock does, before the
	// transitions (in the same round trip where the backend can); they come
	// back in TaskFinishResult.Pipelines. For callers whose transitions do
	// not depend on the runs' state.
	LockPipelineIDs []uuid.UUID
}

// TaskFinishResult is what TaskFinishMany did and read.
type TaskFinishResult struct {
	// Finished holds the ids of the tasks whose fence held.
	Finished []uuid.UUID
	// Tasks holds the tasks of ListPipelineIDs (and any task finished),
	// ordered by run then position.
	Tasks []*Task
	// Pipelines holds the runs of LockPipelineIDs, as PipelineLock returns
	// them: in id order, as they were before the transitions.
	Pipelines []*Pipeline
}

// TaskUpdate is an unfenced transition decided by the engine under the
// pipeline lock, such as NotStarted → Ready or NotStarted → Skipped. It
// applies only when the task is still in FromStatus.
//
// Status Running is a task made ready and claimed in one transaction (a
// runner taking the successors of the tasks it completes): RunnerID holds
// the claim and the attempt starts at Now. Other statuses leave the task's
// runner and start time as they were.
type TaskUpdate struct {
	ID          uuid.UUID
	FromStatus  TaskStatus
	Status      TaskStatus
	Attempt     int
	Input       json.RawMessage // for Ready and Running
	Error       string          // skip reason for Skipped
	AvailableAt *time.Time
	RunnerID    string // for Running
	// OpenDeps replaces the task's count of open dependencies (see
	// Task.OpenDeps; 0 stores NULL). An update from NotStarted to
	// NotStarted writes the count alone.
	OpenDeps int
	Now      time.Time
}

// OutboxInsert is one outbox row: a claimable unit of work.
type OutboxInsert struct {
	TaskID       uuid.UUID
	Attempt      int
	WorkflowName string
	AvailableAt  time.Time
	Now          time.Time
}

// PipelineUpdate is a transition of a pipeline decided under its lock. It
// applies only when the pipeline is still in FromStatus.
type PipelineUpdate struct {
	ID          uuid.UUID
	FromStatus  PipelineStatus
	Status      PipelineStatus
	Output      json.RawMessage // final context, when the run completes or fails
	Error       string
	StartedAt   *time.Time // set when the run starts (kept if already set)
	CompletedAt *time.Time
	Now         time.Time
}

// EventInsert is one execution event to append.
type EventInsert struct {
	ID         uuid.UUID
	PipelineID uuid.UUID
	TaskID     *uuid.UUID
	Type       EventType
	Data       json.RawMessage
	WorkerID   string
	CreatedAt  time.Time
}

// ChangeSet is every write of one state change, applied together inside
// the caller's transaction. Backends may send it in a single round trip.
type ChangeSet struct {
	// NewPipelines and NewTasks are rows to create, before the other
	// writes. A pipeline that exists already fails the change set with
	// ErrConflict; PipelineInsertMany is the call that skips it.
	NewPipelines []*PipelineInsertParams
	NewTasks     []TaskInsert

	Tasks     []TaskUpdate
	Outbox    []OutboxInsert
	Pipelines []PipelineUpdate
	Events    []EventInsert
	// Notify holds wake-up payloads delivered to subscribers once the
	// transaction commits (on Postgres, NOTIFY inside the transaction).
	// Duplicates are sent once.
	Notify []string
}

// Empty reports whether the change set has nothing to write.
func (c *ChangeSet) Empty() bool {
	return len(c.NewPipelines) == 0 && len(c.NewTasks) == 0 && len(c.Tasks) == 0 && len(c.Outbox) == 0 && len(c.Pipelines) == 0 && len(c.Events) == 0 && len(c.Notify) == 0
}

// TaskClaimResult is what a claim took.
type TaskClaimResult struct {
	// Tasks are the claimed tasks, now Running under the claimer.
	Tasks []*Task
	// Started are the runs this claim moved from Pending to Running.
	Started []uuid.UUID
	// StartedVersions holds, for each run of Started in the same order,
	// the workflow version stored with it (the one it was started with,
	// which the claimer's definition of the workflow may not be).
	StartedVersions []string
	// Unstarted are runs of claimed tasks that were Pending but that the
	// claim could not start, because another transaction held the run's
	// row (a control operation, say) and the claim does not wait for it.
	// The caller starts them once that transaction has ended. A backend
	// whose claims cannot meet a concurrent writer (SQLite) leaves it empty.
	Unstarted []uuid.UUID
}

// OutboxDeleteParams removes the outbox rows of one pipeline (pause, cancel).
type OutboxDeleteParams struct {
	PipelineID uuid.UUID
}

// EventListParams selects execution events. Zero fields do not filter.
type EventListParams struct {
	PipelineID *uuid.UUID
	TaskID     *uuid.UUID
	Types      []EventType
	// AfterSeq follows the log: a reader that passes the SequenceNum of
	// the last event it got never skips an event and never gets one twice.
	// A negative AfterSeq follows from the start of the log; zero does not
	// follow. On SQLite (one writer at a time) following returns the
	// events with a larger sequence number. On PostgreSQL a sequence number
	// is taken at insert, not at commit, so an event can commit after a
	// later-numbered one; following there returns events in transaction
	// order (sequence order within a transaction, so an event can come
	// after one numbered higher), and only events of transactions older
	// than every transaction still running. A transaction's place
	// (Event.TxID) is at least that of every transaction that had ended
	// when it wrote its events, so one that waited for another's lock
	// comes after it: the events of one run or task come in the order
	// their transactions changed it. The cost: any transaction that
	// writes, anywhere in the database cluster, holds followers back for as
	// long as it stays open (a session idle in transaction stalls them
	// until it ends); reads that do not follow are not affected. An
	// AfterSeq that names no event (retention deleted it) cannot be placed
	// in transaction order: PostgreSQL then follows from the start of the
	// log, so events can come again but none is skipped; SQLite goes on
	// after it. AfterTx avoids that.
	AfterSeq int64
	// AfterTx, with AfterSeq, is the TxID of the event AfterSeq names, as
	// EventList returned it: PostgreSQL then places the cursor at
	// (AfterTx, AfterSeq) without looking the event up, so a cursor whose
	// event retention deleted still holds its place. Zero looks it up;
	// SQLite needs none.
	AfterTx int64
	// BeforeSeq, when positive, keeps the events numbered below it: with
	// Newest and Limit, the page before the one whose oldest event it
	// names. It bounds numbers, not following order (package cloacina
	// does not combine it with AfterSeq).
	BeforeSeq int64
	// Newest reverses the order: descending sequence number (recent
	// first), or reverse following order with AfterSeq.
	Newest bool
	Limit  int // 0 means no limit
	// CreatedFrom keeps events created at or after it, CreatedBefore
	// those created strictly before it; nil does not filter. Without
	// PipelineID, TaskID and AfterSeq, a backend reads a window that
	// EventSpan.Bound picks through the range of numbers its events span,
	// found in the same statement: the events returned are still exactly
	// those the filter selects.
	CreatedFrom, CreatedBefore *time.Time
}

// EventCountParams counts execution events. Zero fields do not filter.
type EventCountParams struct {
	PipelineID *uuid.UUID
	Before     *time.Time // only events created strictly before this time
	// ExcludeUnfinishedRuns leaves out the events of unfinished runs, as
	// EventDeleteParams.ExcludeUnfinishedRuns does.
	ExcludeUnfinishedRuns bool
}

// EventDeleteParams deletes up to Limit events created before Before,
// the first recorded first: a batch walks the primary key (sequence
// order) and stops at Limit, where ordering by creation time would sort
// every old event again for each batch (PostgreSQL indexes created_at
// with BRIN, which has no order).
type EventDeleteParams struct {
	Before time.Time
	Limit  int
	// UpTo, when positive, leaves events numbered above it alone: with
	// EventLastBefore's result it bounds the walk of the last batch, which
	// would otherwise go on through every newer event.
	UpTo int64
	// After, when positive, leaves events numbered at or below it alone:
	// with the previous batch's Last, a batch starts where that one ended
	// instead of walking again the old events it kept (those of unfinished
	// runs) and, on PostgreSQL, the index entries of those it deleted,
	// which stay until vacuum.
	After int64
	// ExcludeUnfinishedRuns keeps the events of runs that are Pending,
	// Running or Paused, or have a task still Running (a Cancelled run
	// whose task has not returned), however old: only events of the other
	// Completed, Failed or Cancelled runs, and events whose run row no
	// longer exists (events have no foreign key to their run), are
	// deleted. A run's status is
	// read by the statement that deletes, so a run that finishes between
	// two batches loses, in the next one, its old events that batch walks.
	ExcludeUnfinishedRuns bool
}

// EventDeleteResult is what one batch of EventDelete deleted.
type EventDeleteResult struct {
	// Deleted counts the events deleted.
	Deleted int64
	// Last is the highest sequence number deleted, 0 when none was: the
	// next batch's After.
	Last int64
}

// LatestTime and EarliestTime bound the times a backend stores and
// compares with: year 9999 and year 1, in UTC. SQLite writes times as
// fixed-width text and PostgreSQL's timestamptz ends in year 294276, so a
// cutoff beyond them (a far-future "before", say) is taken as the bound on
// both; see ClampTime.
var (
	LatestTime   = time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC)
	EarliestTime = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
)

// ClampTime returns t in UTC, moved within [EarliestTime, LatestTime].
func ClampTime(t time.Time) time.Time {
	switch {
	case t.After(LatestTime):
		return LatestTime
	case t.Before(EarliestTime):
		return EarliestTime
	}
	return t.UTC()
}
