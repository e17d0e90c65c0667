package cloacina

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloacina-go/cloacina/driver"
)

const (
	// maxClockRoundTrip bounds the round trip of a usable clock sample. A
	// sample's error is at most half its round trip, so this keeps the
	// error of an adopted offset under half a second — small next to the
	// skews worth correcting (seconds to hours) and to the poll interval
	// that already makes claims of due work coarse — while staying well
	// above the round trips of a busy machine, so that samples are taken.
	maxClockRoundTrip = time.Second
	// clockResolution is the coarsest precision a backend stores times at
	// (microseconds on both), which widens every sample's uncertainty.
	clockResolution = time.Microsecond
	// clockSampleEvery is how often a runner that writes but is not
	// started (whose heartbeats would keep its offset fresh) samples the
	// database's clock again.
	clockSampleEvery = time.Minute
	// clockStepTolerance is how far the runner's own clock may move
	// against the monotonic clock since the last usable sample before it
	// is taken to have been stepped (NTP stepping it, the machine resumed
	// from a suspend), and the offset to be read again before the next
	// write. NTP slews smaller errors; the monotonic and the wall clock
	// drift apart by far less than this in the minute between samples.
	clockStepTolerance = 100 * time.Millisecond
)

// clockEpoch anchors dbClock.sampledAt on the monotonic clock.
var clockEpoch = time.Now()

// dbClock is the clock a runner records times by (events' created_at,
// due times in the outbox, the time a claim compares them with, start and
// end times): its own clock corrected by an estimate of its offset from
// the database's clock, so that runners on machines whose clocks disagree
// still record times that agree.
//
// The offset is estimated from statements the runner makes anyway — its
// registration and each heartbeat return the database's clock — and,
// while it is not started, from a ClockRead before a write at most every
// clockSampleEvery. The database read its clock somewhere within the
// statement's round trip, so a sample puts the offset at db − midpoint
// within ±(round trip/2 + resolution). A new sample is adopted only when
// the current offset lies outside that interval, that is, when the
// sample proves it wrong: jitter between samples that agree never makes
// recorded times step back and forth, and an offset consistent with a
// sample of uncertainty u is within 2u of the truth, so tight samples
// keep it accurate without being adopted. A database failover to a
// server whose clock differs is corrected at the next sample. A local
// clock stepped by NTP is noticed, against the monotonic clock, before
// the next write, which samples first (see stepped): corrected only at
// the next heartbeat, a step ahead would make every task the runner made
// ready meanwhile wait, for every runner, as long as the step. Samples
// whose round trip exceeds maxClockRoundTrip are dropped.
type dbClock struct {
	// local is the runner's own clock; tests skew it.
	local func() time.Time
	// offset is what is added to local, in nanoseconds.
	offset atomic.Int64
	// sampledAt is when the last sample (usable or not) was taken, as
	// nanoseconds since clockEpoch plus one; zero means never.
	sampledAt atomic.Int64
	// ref is local minus the monotonic clock (since clockEpoch), in
	// nanoseconds, when the last usable sample was sent; refSet says
	// whether one was. lastUsable says whether the last sample taken was
	// usable.
	ref        atomic.Int64
	refSet     atomic.Bool
	lastUsable atomic.Bool
	// dbRef is the database's clock minus the monotonic clock (since
	// clockEpoch) at the midpoint of the last usable sample, and dbRefErr
	// that sample's uncertainty, in nanoseconds; dbRefSet says whether
	// one was taken. dbJumped is set by a usable sample that finds the
	// database's clock moved ahead of the monotonic one since, by more than
	// clockStepTolerance beyond the two samples' uncertainty: the
	// database's clock was stepped (or this machine suspended), and every
	// heartbeat stamped before looks older than it is (see jumped).
	dbRef    atomic.Int64
	dbRefErr atomic.Int64
	dbRefSet atomic.Bool
	dbJumped atomic.Bool
	// jumps counts the samples that set dbJumped, never cleared: a sweep
	// compares it before and after its listing (see Runner.sweep).
	jumps atomic.Int64
	// syncMu lets one caller at a time take a sample on demand (sync).
	syncMu sync.Mutex
	// mu orders the adoption of samples.
	mu sync.Mutex
}

func newDBClock() *dbClock {
	return &dbClock{local: func() time.Time { return time.Now().UTC() }}
}

// now reads the corrected clock.
func (c *dbClock) now() time.Time {
	return c.local().Add(time.Duration(c.offset.Load())).UTC()
}

