package drivertest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// upsertRunner registers runner id in its own transaction and returns its
// row as stored.
func (b *bundle) upsertRunner(t *testing.T, id string) *driver.RunnerRow {
	t.Helper()
	p := &driver.RunnerUpsertParams{ID: id, Name: "name-" + id, Host: "host-1", PID: 4242, Workflows: []string{"wf"}}
	var res *driver.RunnerUpsertResult
	b.inTx(t, func(tx driver.Tx) {
		var err error
		res, err = tx.RunnerUpsert(b.ctx, p)
		require.NoError(t, err)
	})
	row := b.runner(t, id)
	requireTime(t, row.HeartbeatAt, res.HeartbeatAt, "an upsert returns the heartbeat it wrote")
	return row
}

// heartbeat heartbeats runner id in its own transaction.
func (b *bundle) heartbeat(t *testing.T, id string) *driver.RunnerHeartbeatResult {
	t.Helper()
	var res *driver.RunnerHeartbeatResult
	b.inTx(t, func(tx driver.Tx) {
		var err error
		res, err = tx.RunnerHeartbeat(b.ctx, &driver.RunnerHeartbeatParams{ID: id})
		require.NoError(t, err)
	})
	return res
}

// clock reads the database's clock.
func (b *bundle) clock(t *testing.T) time.Time {
	t.Helper()
	now, err := b.drv.Reader().ClockRead(b.ctx)
	require.NoError(t, err)
	require.Equal(t, time.UTC, now.Location(), "times are returned in UTC")
	return now
}

// requireBetween checks that at is within [from, to]: a reading of the
// database's clock taken between two others.
func requireBetween(t *testing.T, from, at, to time.Time, msg string) {
	t.Helper()
	require.Falsef(t, at.Before(from) || at.After(to), "%s: %s is not within [%s, %s]", msg,
		at.Format(time.RFC3339Nano), from.Format(time.RFC3339Nano), to.Format(time.RFC3339Nano))
}

func (b *bundle) runners(t *testing.T) []*driver.RunnerRow {
	t.Helper()
	rows, err := b.drv.Reader().RunnerList(b.ctx)
	require.NoError(t, err)
	return rows
}

