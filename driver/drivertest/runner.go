package drivertest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// upsertRunner registers runner id with a heartbeat at at, in its own
// transaction.
func (b *bundle) upsertRunner(t *testing.T, id string, at time.Time) *driver.RunnerUpsertParams {
	t.Helper()
	p := &driver.RunnerUpsertParams{ID: id, Name: "name-" + id, Host: "host-1", PID: 4242, Workflows: []string{"wf"}, Now: at}
	b.inTx(t, func(tx driver.Tx) { require.NoError(t, tx.RunnerUpsert(b.ctx, p)) })
	return p
}

func (b *bundle) runners(t *testing.T) []*driver.RunnerRow {
	t.Helper()
	rows, err := b.drv.Reader().RunnerList(b.ctx)
	require.NoError(t, err)
	return rows
}

func runnerIDs(rows []*driver.RunnerRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}

func testRunnerRegistry(t *testing.T, s *suite) {
	// An upsert inserts, then refreshes everything but the start time.
	t.Run("UpsertInsertsThenRefreshes", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		require.Empty(t, b.runners(t))
		first := &driver.RunnerUpsertParams{ID: "r-1", Name: "billing ✓", Host: "host-a", PID: 17,
			Workflows: []string{"etl", "report"}, Now: roundTripTime}
		b.inTx(t, func(tx driver.Tx) { require.NoError(t, tx.RunnerUpsert(b.ctx, first)) })
		rows := b.runners(t)
		require.Len(t, rows, 1)
		got := rows[0]
		require.Equal(t, "r-1", got.ID)
		require.Equal(t, "billing ✓", got.Name)
		require.Equal(t, "host-a", got.Host)
		require.Equal(t, 17, got.PID)
		require.Equal(t, []string{"etl", "report"}, got.Workflows, "workflows round-trip in order")
		requireTime(t, truncated(roundTripTime), got.StartedAt)
		requireTime(t, truncated(roundTripTime), got.HeartbeatAt)

		later := roundTripTime.Add(time.Minute)
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.RunnerUpsert(b.ctx, &driver.RunnerUpsertParams{ID: "r-1", Name: "renamed", Host: "host-b",
				PID: 18, Workflows: []string{"other"}, Now: later}))
		})
		rows = b.runners(t)
		require.Len(t, rows, 1, "an upsert of a known id adds no row")
		got = rows[0]
		require.Equal(t, "renamed", got.Name)
		require.Equal(t, "host-b", got.Host)
		require.Equal(t, 18, got.PID)
		require.Equal(t, []string{"other"}, got.Workflows)
		requireTime(t, truncated(roundTripTime), got.StartedAt, "the start time is kept")
		requireTime(t, truncated(later), got.HeartbeatAt, "an upsert is a heartbeat")

		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.RunnerUpsert(b.ctx, &driver.RunnerUpsertParams{ID: "r-1", Name: "renamed", Host: "host-b",
				Workflows: []string{}, Now: later}))
		})
		require.Empty(t, b.runners(t)[0].Workflows, "no workflows round-trips as none")
	})

	t.Run("Heartbeat", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.upsertRunner(t, "r-1", b.now)
		b.upsertRunner(t, "r-2", b.now)
		beat := func(id string, at time.Time) bool {
			t.Helper()
			var ok bool
			b.inTx(t, func(tx driver.Tx) {
				var err error
				ok, err = tx.RunnerHeartbeat(b.ctx, &driver.RunnerHeartbeatParams{ID: id, Now: at})
				require.NoError(t, err)
			})
			return ok
		}
		require.True(t, beat("r-1", b.at(time.Minute)))
		rows := b.runners(t)
		requireTime(t, b.at(time.Minute), rows[0].HeartbeatAt)
		requireTime(t, b.now, rows[0].StartedAt)
		requireTime(t, b.now, rows[1].HeartbeatAt, "only the runner's own row is touched")

		require.False(t, beat("r-gone", b.at(time.Minute)), "a missing row must be registered again")
		require.Equal(t, []string{"r-1", "r-2"}, runnerIDs(b.runners(t)), "a heartbeat never creates a row")
	})

	t.Run("Delete", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.upsertRunner(t, "r-1", b.now)
		b.upsertRunner(t, "r-2", b.now)
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.RunnerDelete(b.ctx, &driver.RunnerDeleteParams{ID: "r-1"}))
			require.NoError(t, tx.RunnerDelete(b.ctx, &driver.RunnerDeleteParams{ID: "r-unknown"}), "deleting a missing row is no error")
		})
		require.Equal(t, []string{"r-2"}, runnerIDs(b.runners(t)))
		b.inTx(t, func(tx driver.Tx) {
			ok, err := tx.RunnerHeartbeat(b.ctx, &driver.RunnerHeartbeatParams{ID: "r-1", Now: b.now})
			require.NoError(t, err)
			require.False(t, ok)
		})
	})

	// Only rows whose heartbeat is strictly older than the cutoff go.
	t.Run("DeleteExpired", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.upsertRunner(t, "old-1", b.at(-3*time.Minute))
		b.upsertRunner(t, "old-2", b.at(-2*time.Minute))
		b.upsertRunner(t, "at-cutoff", b.at(-time.Minute))
		b.upsertRunner(t, "fresh", b.now)
		expire := func(before time.Time) []string {
			t.Helper()
			var ids []string
			b.inTx(t, func(tx driver.Tx) {
				var err error
				ids, err = tx.RunnerDeleteExpired(b.ctx, &driver.RunnerDeleteExpiredParams{HeartbeatBefore: before})
				require.NoError(t, err)
			})
			return ids
		}
		require.ElementsMatch(t, []string{"old-1", "old-2"}, expire(b.at(-time.Minute)))
		require.Equal(t, []string{"at-cutoff", "fresh"}, runnerIDs(b.runners(t)))
		require.Empty(t, expire(b.at(-time.Minute)), "nothing left to expire")
	})

	// Oldest first by start time, then by id; times come back in UTC.
	t.Run("ListOrder", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.upsertRunner(t, "c", b.at(time.Minute))
		b.upsertRunner(t, "b", b.now)
		b.upsertRunner(t, "a", b.at(time.Minute))
		b.upsertRunner(t, "d", b.at(-time.Minute).In(time.FixedZone("UTC-7", -7*3600)))
		// A refresh does not move a runner in the order.
		b.upsertRunner(t, "d", b.at(time.Hour))
		rows := b.runners(t)
		require.Equal(t, []string{"d", "b", "a", "c"}, runnerIDs(rows))
		requireTime(t, b.at(-time.Minute), rows[0].StartedAt)
		requireTime(t, b.at(time.Hour), rows[0].HeartbeatAt)
	})
}

