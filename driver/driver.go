// Package driver is the seam between the Cloacina engine and a database.
//
// A backend (driver/sqlite, driver/postgres) implements [Driver] and speaks
// only SQL: it holds no scheduling logic, retries nothing and decides
// nothing. The engine in package cloacina composes these calls inside
// transactions it begins and commits. Every method takes one params value
// and is named noun-verb (TaskClaim, EventList). The behaviour each method
// must have is pinned by the conformance suite in driver/drivertest, which
// every backend runs.
package driver

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
)

// Sentinel errors a backend maps its native errors onto, in one function
// per backend, so the engine can branch with errors.Is.
var (
	// ErrNotFound is returned when a row asked for by id does not exist.
	ErrNotFound = errors.New("not found")
	// ErrTransient marks an error worth retrying: SQLite busy, locked or
	// out of disk space; Postgres serialization failure, deadlock,
	// statement timeout or out of disk space or memory, a write refused by
	// a read-only session (a standby's); a lost connection.
	ErrTransient = errors.New("transient database error")
	// ErrLockWait marks a statement that gave up waiting for a row lock
	// another transaction held: past Tx.LimitLockWait's bound, or at once
	// for PipelineLockNoWait. Such an error wraps ErrTransient too.
	ErrLockWait = errors.New("row lock held by another transaction")
	// ErrSchemaTooNew is returned when the database was migrated by a newer
	// version of Cloacina than the running code knows.
	ErrSchemaTooNew = errors.New("database schema is newer than this version of cloacina")
	// ErrConflict is returned by ChangeSetApply (or by the Commit that
	// sends its writes) when a conditional update found its row in another
	// status than expected. It means a decision was made on stale state;
	// the transaction must be rolled back.
	ErrConflict = errors.New("state changed concurrently")
	// ErrValueRejected marks a write the database refuses because of the
	// data it carries (a value its types cannot hold, a size beyond its
	// limits): writing the same data again cannot succeed.
	ErrValueRejected = errors.New("the database refused a value")
	// ErrWrongTxType is returned by UnwrapTx for a transaction of another backend.
	ErrWrongTxType = errors.New("transaction type does not match the database backend")
	// ErrWrongDatabase is returned by UnwrapTx for a transaction on
	// another database than the backend's: another SQLite file, another
	// PostgreSQL database or server.
	ErrWrongDatabase = errors.New("transaction is not on the backend's database")
	// ErrReadOnly is returned by Begin and Migrate of a backend opened
	// read-only (sqlite.OpenReadOnly, postgres.Opts.ReadOnly).
	ErrReadOnly = errors.New("database opened read-only")
)

// Driver is a database backend.
type Driver interface {
	// Name is the backend's name: "sqlite" or "postgres".
	Name() string
	// Begin starts a write transaction. On SQLite it takes the database
	// write lock at once (BEGIN IMMEDIATE).
	Begin(ctx context.Context) (Tx, error)
	// Reader runs statements outside any transaction. The engine uses it
	// for reads only.
	Reader() Executor
	// UnwrapTx returns an Executor that runs inside a transaction the
	// application owns (pgx.Tx on Postgres, *sql.Tx on SQLite). It first
	// checks, reading in tx, that tx is on the backend's own database (the
	// same SQLite file; the same PostgreSQL server and database), and
	// fails with ErrWrongDatabase otherwise, having written nothing and
	// left tx usable. A ChangeSetApply in it that fails leaves nothing of
	// its writes for tx to commit (on SQLite, where tx stays usable, it
	// writes under a savepoint; PostgreSQL aborts tx). The caller commits or
	// rolls it back; wake-ups requested in it are delivered by the
	// database on commit where the backend can (Postgres), or found by the
	// next poll otherwise.
	UnwrapTx(ctx context.Context, tx any) (Executor, error)
	// Listen subscribes to wake-ups sent by ChangeSet.Notify in committed
	// transactions. The subscription ends with an error when its connection
	// is lost; the caller subscribes again.
	Listen(ctx context.Context) (Subscription, error)
	// Migrate applies pending migrations, serialised against other
	// processes doing the same. It fails with ErrSchemaTooNew when the
	// database is ahead of the code.
	Migrate(ctx context.Context) error
	// MigrationVersion reports the database's schema version (0 when not
	// migrated) and the newest version this backend knows.
	MigrationVersion(ctx context.Context) (current, latest int, err error)
	// LeaseTakeover takes the next term of a vacant lease (see
	// LeaseRenewResult) in a transaction of its own, committed before it
	// returns. Of concurrent takers of one term exactly one gets it; the
	// lease's older term rows are never waited on, so a holder frozen
	// inside a transaction that locks its term cannot stop a takeover.
	//
	// It runs outside the engine's transactions on purpose: a new term
	// left uncommitted by a taker that froze before its commit would hold
	// back every other taker, as the frozen holder's row did.
	LeaseTakeover(ctx context.Context, params *LeaseTakeoverParams) (*LeaseTakeoverResult, error)
	// Close releases the backend's connections, unless they belong to the
	// application.
	Close() error
}