// runner returns the row of runner id.
func (b *bundle) runner(t *testing.T, id string) *driver.RunnerRow {
	t.Helper()
	for _, r := range b.runners(t) {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("runner %s has no row", id)
	return nil
}

func (b *bundle) deleteRunners(t *testing.T, ids ...string) {
	t.Helper()
	b.inTx(t, func(tx driver.Tx) {
		for _, id := range ids {
			require.NoError(t, tx.RunnerDelete(b.ctx, &driver.RunnerDeleteParams{ID: id}))
		}
	})
}

func runnerIDs(rows []*driver.RunnerRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}

// heartbeatTimeout is the Timeout the liveness tests pass: a heartbeat
// older than this by the database's clock has expired.
const heartbeatTimeout = time.Second

// dbNow reads the database's clock, the one heartbeats are stamped with.
func (b *bundle) dbNow(t *testing.T) time.Time {
	t.Helper()
	return b.clock(t)
}

// awaitAge polls until the database's clock is more than age past at.
// Heartbeats are stamped by that clock, and only time passing on it ages
// them: no test can move it.
func (b *bundle) awaitAge(t *testing.T, at time.Time, age time.Duration) {
	t.Helper()
	for !b.dbNow(t).After(at.Add(age)) {
		select {
		case <-b.ctx.Done():
			t.Fatalf("the database's clock never passed %s", at.Add(age).Format(time.RFC3339Nano))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// fresh reports whether a heartbeat at at is still unexpired by the
// database's clock now, so that a check made before this call had to
// find its runner alive. When it is not, the machine took longer than
// heartbeatTimeout between the heartbeat and the check, and the check
// proves nothing.
func (b *bundle) fresh(t *testing.T, at time.Time) bool {
	t.Helper()
	return !b.dbNow(t).After(at.Add(heartbeatTimeout))
}

// inTime runs a liveness check until it reports that the machine ran it
// in time (see bundle.fresh), at most five times.
func inTime(t *testing.T, check func(attempt int) bool) {
	t.Helper()
	for attempt := 1; !check(attempt); attempt++ {
		require.Less(t, attempt, 5, "this machine never ran the check within %s of a heartbeat", heartbeatTimeout)
	}
}

func (b *bundle) expireRunners(t *testing.T, timeout time.Duration) []string {
	t.Helper()
	var ids []string
	b.inTx(t, func(tx driver.Tx) {
		var err error
		ids, err = tx.RunnerDeleteExpired(b.ctx, &driver.RunnerDeleteExpiredParams{Timeout: timeout})
		require.NoError(t, err)
	})
	return ids
}

func testRunnerRegistry(t *testing.T, s *suite) {
	// An upsert inserts, then refreshes everything but the start time.
	// Both times are the database's clock.
	t.Run("UpsertInsertsThenRefreshes", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		require.Empty(t, b.runners(t))
		first := &driver.RunnerUpsertParams{ID: "r-1", Name: "billing ✓", Host: "host-a", PID: 17,
			Workflows: []string{"etl", "report"}}
		b.inTx(t, func(tx driver.Tx) {
			_, err := tx.RunnerUpsert(b.ctx, first)
			require.NoError(t, err)
		})
		rows := b.runners(t)
		require.Len(t, rows, 1)
		got := rows[0]
		require.Equal(t, "r-1", got.ID)
		require.Equal(t, "billing ✓", got.Name)
		require.Equal(t, "host-a", got.Host)
		require.Equal(t, 17, got.PID)
		require.Equal(t, []string{"etl", "report"}, got.Workflows, "workflows round-trip in order")
		requireTime(t, got.StartedAt, got.HeartbeatAt, "a new row starts with a heartbeat")
		// The test's clock and the database's agree within an hour on any
		// machine that runs the suite: a zero time, or local time stored
		// as UTC, is further off.
		require.WithinDuration(t, time.Now(), got.StartedAt, time.Hour, "stamped by the database's clock")
		started := got.StartedAt

		b.awaitAge(t, started, 0)
		b.inTx(t, func(tx driver.Tx) {
			_, err := tx.RunnerUpsert(b.ctx, &driver.RunnerUpsertParams{ID: "r-1", Name: "renamed", Host: "host-b",
				PID: 18, Workflows: []string{"other"}})
			require.NoError(t, err)
		})
		rows = b.runners(t)
		require.Len(t, rows, 1, "an upsert of a known id adds no row")
		got = rows[0]
		require.Equal(t, "renamed", got.Name)
		require.Equal(t, "host-b", got.Host)
		require.Equal(t, 18, got.PID)
		require.Equal(t, []string{"other"}, got.Workflows)
		requireTime(t, started, got.StartedAt, "the start time is kept")
		require.True(t, got.HeartbeatAt.After(started), "an upsert is a heartbeat")

		b.inTx(t, func(tx driver.Tx) {
			_, err := tx.RunnerUpsert(b.ctx, &driver.RunnerUpsertParams{ID: "r-1", Name: "renamed", Host: "host-b",
				Workflows: []string{}})
			require.NoError(t, err)
		})
		require.Empty(t, b.runners(t)[0].Workflows, "no workflows round-trips as none")
	})

	// A heartbeat stamps the runner's row with the database's clock, and
	// keeps it from expiring; it touches no other row.
	t.Run("Heartbeat", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		beat := func(id string) bool {
			t.Helper()
			res := b.heartbeat(t, id)
			if res.Alive {
				requireTime(t, b.runner(t, id).HeartbeatAt, res.Now, "a heartbeat returns the heartbeat it wrote")
			}
			return res.Alive
		}
		inTime(t, func(attempt int) bool {
			beating, silent := fmt.Sprintf("beating-%d", attempt), fmt.Sprintf("silent-%d", attempt)
			registered := b.upsertRunner(t, beating)
			quiet := b.upsertRunner(t, silent)
			b.awaitAge(t, quiet.HeartbeatAt, heartbeatTimeout)
			require.True(t, beat(beating))
			beaten := b.runner(t, beating)
			require.True(t, beaten.HeartbeatAt.After(quiet.HeartbeatAt.Add(heartbeatTimeout)), "the heartbeat is the database's clock now")
			requireTime(t, registered.StartedAt, beaten.StartedAt, "a heartbeat keeps the start time")
			requireTime(t, quiet.HeartbeatAt, b.runner(t, silent).HeartbeatAt, "only the runner's own row is touched")
			expired := b.expireRunners(t, heartbeatTimeout)
			if !b.fresh(t, beaten.HeartbeatAt) {
				b.deleteRunners(t, beating, silent)
				return false
			}
			require.Equal(t, []string{silent}, expired, "the heartbeat kept its runner alive")
			b.deleteRunners(t, beating)
			return true
		})

		require.False(t, beat("r-gone"), "a missing row must be registered again")
		require.Empty(t, b.runners(t), "a heartbeat never creates a row")
	})

	// The times RunnerUpsert and RunnerHeartbeat return, and ClockRead,
	// are readings of one clock, the database's, taken when the statement
	// ran: the engine estimates its offset from that clock with them
	// (the midpoint of the round trip against the reading), so a reading
	// taken before the statement started or after it returned would skew
	// every time the engine records. A heartbeat of a missing row reads
	// the clock all the same.
	t.Run("ClockReadings", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		first := b.clock(t)
		// The test's clock and the database's agree within an hour on any
		// machine that runs the suite: a zero time, or local time read as
		// UTC, is further off.
		require.WithinDuration(t, time.Now(), first, time.Hour, "the database's clock")
		registered := b.upsertRunner(t, "r-1").HeartbeatAt
		second := b.clock(t)
		requireBetween(t, first, registered, second, "an upsert's heartbeat")
		beaten := b.heartbeat(t, "r-1")
		third := b.clock(t)
		require.True(t, beaten.Alive)
		requireBetween(t, second, beaten.Now, third, "a heartbeat's reading")
		gone := b.heartbeat(t, "r-gone")
		fourth := b.clock(t)
		require.False(t, gone.Alive)
		require.Equal(t, time.UTC, gone.Now.Location(), "times are returned in UTC")
		requireBetween(t, third, gone.Now, fourth, "a heartbeat of a missing row still reads the clock")

		// Inside a transaction too (the engine reads the clock in the
		// application's transaction on ExecuteTx): the clock, not the
		// transaction's start time.
		b.inTx(t, func(tx driver.Tx) {
			in1, err := tx.ClockRead(b.ctx)
			require.NoError(t, err)
			b.awaitAge(t, in1, time.Millisecond)
			in2, err := tx.ClockRead(b.ctx)
			require.NoError(t, err)
			require.True(t, in2.After(in1), "a transaction reads the clock as it runs, not as the transaction began")
		})
	})

	t.Run("Delete", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.upsertRunner(t, "r-1")
		b.upsertRunner(t, "r-2")
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.RunnerDelete(b.ctx, &driver.RunnerDeleteParams{ID: "r-1"}))
			require.NoError(t, tx.RunnerDelete(b.ctx, &driver.RunnerDeleteParams{ID: "r-unknown"}), "deleting a missing row is no error")
		})
		require.Equal(t, []string{"r-2"}, runnerIDs(b.runners(t)))
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.RunnerHeartbeat(b.ctx, &driver.RunnerHeartbeatParams{ID: "r-1"})
			require.NoError(t, err)
			require.False(t, res.Alive)
		})
	})

	// Rows whose heartbeat is more than Timeout old by the database's
	// clock go; the others stay.
	t.Run("DeleteExpired", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		inTime(t, func(attempt int) bool {
			old1, old2, young := fmt.Sprintf("old-1-%d", attempt), fmt.Sprintf("old-2-%d", attempt), fmt.Sprintf("fresh-%d", attempt)
			b.upsertRunner(t, old1)
			b.awaitAge(t, b.upsertRunner(t, old2).HeartbeatAt, heartbeatTimeout)
			fresh := b.upsertRunner(t, young)
			require.Empty(t, b.expireRunners(t, time.Hour), "no heartbeat is an hour old")
			expired := b.expireRunners(t, heartbeatTimeout)
			again := b.expireRunners(t, heartbeatTimeout)
			left := runnerIDs(b.runners(t))
			if !b.fresh(t, fresh.HeartbeatAt) {
				b.deleteRunners(t, left...)
				return false
			}
			require.ElementsMatch(t, []string{old1, old2}, expired)
			require.Empty(t, again, "nothing left to expire")
			require.Equal(t, []string{young}, left)
			return true
		})
	})

	// A timeout of zero or less would declare every runner dead: it is
	// refused, with the fix in the message, and nothing is deleted.
	t.Run("DeleteExpiredRefusesNonPositiveTimeout", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.upsertRunner(t, "r-1")
		for _, d := range []time.Duration{0, -time.Second} {
			b.inTx(t, func(tx driver.Tx) {
				_, err := tx.RunnerDeleteExpired(b.ctx, &driver.RunnerDeleteExpiredParams{Timeout: d})
				require.ErrorContains(t, err, "pass a positive Timeout", "timeout %s", d)
			})
		}
		require.Equal(t, []string{"r-1"}, runnerIDs(b.runners(t)))
	})

	// Oldest first by start time (then by id); a refresh does not move a
	// runner in the order. Times come back in UTC.
	t.Run("ListOrder", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		var last time.Time
		for _, id := range []string{"c", "b", "a"} {
			if !last.IsZero() {
				b.awaitAge(t, last, 0) // a start time of its own
			}
			last = b.upsertRunner(t, id).StartedAt
		}
		b.awaitAge(t, last, 0)
		refreshed := b.upsertRunner(t, "c")
		rows := b.runners(t)
		require.Equal(t, []string{"c", "b", "a"}, runnerIDs(rows))
		requireTime(t, refreshed.HeartbeatAt, rows[0].HeartbeatAt)
		require.True(t, rows[0].HeartbeatAt.After(rows[2].StartedAt))
		for _, r := range rows {
			require.Equal(t, time.UTC, r.StartedAt.Location())
			require.Equal(t, time.UTC, r.HeartbeatAt.Location())
		}
	})
}

