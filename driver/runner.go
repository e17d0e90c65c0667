package driver

import (
	"time"

	"github.com/google/uuid"
)

// RunnerRow is a registered runner: one row per live runner process,
// heartbeated by that runner alone.
type RunnerRow struct {
	ID          string
	Name        string
	Host        string
	PID         int
	Workflows   []string
	StartedAt   time.Time
	HeartbeatAt time.Time
}

// RunnerUpsertParams registers a runner, or refreshes its row.
type RunnerUpsertParams struct {
	ID        string
	Name      string
	Host      string
	PID       int
	Workflows []string
	Now       time.Time
}

// RunnerHeartbeatParams records that a runner is alive.
type RunnerHeartbeatParams struct {
	ID  string
	Now time.Time
}

// RunnerDeleteParams removes one runner's row.
type RunnerDeleteParams struct {
	ID string
}

// RunnerDeleteExpiredParams removes the rows of runners whose last
// heartbeat is older than HeartbeatBefore.
type RunnerDeleteExpiredParams struct {
	HeartbeatBefore time.Time
}

// LeaseAcquireParams takes or renews a named lease: it succeeds when the
// lease is free, expired, or already held by Holder.
type LeaseAcquireParams struct {
	Name      string
	Holder    string
	Now       time.Time
	ExpiresAt time.Time
}

// LeaseReleaseParams gives up a lease, only if Holder holds it.
type LeaseReleaseParams struct {
	Name   string
	Holder string
}

// TaskListOrphanedParams finds Running tasks whose runner is gone: its row
// is missing or its last heartbeat is older than HeartbeatBefore.
type TaskListOrphanedParams struct {
	HeartbeatBefore time.Time
	// RunnerID, when set, lists instead the Running tasks claimed under that
	// runner id whatever its row says (HeartbeatBefore is ignored): a runner
	// that starts finds the claims an earlier process with the same id left
	// behind, which the sweep cannot see while the id heartbeats again.
	RunnerID string
	Limit    int
}

// TaskSubStatusParams sets the sub-status of a Running task (e.g.
// "deferred"), fenced on its claim.
type TaskSubStatusParams struct {
	Fence     Fence
	SubStatus string
	Now       time.Time
}

// TaskFenceCheckParams asks which of the given claims no longer hold.
type TaskFenceCheckParams struct {
	Fences []Fence
}

// TaskFenceCheckResult lists the tasks whose claim was lost.
type TaskFenceCheckResult struct {
	Lost []uuid.UUID
}
