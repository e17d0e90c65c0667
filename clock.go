package cloacina

import (
	"context"
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
// keep it accurate without being adopted. A local clock stepped by NTP
// (or a database failover to a server whose clock differs) is corrected
// at the next sample. Samples whose round trip exceeds maxClockRoundTrip
// are dropped.
type dbClock struct {
	// local is the runner's own clock; tests skew it.
	local func() time.Time
	// offset is what is added to local, in nanoseconds.
	offset atomic.Int64
	// sampledAt is when the last sample (usable or not) was taken, as
	// nanoseconds since clockEpoch plus one; zero means never.
	sampledAt atomic.Int64
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
	c.observe(sent, time.Since(start), db)
	return nil
}

// observe learns from a reading db of the database's clock by a statement
// sent at sent (local clock) that took rtt (monotonic clock), and reports
// whether it changed the offset.
func (c *dbClock) observe(sent time.Time, rtt time.Duration, db time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sampledAt.Store(int64(time.Since(clockEpoch)) + 1)
	if rtt < 0 || rtt > maxClockRoundTrip || db.IsZero() {
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
// or none was taken.
func (c *dbClock) stale() bool {
	at := c.sampledAt.Load()
	return at == 0 || time.Since(clockEpoch)-time.Duration(at-1) > clockSampleEvery
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
// claims them.
func (r *Runner) syncClock(ctx context.Context, ex driver.Executor) {
	if r.services() != nil {
		return
	}
	if err := r.clock.sync(ctx, ex); err != nil && ctx.Err() == nil {
		r.logger.Warn("read the database's clock; recording times by this runner's clock meanwhile", "error", err)
	}
}