// leaseOps are the lease calls of one test, each in its own transaction
// (a takeover always is).
type leaseOps struct {
	t *testing.T
	b *bundle
}

func (o leaseOps) renew(name, holder string, ttl time.Duration) *driver.LeaseRenewResult {
	o.t.Helper()
	res := o.renewWithMargin(name, holder, ttl)
	res.Margin = 0 // checked by renewWithMargin; the callers compare the rest
	return res
}

// renewWithMargin is renew with the result's Margin, which it checks is
// zero when the term was not renewed, and never negative.
func (o leaseOps) renewWithMargin(name, holder string, ttl time.Duration) *driver.LeaseRenewResult {
	o.t.Helper()
	var res *driver.LeaseRenewResult
	o.b.inTx(o.t, func(tx driver.Tx) {
		var err error
		res, err = tx.LeaseRenew(o.b.ctx, &driver.LeaseRenewParams{Name: name, Holder: holder, TTL: ttl})
		require.NoError(o.t, err)
		require.NotNil(o.t, res)
	})
	require.GreaterOrEqual(o.t, res.Margin, time.Duration(0))
	if !res.Held {
		require.Zero(o.t, res.Margin, "no renewal, no margin")
	}
	return res
}

func (o leaseOps) take(drv driver.Driver, name, holder string, ttl time.Duration) *driver.LeaseTakeoverResult {
	o.t.Helper()
	res, err := drv.LeaseTakeover(o.b.ctx, &driver.LeaseTakeoverParams{Name: name, Holder: holder, TTL: ttl})
	require.NoError(o.t, err)
	require.NotNil(o.t, res)
	return res
}