// Tx is a write transaction begun by the engine.
type Tx interface {
	Executor
	// LimitLockWait bounds how long each later statement of the
	// transaction waits for a row lock another transaction holds: a
	// statement that would wait longer fails with an error wrapping
	// ErrLockWait (and ErrTransient), and the transaction must be rolled
	// back. Call it before the transaction's first statement (PostgreSQL
	// sends the bound with BEGIN, at no cost of its own). A d of zero or
	// less lifts the bound. The bound is for row locks: a transaction
	// whose change set notifies commits without it (on PostgreSQL every
	// notifying commit queues for one lock). SQLite's write transaction
	// holds the whole database and never waits for a row: there it does
	// nothing.
	LimitLockWait(d time.Duration)
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
}

// Subscription delivers wake-up payloads.
type Subscription interface {
	// Wait blocks until a payload arrives, ctx is done, or the
	// subscription fails.
	Wait(ctx context.Context) (string, error)
	// Close ends the subscription.
	Close() error
}

// Executor runs the engine's statements, either in a transaction or not.
type Executor interface {
	// PipelineInsertMany creates pipeline rows and returns the ids it
	// inserted, in no particular order. A row whose id exists already is
	// left as it is and its id is not returned, which makes a retried
	// insert after an ambiguous commit harmless.
	PipelineInsertMany(ctx context.Context, params []*PipelineInsertParams) ([]uuid.UUID, error)
	// PipelineGet returns one pipeline or ErrNotFound.
	PipelineGet(ctx context.Context, id uuid.UUID) (*Pipeline, error)
	// PipelineList returns pipelines, newest first.
	PipelineList(ctx context.Context, params *PipelineListParams) ([]*Pipeline, error)
	// PipelineLock locks the given pipelines for update, in id order so
	// that concurrent lockers cannot deadlock, and returns them.
	PipelineLock(ctx context.Context, ids []uuid.UUID) ([]*Pipeline, error)
	// PipelineLockNoWait is PipelineLock failing at once, with an error
	// wrapping ErrTransient, where another transaction holds one of the
	// pipelines, instead of waiting: a lock that never waits cannot close a
	// deadlock, so it may be taken out of id order.
	PipelineLockNoWait(ctx context.Context, ids []uuid.UUID) ([]*Pipeline, error)
	// PipelineLockSkipLocked locks, in id order, those of the given
	// pipelines that no other transaction holds, and returns them: one
	// another transaction holds (or that does not exist) is missing from
	// the result, not waited for. SQLite's write transaction holds every
	// row, so there it is PipelineLock.
	PipelineLockSkipLocked(ctx context.Context, ids []uuid.UUID) ([]*Pipeline, error)

	// TaskInsertMany creates task rows.
	TaskInsertMany(ctx context.Context, tasks []TaskInsert) error
	// TaskList returns tasks ordered by pipeline id, then position
	// (declaration order within the workflow).
	TaskList(ctx context.Context, params *TaskListParams) ([]*Task, error)
	// TaskClaim deletes up to Limit claimable outbox rows of the given
	// workflows, oldest due first, skipping rows another transaction holds,
	// and flips their tasks Ready → Running under RunnerID. The runs of the
	// claimed tasks that were still Pending become Running — except runs
	// another transaction has locked, which are skipped, never waited for
	// (their first claim cannot be far). It returns the claimed tasks with
	// their input contexts, and the runs it started.
	TaskClaim(ctx context.Context, params *TaskClaimParams) (*TaskClaimResult, error)
	// TaskFinishMany applies fenced transitions of Running tasks and
	// returns the ids of the tasks whose fence held, and — when asked for —
	// every task of some runs as they are after the transitions, read in
	// the same round trip where the backend can.
	TaskFinishMany(ctx context.Context, params *TaskFinishParams) (*TaskFinishResult, error)

	// OutboxPeek reports whether claimable work exists, and when the next
	// not-yet-due row becomes claimable.
	OutboxPeek(ctx context.Context, params *OutboxPeekParams) (*OutboxPeekResult, error)
	// OutboxDelete removes a pipeline's outbox rows and returns how many.
	OutboxDelete(ctx context.Context, params *OutboxDeleteParams) (int, error)

	// ChangeSetApply writes a change set: task and pipeline updates
	// (conditional on their from-status; ErrConflict when one does not
	// apply), outbox rows, events, and wake-ups. Inside a Tx the backend
	// may hold the writes and send them with COMMIT, so their errors,
	// ErrConflict included, can surface from Commit instead: treat both
	// alike, and roll back either way.
	ChangeSetApply(ctx context.Context, changes *ChangeSet) error

	// EventList returns events ordered by sequence number; following
	// (EventListParams.AfterSeq) has an order of its own on PostgreSQL.
	EventList(ctx context.Context, params *EventListParams) ([]*Event, error)
	// EventCount counts events.
	EventCount(ctx context.Context, params *EventCountParams) (int64, error)
	// EventLastBefore returns the sequence number of the newest event
	// created before t, or 0 when there is none: the bound of a retention
	// pass (EventDeleteParams.UpTo).
	EventLastBefore(ctx context.Context, t time.Time) (int64, error)
	// EventDelete deletes one batch of old events, the first recorded
	// first, and returns how many and the last it deleted.
	EventDelete(ctx context.Context, params *EventDeleteParams) (*EventDeleteResult, error)

	// RunnerUpsert registers a runner or refreshes its row, heartbeating
	// it by the database's clock (see RunnerRow), and returns the
	// heartbeat it wrote.
	RunnerUpsert(ctx context.Context, params *RunnerUpsertParams) (*RunnerUpsertResult, error)
	// RunnerHeartbeat records a heartbeat at the database's clock and
	// returns that clock's reading; Alive false means the row is gone (the
	// runner was declared dead) and must be registered again.
	RunnerHeartbeat(ctx context.Context, params *RunnerHeartbeatParams) (*RunnerHeartbeatResult, error)
	// RunnerDelete removes a runner's row.
	RunnerDelete(ctx context.Context, params *RunnerDeleteParams) error
	// RunnerDeleteExpired removes the rows of runners whose heartbeat
	// expired by the database's clock and returns their ids.
	RunnerDeleteExpired(ctx context.Context, params *RunnerDeleteExpiredParams) ([]string, error)
	// RunnerList returns the registered runners, oldest first.
	RunnerList(ctx context.Context) ([]*RunnerRow, error)
	// BacklogList returns the unfinished work of each workflow that has
	// any, ordered by workflow name.
	BacklogList(ctx context.Context, params *BacklogListParams) ([]*Backlog, error)
	// ClockRead returns the database's clock now: PostgreSQL's
	// clock_timestamp(), or on SQLite the host's clock, which every
	// process sharing the file reads, with no statement at all. It is the
	// clock RunnerUpsert and RunnerHeartbeat stamp heartbeats with, at the
	// precision the backend stores times. The engine reads it to
	// estimate its offset from the database's clock when no heartbeat has
	// told it yet (a runner that writes without being started).
	ClockRead(ctx context.Context) (time.Time, error)
	// LeaseRenew extends the newest term of a lease if Holder holds it and
	// it has not expired, and reports whether the lease is vacant (see
	// LeaseRenewParams). It never waits on a lease row another
	// transaction holds: a term row locked elsewhere (by a holder frozen
	// inside its transaction, say) is not renewed. A holder whose term
	// expired must take a new one with LeaseTakeover, like anyone else.
	LeaseRenew(ctx context.Context, params *LeaseRenewParams) (*LeaseRenewResult, error)
	// LeaseRelease expires the newest term of a lease if Holder holds it,
	// so that another holder can take the next term at once. It never
	// waits on a locked lease row; a release that cannot apply leaves the
	// term to expire.
	LeaseRelease(ctx context.Context, params *LeaseReleaseParams) error
	// LeaseGet returns the holder of a lease's newest term while it has not
	// expired by the database's clock, or nil when the lease is vacant. It
	// only reads, and never waits on a locked term.
	LeaseGet(ctx context.Context, params *LeaseGetParams) (*LeaseGetResult, error)

	// TaskListOrphaned returns Running tasks whose runner is gone (its
	// heartbeat expired by the database's clock, or its row is missing),
	// with their claims (runner, attempt, recovery count) as stored.
	TaskListOrphaned(ctx context.Context, params *TaskListOrphanedParams) ([]*Task, error)
	// TaskSubStatusSet sets a Running task's sub-status under its claim and
	// reports whether the claim held.
	TaskSubStatusSet(ctx context.Context, params *TaskSubStatusParams) (bool, error)
	// TaskFenceCheck reports which claims no longer hold.
	TaskFenceCheck(ctx context.Context, params *TaskFenceCheckParams) (*TaskFenceCheckResult, error)

	// PipelineDeleteFinished deletes old finished runs (see
	// PipelineDeleteParams), keeping their tasks' names on their events,
	// and returns their ids, in no particular order: a caller whose
	// commit failed can tell whether it happened all the same (a reply
	// lost) by whether they are gone. On PostgreSQL a run another
	// transaction has locked is skipped.
	PipelineDeleteFinished(ctx context.Context, params *PipelineDeleteParams) ([]uuid.UUID, error)
	// PipelineCountFinished counts the runs PipelineDeleteFinished would
	// delete.
	PipelineCountFinished(ctx context.Context, params *PipelineCountParams) (int64, error)

	// ScheduleTickDeleteSkipped deletes old records of skipped ticks (see
	// ScheduleTickDeleteParams) and returns how many.
	ScheduleTickDeleteSkipped(ctx context.Context, params *ScheduleTickDeleteParams) (int, error)

	// ScheduleSync stores the definitions of the schedules a runner
	// declares (see ScheduleSyncParams).
	ScheduleSync(ctx context.Context, params *ScheduleSyncParams) error
	// ScheduleList returns stored schedules, by name.
	ScheduleList(ctx context.Context, params *ScheduleListParams) ([]*Schedule, error)
	// ScheduleDue returns and locks the due schedules (see
	// ScheduleDueParams), by name; call it in a write transaction.
	ScheduleDue(ctx context.Context, params *ScheduleDueParams) ([]*Schedule, error)
	// ScheduleFire records fired ticks and moves the schedule on (see
	// ScheduleFireParams).
	ScheduleFire(ctx context.Context, params *ScheduleFireParams) error
	// SchedulePause pauses or resumes a schedule; it fails with
	// ErrNotFound when there is none of that name.
	SchedulePause(ctx context.Context, params *SchedulePauseParams) error
	// ScheduleDelete removes a schedule and its recorded ticks (the runs
	// they started stay); it fails with ErrNotFound when there is none of
	// that name.
	ScheduleDelete(ctx context.Context, name string) error
	// ScheduleTickList returns the ticks a schedule fired, newest first.
	ScheduleTickList(ctx context.Context, params *ScheduleTickListParams) ([]*ScheduleTickRow, error)
}
