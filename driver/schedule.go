package driver

import (
	"time"

	"github.com/google/uuid"
)

// Schedule is a stored schedule: a workflow started on a cron
// specification, one run per tick. Its definition (everything but the
// state below it) comes from the runners that declare the schedule; its
// state is the database's alone, so that any runner declaring it can fire
// its next tick, and each tick fires once.
type Schedule struct {
	// ScheduleDef is the definition as stored, with NextFireAt the next
	// tick to fire, in UTC.
	ScheduleDef
	Paused bool
	// LastTickAt is the newest tick fired, LastRunID the run it started,
	// LastFiredAt when; nil until the first tick. Fired counts the runs
	// the schedule has started, Skipped the ticks it skipped (see
	// ScheduleTick).
	LastTickAt  *time.Time
	LastRunID   *uuid.UUID
	LastFiredAt *time.Time
	Fired       int64
	Skipped     int64
	CreatedAt   time.Time
	// UpdatedAt is when the definition last changed, or the schedule was
	// paused or resumed.
	UpdatedAt time.Time
}

// ScheduleDef is a schedule's definition as a runner declares it, with the
// tick it would fire first (after Now) should its row be new or its timing
// have changed.
type ScheduleDef struct {
	Name         string
	WorkflowName string
	// Cron is the specification as written; Timezone the IANA name of the
	// zone it is read in.
	Cron     string
	Timezone string
	// Input is each run's input context (a JSON object).
	Input []byte
	// CatchUp is the policy for ticks found late: "latest" or "all".
	CatchUp string
	// MaxLateness drops ticks found more than this after their time; zero
	// means no limit.
	MaxLateness time.Duration
	// Overlap is the policy for a tick that falls while the schedule's
	// last run is unfinished: "allow" or "skip".
	Overlap    string
	NextFireAt time.Time
}

// ScheduleSyncParams stores the definitions of schedules a runner
// declares. A schedule without a row gets one, unpaused, next firing at
// its NextFireAt. An existing row takes the definition; its NextFireAt
// only when Cron or Timezone changed (the ticks are others now) — a row
// whose timing is unchanged keeps its state, so that a runner restarting
// after downtime finds the ticks it missed. Paused is never changed.
type ScheduleSyncParams struct {
	Schedules []ScheduleDef
	Now       time.Time
}

// ScheduleListParams selects schedules: those named, or every one when
// Names is empty. They are returned by name.
type ScheduleListParams struct {
	Names []string
	// Lock, in a write transaction, locks the rows read until it ends
	// (PostgreSQL FOR UPDATE: a concurrent store of the schedules waits,
	// and ScheduleDue skips them), for a write computed from what was
	// read. SQLite's writer holds the whole database already.
	Lock bool
}

// ScheduleDueParams selects, in a write transaction, the schedules among
// Names that are not paused and whose NextFireAt is at or before Now, and
// locks them until the transaction ends. On PostgreSQL rows another
// transaction has locked are skipped (FOR UPDATE SKIP LOCKED): that
// transaction is firing them. SQLite's writer serialises the firing.
type ScheduleDueParams struct {
	Names []string
	Now   time.Time
}

// ScheduleTick is one tick fired: its time and the run it started; or
// one skipped: no run, and Skipped says why.
type ScheduleTick struct {
	At         time.Time
	PipelineID *uuid.UUID
	Skipped    string
}

// ScheduleFireParams records, in the transaction that created their runs,
// the ticks of a schedule that fired or were skipped (none when every due
// tick was dropped as too late), and moves its NextFireAt on. The newest
// tick that started a run becomes the schedule's last; Fired and Skipped
// count them. It fails with
// ErrConflict when a tick is recorded already or the schedule's
// NextFireAt is no longer Expect: another transaction fired them.
type ScheduleFireParams struct {
	Name       string
	Expect     time.Time
	Ticks      []ScheduleTick
	NextFireAt time.Time
	Now        time.Time
}

// SchedulePauseParams pauses or resumes a schedule. Resuming sets
// NextFireAt: the ticks that passed while it was paused are not fired.
type SchedulePauseParams struct {
	Name       string
	Paused     bool
	NextFireAt time.Time
	Now        time.Time
}

// ScheduleTickListParams lists the ticks a schedule fired, newest first.
type ScheduleTickListParams struct {
	Name  string
	Limit int
}

// ScheduleTickRow is a recorded tick: PipelineID is nil, and Skipped
// non-empty, for a tick skipped.
type ScheduleTickRow struct {
	ScheduleName string
	At           time.Time
	PipelineID   *uuid.UUID
	Skipped      string
	FiredAt      time.Time
}