func (o leaseOps) release(name, holder string) {
	o.t.Helper()
	o.b.inTx(o.t, func(tx driver.Tx) {
		require.NoError(o.t, tx.LeaseRelease(o.b.ctx, &driver.LeaseReleaseParams{Name: name, Holder: holder}))
	})
}

// requireHeld checks who may act on a lease: holder renews it, and
// nobody else can renew or take it.
// holder reads who holds the lease now, "" when it is vacant.
func (o leaseOps) holder(name string) string {
	o.t.Helper()
	got, err := o.b.drv.Reader().LeaseGet(o.b.ctx, &driver.LeaseGetParams{Name: name})
	require.NoError(o.t, err)
	if got == nil {
		return ""
	}
	require.NotEmpty(o.t, got.Holder)
	require.Positive(o.t, got.Term)
	require.False(o.t, got.ExpiresAt.IsZero())
	return got.Holder
}

func (o leaseOps) requireHeld(name, holder string) {
	o.t.Helper()
	require.Equal(o.t, holder, o.holder(name), "LeaseGet names the holder")
	require.Equal(o.t, &driver.LeaseRenewResult{Held: true}, o.renew(name, holder, time.Hour), "%s renews its term", holder)
	require.Equal(o.t, &driver.LeaseRenewResult{}, o.renew(name, "someone-else", time.Hour), "held by %s: not vacant", holder)
	require.False(o.t, o.take(o.b.drv, name, "someone-else", time.Hour).Taken, "held by %s: no takeover", holder)
}