func testLease(t *testing.T, s *suite) {
	acquire := func(t *testing.T, b *bundle, name, holder string, now, until time.Time) bool {
		t.Helper()
		var ok bool
		b.inTx(t, func(tx driver.Tx) {
			var err error
			ok, err = tx.LeaseAcquire(b.ctx, &driver.LeaseAcquireParams{Name: name, Holder: holder, Now: now, ExpiresAt: until})
			require.NoError(t, err)
		})
		return ok
	}
	release := func(t *testing.T, b *bundle, name, holder string) {
		t.Helper()
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.LeaseRelease(b.ctx, &driver.LeaseReleaseParams{Name: name, Holder: holder}))
		})
	}

	t.Run("AcquireRenewExpire", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		const lease = "cloacina_leader"
		require.True(t, acquire(t, b, lease, "a", b.now, b.at(time.Minute)), "a free lease is taken")
		require.False(t, acquire(t, b, lease, "b", b.at(30*time.Second), b.at(2*time.Minute)), "held and unexpired")
		require.False(t, acquire(t, b, lease, "b", b.at(time.Minute), b.at(2*time.Minute)), "held through its expiry instant")
		require.True(t, acquire(t, b, "other", "b", b.now, b.at(time.Minute)), "leases of other names are independent")

		// The holder renews: the expiry moves, so b still cannot take it
		// after the first expiry.
		require.True(t, acquire(t, b, lease, "a", b.at(50*time.Second), b.at(3*time.Minute)))
		require.False(t, acquire(t, b, lease, "b", b.at(2*time.Minute), b.at(4*time.Minute)), "renewal extends the expiry")

		// Expired: another holder takes over, and the old one has lost it.
		require.True(t, acquire(t, b, lease, "b", b.at(3*time.Minute+time.Microsecond), b.at(5*time.Minute)))
		require.False(t, acquire(t, b, lease, "a", b.at(4*time.Minute), b.at(6*time.Minute)), "the old holder cannot renew")
	})

	t.Run("ReleaseOnlyByHolder", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		require.True(t, acquire(t, b, "l", "a", b.now, b.at(time.Hour)))
		release(t, b, "l", "b")
		require.False(t, acquire(t, b, "l", "b", b.now, b.at(time.Hour)), "a release by another holder changes nothing")
		release(t, b, "l", "a")
		require.True(t, acquire(t, b, "l", "b", b.now, b.at(time.Hour)), "released before expiry: free at once")
		release(t, b, "unknown", "a") // no error
	})

	// Two transactions acquiring at once, whether the lease is free or
	// expired: exactly one wins, and the row names it.
	t.Run("ConcurrentAcquirers", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		drivers := []driver.Driver{b.drv, s.opts.OpenSibling(t, b.drv)}
		for round := range 6 {
			name := "free"
			now := b.at(time.Duration(round) * time.Hour)
			if round%2 == 1 {
				name = "expired"
				require.True(t, acquire(t, b, name, "old", now.Add(-2*time.Minute), now.Add(-time.Minute)))
			}
			var (
				wg    sync.WaitGroup
				start = make(chan struct{})
				won   = make([]bool, len(drivers))
				errs  = make([]error, len(drivers))
			)
			for i, drv := range drivers {
				holder := fmt.Sprintf("h%d-%d", round, i)
				wg.Go(func() {
					<-start
					tx, err := drv.Begin(b.ctx)
					if err != nil {
						errs[i] = err
						return
					}
					defer tx.Rollback(b.ctx)
					won[i], errs[i] = tx.LeaseAcquire(b.ctx, &driver.LeaseAcquireParams{Name: name, Holder: holder, Now: now, ExpiresAt: now.Add(time.Minute)})
					if errs[i] == nil {
						errs[i] = tx.Commit(b.ctx)
					}
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				require.NoError(t, err, "round %d acquirer %d", round, i)
			}
			require.NotEqual(t, won[0], won[1], "round %d: exactly one acquirer wins, got %v", round, won)
			winner, loser := 0, 1
			if won[1] {
				winner, loser = 1, 0
			}
			require.True(t, acquire(t, b, name, fmt.Sprintf("h%d-%d", round, winner), now, now.Add(time.Minute)), "the winner holds it")
			require.False(t, acquire(t, b, name, fmt.Sprintf("h%d-%d", round, loser), now, now.Add(time.Minute)), "the loser does not")
			// Let the next round of "expired" start from an expired lease.
			release(t, b, name, fmt.Sprintf("h%d-%d", round, winner))
		}
	})
}
