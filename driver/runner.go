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

// LeaseRenewParams renews Holder's term of a named lease.
//
// A lease is a sequence of terms, each held by one holder until it
// expires; the newest term is the lease. Expiry is judged by the
// database's clock, never by the runners', so runners whose clocks
// disagree still agree on who holds a lease.
type LeaseRenewParams struct {
	Name   string
	Holder string
	// TTL is how long the renewed term lasts, from the database's clock
	// when it is renewed.
	TTL time.Duration
}

// LeaseRenewResult is what a renewal found.
type LeaseRenewResult struct {
	// Held reports that Holder held the lease's newest term, unexpired,
	// and renewed it.
	Held bool
	// Vacant reports that nobody holds the lease: no term was ever taken,
	// or the newest one expired (or was released). LeaseTakeover may take
	// the next term.
	Vacant bool
}

// LeaseTakeoverParams takes the next term of a vacant lease for Holder.
type LeaseTakeoverParams struct {
	Name   string
	Holder string
	// TTL is how long the new term lasts, from the database's clock when
	// it is taken.
	TTL time.Duration
}

// LeaseTakeoverResult is what a takeover got.
type LeaseTakeoverResult struct {
	// Taken reports that Holder now holds the lease, in term Term. False
	// means the lease was not vacant, or another taker got the term.
	Taken bool
	Term  int64
}

// LeaseReleaseParams gives up a lease: its newest term expires at once,
// only if Holder holds it.
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
