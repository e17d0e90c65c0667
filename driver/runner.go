package driver

import (
	"time"

	"github.com/google/uuid"
)

// RunnerRow is a registered runner: one row per live runner process,
// heartbeated by that runner alone. Its times are the database's clock.
//
// Liveness is set and judged by the database's clock, never by the
// runners': a heartbeat is stamped by the backend, and expiry is a
// duration the backend measures back from its own clock. Runners on
// machines whose clocks disagree so agree on who is alive; a leader whose
// clock ran ahead used to declare live runners dead and reset their tasks,
// and a runner whose clock lagged looked dead to everyone. (PostgreSQL:
// the server's clock_timestamp(); SQLite: the host's clock, which every
// process sharing the file reads.)
type RunnerRow struct {
	ID          string
	Name        string
	Host        string
	PID         int
	Workflows   []string
	StartedAt   time.Time
	HeartbeatAt time.Time
}

// RunnerUpsertParams registers a runner, or refreshes its row. Either way
// the row's heartbeat is the database's clock now; a new row's start time
// too.
type RunnerUpsertParams struct {
	ID        string
	Name      string
	Host      string
	PID       int
	Workflows []string
}

// RunnerUpsertResult is what a registration wrote.
type RunnerUpsertResult struct {
	// HeartbeatAt is the row's new heartbeat: the database's clock when
	// the statement ran. The engine compares it with its own clock to
	// estimate their offset (see ClockRead).
	HeartbeatAt time.Time
}

// RunnerHeartbeatParams records that a runner is alive: its heartbeat
// becomes the database's clock now.
type RunnerHeartbeatParams struct {
	ID string
}

// RunnerHeartbeatResult is what a heartbeat found.
type RunnerHeartbeatResult struct {
	// Alive reports that the runner's row exists and was heartbeated;
	// false means the row is gone (the runner was declared dead) and must
	// be registered again.
	Alive bool
	// Now is the database's clock when the statement ran, the row's new
	// heartbeat when Alive, and set either way. The engine compares it
	// with its own clock to estimate their offset (see ClockRead).
	Now time.Time
}

// RunnerDeleteParams removes one runner's row.
type RunnerDeleteParams struct {
	ID string
}

// RunnerDeleteExpiredParams removes the rows of runners whose last
// heartbeat is more than Timeout old by the database's clock.
type RunnerDeleteExpiredParams struct {
	// Timeout is how long a runner may go without a heartbeat. It must be
	// positive: a zero Timeout is refused rather than taken to expire
	// every runner.
	Timeout time.Duration
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
	// Margin, when Held, is how long after the renewal's statement ran its
	// transaction may commit and still hold the lease: no other runner
	// can take the lease over before then. On PostgreSQL it is what the
	// renewed term had left (a takeover does not wait for a renewal that
	// has not committed); on SQLite the whole TTL (a takeover waits for
	// the write lock the renewal holds).
	Margin time.Duration
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

// LeaseGetParams names the lease LeaseGet reads.
type LeaseGetParams struct {
	Name string
}

// LeaseGetResult is a lease's current term.
type LeaseGetResult struct {
	Holder    string
	Term      int64
	ExpiresAt time.Time
}

// TaskListOrphanedParams finds Running tasks whose runner is gone: its row
// is missing or its last heartbeat is more than Timeout old by the
// database's clock.
type TaskListOrphanedParams struct {
	// Timeout is how long a runner may go without a heartbeat. It must be
	// positive unless RunnerID is set: a zero Timeout is refused rather
	// than taken to orphan every running task.
	Timeout time.Duration
	// RunnerID, when set, lists instead the Running tasks claimed under that
	// runner id whatever its row says (Timeout is ignored): a runner that
	// starts finds the claims an earlier process with the same id left
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