// sample runs read, a statement that returns the database's clock, and
// learns from the reading; read's error is returned as it is.
func (c *dbClock) sample(read func() (time.Time, error)) error {
	sent, start := c.local(), time.Now()
	db, err := read()
	if err != nil {
		return err
	}
	rtt := time.Since(start)
	c.observe(sent, rtt, db)
	usable := usableSample(rtt, db)
	if usable {
		c.ref.Store(sent.UnixNano() - int64(start.Sub(clockEpoch)))
		c.refSet.Store(true)
		dbRef, dbRefErr := db.UnixNano()-int64(start.Sub(clockEpoch)+rtt/2), int64(rtt/2+clockResolution)
		if c.dbRefSet.Load() && dbRef-c.dbRef.Load() > c.dbRefErr.Load()+dbRefErr+int64(clockStepTolerance) {
			c.dbJumped.Store(true)
			c.jumps.Add(1)
		}
		c.dbRef.Store(dbRef)
		c.dbRefErr.Store(dbRefErr)
		c.dbRefSet.Store(true)
	}
	c.lastUsable.Store(usable)
	return nil
}

// jumped reports whether a sample found the database's clock stepped
// ahead since the one before (see dbJumped), and clears the report when
// clear is set.
func (c *dbClock) jumped(clear bool) bool {
	if clear {
		return c.dbJumped.Swap(false)
	}
	return c.dbJumped.Load()
}

// usableSample reports whether a reading db taken in a round trip rtt
// tells the offset closely enough to be used.
func usableSample(rtt time.Duration, db time.Time) bool {
	return rtt >= 0 && rtt <= maxClockRoundTrip && !db.IsZero()
}

// observe learns from a reading db of the database's clock by a statement
// sent at sent (local clock) that took rtt (monotonic clock), and reports
// whether it changed the offset.
func (c *dbClock) observe(sent time.Time, rtt time.Duration, db time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sampledAt.Store(int64(time.Since(clockEpoch)) + 1)
	if !usableSample(rtt, db) {
		return false
	}
	offset := db.Sub(sent.Add(rtt / 2))
	uncertainty := rtt/2 + clockResolution
	if diff := offset - time.Duration(c.offset.Load()); diff >= -uncertainty && diff <= uncertainty {
		return false
	}
	c.offset.Store(int64(offset))
	return true
}

// stale reports whether the last sample is older than clockSampleEvery,
// or none was taken, or the local clock was stepped since the last usable
// one (once a second at most while samples are not usable).
func (c *dbClock) stale() bool {
	at := c.sampledAt.Load()
	if at == 0 {
		return true
	}
	age := time.Since(clockEpoch) - time.Duration(at-1)
	return age > clockSampleEvery || (c.stepped() && (c.lastUsable.Load() || age > maxClockRoundTrip))
}

// stepped reports whether the local clock moved against the monotonic
// clock by more than clockStepTolerance since the last usable sample:
// the offset learned then no longer holds.
func (c *dbClock) stepped() bool {
	if !c.refSet.Load() {
		return false
	}
	moved := time.Duration(c.local().UnixNano() - int64(time.Since(clockEpoch)) - c.ref.Load())
	return moved > clockStepTolerance || moved < -clockStepTolerance
}

// sync samples the database's clock through ex if the last sample is
// stale; concurrent callers wait for one sample. It is best effort: a
// failed read leaves the offset as it was (the write that follows meets
// the same database, and reports its trouble), and is tried again by the
// next write.
func (c *dbClock) sync(ctx context.Context, ex driver.Executor) error {
	if !c.stale() {
		return nil
	}
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	if !c.stale() {
		return nil
	}
	return c.sample(func() (time.Time, error) { return ex.ClockRead(ctx) })
}

// syncClock keeps the offset fresh for a runner that writes while not
// started: a started runner's heartbeats do it, at no extra statement.
// Before the first write of a runner that never starts (a process that
// only enqueues runs), this costs one ClockRead, and one a minute after
// that while it keeps writing: a local clock an hour ahead would
// otherwise make the tasks it enqueues wait an hour before any runner
// claims them. A runner, started or not, whose local clock was stepped
// since its last sample reads the database's clock again before it
// writes, for the same reason.
func (r *Runner) syncClock(ctx context.Context, ex driver.Executor) {
	if r.services() != nil && !r.clock.stepped() {
		return
	}
	if err := r.clock.sync(ctx, ex); err != nil && ctx.Err() == nil {
		r.logger.Warn("read the database's clock; recording times by this runner's clock meanwhile", "error", err)
	}
}

// Now returns the database's current time as this runner estimates it:
// its own clock corrected by the offset it measured against the
// database's clock (see Runner), reading that clock first when the
// estimate is missing or stale, as it does before a write. Cutoffs for
// DeleteEventsBefore and DeleteRunsBefore, and ages of what the runner
// records, are best taken from it: a host whose clock is off by an hour
// would otherwise delete, or report as late, an hour's worth too much.
// On a closed runner it returns ErrRunnerClosed; when the database's
// clock cannot be read, the runner's own clock (corrected by its last
// measurement, if any) and the error.
func (r *Runner) Now(ctx context.Context) (time.Time, error) {
	db, err := r.reader(ctx)
	if err != nil {
		return time.Time{}, err
	}
	if r.services() == nil || r.clock.stepped() {
		if err := r.clock.sync(ctx, db); err != nil {
			return r.now(), fmt.Errorf("cloacina: read the database's clock: %w", err)
		}
	}
	return r.now(), nil
}