// awaitVacant polls until the lease is vacant by the database's clock.
// Expiry is real time passing on that clock: no test can move it.
func (o leaseOps) awaitVacant(name string) {
	o.t.Helper()
	for !o.renew(name, "observer", time.Hour).Vacant {
		select {
		case <-o.b.ctx.Done():
			o.t.Fatalf("lease %s never expired", name)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func testLease(t *testing.T, s *suite) {
	t.Run("TakeRenewRelease", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		o := leaseOps{t, b}
		const lease = "cloacina_leader"
		require.Empty(t, o.holder(lease), "a lease never taken has no holder")
		require.Equal(t, &driver.LeaseRenewResult{Vacant: true}, o.renew(lease, "a", time.Hour),
			"a lease never taken is vacant, and renewing it takes nothing")
		require.Equal(t, &driver.LeaseTakeoverResult{Taken: true, Term: 1}, o.take(b.drv, lease, "a", time.Hour))
		o.requireHeld(lease, "a")
		require.Equal(t, &driver.LeaseTakeoverResult{Taken: true, Term: 1}, o.take(b.drv, "other", "b", time.Hour),
			"leases of other names are independent")
		o.requireHeld(lease, "a")

		o.release(lease, "b")
		o.requireHeld(lease, "a") // a release by another holder changes nothing
		o.release(lease, "a")
		require.Empty(t, o.holder(lease), "released: no holder")
		require.Equal(t, &driver.LeaseRenewResult{Vacant: true}, o.renew(lease, "a", time.Hour),
			"released: vacant at once, and its holder must take it anew")
		require.Equal(t, &driver.LeaseTakeoverResult{Taken: true, Term: 2}, o.take(b.drv, lease, "b", time.Hour),
			"terms go on counting after a release")
		o.requireHeld(lease, "b")
		o.release("unknown", "a") // no error

		// A renewal's margin is what the renewed term had left (on
		// PostgreSQL, where a takeover does not wait for the renewal's
		// commit) or its TTL (on SQLite, where it waits): never more than
		// the term had left, measured from before the statement ran.
		require.True(t, o.take(b.drv, "margin", "m", time.Minute).Taken)
		before := time.Now()
		m := o.renewWithMargin("margin", "m", time.Minute).Margin
		require.LessOrEqual(t, m, time.Minute)
		require.Greater(t, m, time.Minute-time.Since(before)-time.Second, "the term had most of its minute left")
		m = o.renewWithMargin("margin", "m", time.Hour).Margin
		require.LessOrEqual(t, m, time.Hour)
		require.Greater(t, m, 59*time.Second)
	})

	// A term lasts TTL by the database's clock from its last renewal.
	// Once it has expired its holder cannot renew it; anyone (that holder
	// too) may take the next term, and the loser's renewals change nothing.
	t.Run("ExpireAndTakeOver", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		o := leaseOps{t, b}
		const lease = "cloacina_leader"
		require.True(t, o.take(b.drv, lease, "a", time.Hour).Taken)
		require.Equal(t, &driver.LeaseRenewResult{Held: true}, o.renew(lease, "a", 0), "a renewal sets the expiry")
		o.awaitVacant(lease)
		require.Empty(t, o.holder(lease), "an expired term has no holder")
		require.Equal(t, &driver.LeaseRenewResult{Vacant: true}, o.renew(lease, "a", time.Hour), "an expired term is not renewed")
		require.Equal(t, &driver.LeaseTakeoverResult{Taken: true, Term: 2}, o.take(b.drv, lease, "b", time.Hour))
		require.Equal(t, &driver.LeaseRenewResult{}, o.renew(lease, "a", time.Hour), "the old holder's renewal fails")
		require.False(t, o.take(b.drv, lease, "a", time.Hour).Taken)
		o.requireHeld(lease, "b")

		require.Equal(t, &driver.LeaseRenewResult{Held: true}, o.renew(lease, "b", 0))
		o.awaitVacant(lease)
		require.Equal(t, &driver.LeaseTakeoverResult{Taken: true, Term: 3}, o.take(b.drv, lease, "b", time.Hour),
			"a holder whose term expired takes a new one")
		o.requireHeld(lease, "b")
	})

	// The holder froze inside a transaction that renewed its term: the
	// transaction holds the term's row and never ends. Once the committed
	// term expires, another holder takes the next one without waiting on
	// that row; when the frozen transaction finally commits, its renewal
	// changes nothing. (SQLite has one writer at a time, so a frozen
	// transaction there stops every writer; the takeover is the same
	// without it.)
	t.Run("TakeOverFromAHolderFrozenInItsTransaction", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		o := leaseOps{t, b}
		const ttl = time.Second
		var lease string
		var frozen driver.Tx
		for attempt := 1; ; attempt++ {
			lease = fmt.Sprintf("lease-%d", attempt)
			require.True(t, o.take(b.drv, lease, "a", ttl).Taken)
			if !s.opts.ConcurrentTx {
				break
			}
			tx, err := b.drv.Begin(b.ctx)
			require.NoError(t, err)
			t.Cleanup(func() { tx.Rollback(context.WithoutCancel(b.ctx)) })
			res, err := tx.LeaseRenew(b.ctx, &driver.LeaseRenewParams{Name: lease, Holder: "a", TTL: time.Hour})
			require.NoError(t, err)
			if res.Held {
				frozen = tx
				break
			}
			// This machine took longer than the term to get here: again.
			require.NoError(t, tx.Rollback(b.ctx))
			require.Less(t, attempt, 5, "the holder never renewed within %s", ttl)
		}

		// Waiting on the frozen transaction's row would run into this deadline.
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		defer cancel()
		o.b = &bundle{drv: b.drv, ctx: ctx, now: b.now}
		o.awaitVacant(lease)
		require.Equal(t, &driver.LeaseTakeoverResult{Taken: true, Term: 2}, o.take(b.drv, lease, "b", time.Hour))
		require.Equal(t, &driver.LeaseRenewResult{}, o.renew(lease, "a", time.Hour))
		o.requireHeld(lease, "b")
		if frozen != nil {
			require.NoError(t, frozen.Commit(ctx))
		}
		require.Equal(t, &driver.LeaseRenewResult{}, o.renew(lease, "a", time.Hour), "the frozen renewal changed nothing")
		o.requireHeld(lease, "b")
	})

	// A transaction holding the holder's term row makes its renewal and
	// its release elsewhere skip the row instead of waiting: not held, not
	// released, left to expire.
	t.Run("LockedTermIsNotWaitedFor", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		o := leaseOps{t, b}
		const lease = "cloacina_leader"
		require.True(t, o.take(b.drv, lease, "a", time.Hour).Taken)
		if s.opts.ConcurrentTx {
			tx, err := b.drv.Begin(b.ctx)
			require.NoError(t, err)
			defer tx.Rollback(context.WithoutCancel(b.ctx))
			res, err := tx.LeaseRenew(b.ctx, &driver.LeaseRenewParams{Name: lease, Holder: "a", TTL: time.Hour})
			require.NoError(t, err)
			require.True(t, res.Held)

			ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
			defer cancel()
			locked := leaseOps{t, &bundle{drv: b.drv, ctx: ctx, now: b.now}}
			require.Equal(t, &driver.LeaseRenewResult{}, locked.renew(lease, "a", time.Hour), "a locked term is not renewed")
			locked.release(lease, "a")
			require.False(t, locked.take(b.drv, lease, "b", time.Hour).Taken, "nor released")
			require.NoError(t, tx.Rollback(ctx))
		}
		o.requireHeld(lease, "a")
	})

	// Takers of one vacant lease at once, whether it was never taken or
	// expired: exactly one gets the term.
	t.Run("ConcurrentTakers", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		o := leaseOps{t, b}
		drivers := []driver.Driver{b.drv, s.opts.OpenSibling(t, b.drv)}
		for round := range 6 {
			name := fmt.Sprintf("free-%d", round)
			term := int64(1)
			if round%2 == 1 {
				name = fmt.Sprintf("expired-%d", round)
				require.True(t, o.take(b.drv, name, "old", 0).Taken)
				o.awaitVacant(name)
				term = 2
			}
			var (
				wg    sync.WaitGroup
				start = make(chan struct{})
				got   = make([]*driver.LeaseTakeoverResult, len(drivers))
				errs  = make([]error, len(drivers))
			)
			for i, drv := range drivers {
				wg.Go(func() {
					<-start
					got[i], errs[i] = drv.LeaseTakeover(b.ctx, &driver.LeaseTakeoverParams{Name: name, Holder: fmt.Sprintf("h%d", i), TTL: time.Hour})
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				require.NoError(t, err, "round %d taker %d", round, i)
			}
			require.NotEqual(t, got[0].Taken, got[1].Taken, "round %d: exactly one taker wins, got %+v %+v", round, got[0], got[1])
			winner := 0
			if got[1].Taken {
				winner = 1
			}
			require.Equal(t, term, got[winner].Term, "round %d", round)
			o.requireHeld(name, fmt.Sprintf("h%d", winner))
			require.Equal(t, &driver.LeaseRenewResult{}, o.renew(name, fmt.Sprintf("h%d", 1-winner), time.Hour), "the loser does not hold it")
		}
	})
}
