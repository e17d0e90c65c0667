package drivertest

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func (b *bundle) scheduleDef(name string) driver.ScheduleDef {
	return driver.ScheduleDef{Name: name, WorkflowName: "wf", Cron: "0 * * * *", Timezone: "UTC",
		Input: []byte(`{"k":1}`), CatchUp: "latest", Overlap: "allow", NextFireAt: b.at(time.Hour)}
}

func (b *bundle) syncSchedules(t *testing.T, now time.Time, defs ...driver.ScheduleDef) {
	t.Helper()
	b.inTx(t, func(tx driver.Tx) {
		require.NoError(t, tx.ScheduleSync(b.ctx, &driver.ScheduleSyncParams{Schedules: defs, Now: now}))
	})
}

func (b *bundle) schedules(t *testing.T, names ...string) []*driver.Schedule {
	t.Helper()
	got, err := b.drv.Reader().ScheduleList(b.ctx, &driver.ScheduleListParams{Names: names})
	require.NoError(t, err)
	return got
}

func (b *bundle) schedule(t *testing.T, name string) *driver.Schedule {
	t.Helper()
	got := b.schedules(t, name)
	require.Len(t, got, 1, "schedule %q", name)
	return got[0]
}

// fire records ticks of name in a transaction of their own, with the
// runs they started, and returns ScheduleFire's error.
func (b *bundle) fire(t *testing.T, name string, expect, next time.Time, ticks ...time.Time) error {
	t.Helper()
	var runs []driver.ScheduleTick
	for _, at := range ticks {
		p := b.insertPipeline(t)
		runs = append(runs, driver.ScheduleTick{At: at, PipelineID: &p.ID})
	}
	tx, err := b.drv.Begin(b.ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.WithoutCancel(b.ctx))
	if err := tx.ScheduleFire(b.ctx, &driver.ScheduleFireParams{Name: name, Expect: expect, Ticks: runs, NextFireAt: next, Now: b.now}); err != nil {
		return err
	}
	return tx.Commit(b.ctx)
}

// Schedules: definitions stored by the runners that declare them, state
// kept across those syncs, due rows locked for one firing transaction,
// and ticks recorded once.
func testSchedules(t *testing.T, s *suite) {
	t.Run("SyncInsertsAndLists", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		require.Empty(t, b.schedules(t))
		a, z := b.scheduleDef("a"), b.scheduleDef("z")
		z.MaxLateness = 90 * time.Second
		z.CatchUp = "all"
		z.Overlap = "skip"
		b.syncSchedules(t, b.now, z, a)
		got := b.schedules(t)
		require.Len(t, got, 2)
		require.Equal(t, "a", got[0].Name, "by name")
		require.Equal(t, &driver.Schedule{ScheduleDef: driver.ScheduleDef{Name: "z", WorkflowName: "wf", Cron: "0 * * * *", Timezone: "UTC",
			Input: []byte(`{"k":1}`), CatchUp: "all", MaxLateness: 90 * time.Second, Overlap: "skip", NextFireAt: b.at(time.Hour)},
			CreatedAt: b.now, UpdatedAt: b.now}, got[1])
		require.Len(t, b.schedules(t, "z", "missing"), 1, "by names")
	})

	t.Run("SyncKeepsStateUnlessTimingChanged", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		def := b.scheduleDef("s")
		b.syncSchedules(t, b.now, def)

		// The same definition again (a runner restarting an hour later,
		// its next tick computed from its own now): the stored tick stays.
		later := def
		later.NextFireAt = b.at(3 * time.Hour)
		b.syncSchedules(t, b.at(2*time.Hour), later)
		got := b.schedule(t, "s")
		requireTime(t, b.at(time.Hour), got.NextFireAt, "unchanged timing keeps the next tick")
		requireTime(t, b.now, got.UpdatedAt, "nothing changed")

		// Another input: stored, tick kept.
		in := later
		in.Input = []byte(`{"k":2}`)
		b.syncSchedules(t, b.at(2*time.Hour), in)
		got = b.schedule(t, "s")
		require.JSONEq(t, `{"k":2}`, string(got.Input))
		requireTime(t, b.at(time.Hour), got.NextFireAt)
		requireTime(t, b.at(2*time.Hour), got.UpdatedAt)

		// So do another overlap policy and another catch-up policy.
		policy := in
		policy.Overlap, policy.CatchUp = "skip", "all"
		b.syncSchedules(t, b.at(2*time.Hour), policy)
		got = b.schedule(t, "s")
		require.Equal(t, "skip", got.Overlap)
		require.Equal(t, "all", got.CatchUp)
		requireTime(t, b.at(time.Hour), got.NextFireAt)

		// Pausing survives a sync; a new cron takes the new next tick.
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.SchedulePause(b.ctx, &driver.SchedulePauseParams{Name: "s", Paused: true, Now: b.at(2 * time.Hour)}))
		})
		cronChanged := in
		cronChanged.Cron = "*/5 * * * *"
		cronChanged.NextFireAt = b.at(2*time.Hour + 5*time.Minute)
		b.syncSchedules(t, b.at(2*time.Hour), cronChanged)
		got = b.schedule(t, "s")
		require.True(t, got.Paused)
		require.Equal(t, "*/5 * * * *", got.Cron)
		requireTime(t, b.at(2*time.Hour+5*time.Minute), got.NextFireAt)

		// So does a new time zone.
		tz := cronChanged
		tz.Timezone = "Europe/Paris"
		tz.NextFireAt = b.at(4 * time.Hour)
		b.syncSchedules(t, b.at(2*time.Hour), tz)
		requireTime(t, b.at(4*time.Hour), b.schedule(t, "s").NextFireAt)
	})

	t.Run("DueSelectsUnpausedDueAmongNames", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		due, future, paused, other := b.scheduleDef("due"), b.scheduleDef("future"), b.scheduleDef("paused"), b.scheduleDef("other")
		due.NextFireAt, paused.NextFireAt, other.NextFireAt = b.now, b.at(-time.Hour), b.at(-time.Hour)
		b.syncSchedules(t, b.now, due, future, paused, other)
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.SchedulePause(b.ctx, &driver.SchedulePauseParams{Name: "paused", Paused: true, Now: b.now}))
		})
		b.inTx(t, func(tx driver.Tx) {
			got, err := tx.ScheduleDue(b.ctx, &driver.ScheduleDueParams{Names: []string{"due", "future", "paused"}, Now: b.now})
			require.NoError(t, err)
			require.Len(t, got, 1)
			require.Equal(t, "due", got[0].Name, "due at now counts; future, paused and unnamed do not")
			none, err := tx.ScheduleDue(b.ctx, &driver.ScheduleDueParams{Now: b.now})
			require.NoError(t, err)
			require.Empty(t, none, "no names, no schedules")
		})
	})

	t.Run("ListLocksWhenAsked", func(t *testing.T) {
		t.Parallel()
		if !s.opts.ConcurrentTx {
			t.Skip("write transactions of this backend are serialised: no row is held by another open transaction")
		}
		b := s.setup(t)
		def := b.scheduleDef("s")
		def.NextFireAt = b.at(-time.Minute)
		b.syncSchedules(t, b.now, def)
		due := func() []*driver.Schedule {
			// Waiting on tx1's row would run into this deadline.
			ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
			defer cancel()
			tx2, err := b.drv.Begin(ctx)
			require.NoError(t, err)
			defer tx2.Rollback(context.WithoutCancel(b.ctx))
			got, err := tx2.ScheduleDue(ctx, &driver.ScheduleDueParams{Names: []string{"s"}, Now: b.now})
			require.NoError(t, err)
			return got
		}
		for _, lock := range []bool{false, true} {
			tx1, err := b.drv.Begin(b.ctx)
			require.NoError(t, err)
			got, err := tx1.ScheduleList(b.ctx, &driver.ScheduleListParams{Names: []string{"s"}, Lock: lock})
			require.NoError(t, err)
			require.Len(t, got, 1)
			if lock {
				require.Empty(t, due(), "the row a locking list read is held until its transaction ends")
			} else {
				require.Len(t, due(), 1, "a plain list locks nothing")
			}
			require.NoError(t, tx1.Rollback(b.ctx))
		}
		require.Len(t, due(), 1, "the lock ended with its transaction")
	})

	t.Run("DueRowsAreFiredOnce", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		def := b.scheduleDef("s")
		def.NextFireAt = b.at(-time.Minute)
		b.syncSchedules(t, b.now, def)
		params := &driver.ScheduleDueParams{Names: []string{"s"}, Now: b.now}

		tx1, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		defer tx1.Rollback(context.WithoutCancel(b.ctx))
		got, err := tx1.ScheduleDue(b.ctx, params)
		require.NoError(t, err)
		require.Len(t, got, 1)
		if s.opts.ConcurrentTx {
			// Another transaction skips the row tx1 holds instead of
			// waiting for it: waiting would run into this deadline.
			ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
			defer cancel()
			tx2, err := b.drv.Begin(ctx)
			require.NoError(t, err)
			defer tx2.Rollback(context.WithoutCancel(b.ctx))
			skipped, err := tx2.ScheduleDue(ctx, params)
			require.NoError(t, err)
			require.Empty(t, skipped, "a row another transaction fires is skipped")
			require.NoError(t, tx2.Rollback(ctx))
		}
		p := b.insertPipelineIn(t, tx1)
		require.NoError(t, tx1.ScheduleFire(b.ctx, &driver.ScheduleFireParams{Name: "s", Expect: b.at(-time.Minute),
			Ticks: []driver.ScheduleTick{{At: b.at(-time.Minute), PipelineID: &p}}, NextFireAt: b.at(59 * time.Minute), Now: b.now}))
		require.NoError(t, tx1.Commit(b.ctx))

		// Fired: no longer due, and the state says what fired.
		b.inTx(t, func(tx driver.Tx) {
			again, err := tx.ScheduleDue(b.ctx, params)
			require.NoError(t, err)
			require.Empty(t, again)
		})
		st := b.schedule(t, "s")
		requireTime(t, b.at(59*time.Minute), st.NextFireAt)
		require.NotNil(t, st.LastTickAt)
		requireTime(t, b.at(-time.Minute), *st.LastTickAt)
		require.Equal(t, &p, st.LastRunID)
		require.NotNil(t, st.LastFiredAt)
		requireTime(t, b.now, *st.LastFiredAt)
		require.Equal(t, int64(1), st.Fired)
	})

	t.Run("FireRefusesATickTwiceAndAStaleExpectation", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		def := b.scheduleDef("s")
		def.NextFireAt = b.at(-2 * time.Hour)
		b.syncSchedules(t, b.now, def)
		require.NoError(t, b.fire(t, "s", b.at(-2*time.Hour), b.at(-time.Hour), b.at(-2*time.Hour)))

		// The schedule moved on: an expectation of the old tick conflicts.
		err := b.fire(t, "s", b.at(-2*time.Hour), b.now)
		require.ErrorIs(t, err, driver.ErrConflict)
		// A tick recorded already conflicts, and nothing of it is kept.
		err = b.fire(t, "s", b.at(-time.Hour), b.now, b.at(-2*time.Hour), b.at(-time.Hour))
		require.ErrorIs(t, err, driver.ErrConflict)
		ticks := b.ticks(t, "s", 0)
		require.Len(t, ticks, 1)
		st := b.schedule(t, "s")
		requireTime(t, b.at(-time.Hour), st.NextFireAt, "the refused transaction moved nothing")
		require.Equal(t, int64(1), st.Fired)

		// Several ticks at once: the newest is the last; none (every due
		// tick dropped as late) moves the schedule alone.
		require.NoError(t, b.fire(t, "s", b.at(-time.Hour), b.at(2*time.Hour), b.at(time.Hour), b.at(-time.Hour), b.now))
		st = b.schedule(t, "s")
		requireTime(t, b.at(time.Hour), *st.LastTickAt)
		require.Equal(t, int64(4), st.Fired)
		require.NoError(t, b.fire(t, "s", b.at(2*time.Hour), b.at(3*time.Hour)))
		st = b.schedule(t, "s")
		requireTime(t, b.at(3*time.Hour), st.NextFireAt)
		requireTime(t, b.at(time.Hour), *st.LastTickAt, "no tick fired, the last one stays")
		require.Equal(t, int64(4), st.Fired)

		got := b.ticks(t, "s", 0)
		require.Len(t, got, 4)
		for i, want := range []time.Duration{time.Hour, 0, -time.Hour, -2 * time.Hour} {
			require.Equal(t, "s", got[i].ScheduleName)
			requireTime(t, b.at(want), got[i].At, "newest first")
			requireTime(t, b.now, got[i].FiredAt)
			require.NotEqual(t, uuid.Nil, got[i].PipelineID)
		}
		require.Len(t, b.ticks(t, "s", 2), 2, "limit")
	})

	t.Run("FireRecordsSkippedTicks", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		def := b.scheduleDef("s")
		def.NextFireAt = b.at(-2 * time.Hour)
		b.syncSchedules(t, b.now, def)
		require.NoError(t, b.fire(t, "s", b.at(-2*time.Hour), b.at(-time.Hour), b.at(-2*time.Hour)))
		fired := b.schedule(t, "s")

		// A skipped tick: recorded with its reason and no run; the last
		// tick stays the one that started a run.
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.ScheduleFire(b.ctx, &driver.ScheduleFireParams{Name: "s", Expect: b.at(-time.Hour),
				Ticks: []driver.ScheduleTick{{At: b.at(-time.Hour), Skipped: "run x unfinished"}}, NextFireAt: b.now, Now: b.at(time.Second)}))
		})
		st := b.schedule(t, "s")
		require.Equal(t, int64(1), st.Fired)
		require.Equal(t, int64(1), st.Skipped)
		requireTime(t, *fired.LastTickAt, *st.LastTickAt)
		require.Equal(t, fired.LastRunID, st.LastRunID)
		requireTime(t, *fired.LastFiredAt, *st.LastFiredAt)
		requireTime(t, b.now, st.NextFireAt)

		ticks := b.ticks(t, "s", 0)
		require.Len(t, ticks, 2)
		require.Nil(t, ticks[0].PipelineID)
		require.Equal(t, "run x unfinished", ticks[0].Skipped)
		requireTime(t, b.at(-time.Hour), ticks[0].At)
		require.NotNil(t, ticks[1].PipelineID)
		require.Empty(t, ticks[1].Skipped)
		// A skipped tick is a tick: it cannot be recorded again either.
		err := b.fire(t, "s", b.now, b.at(time.Hour), b.at(-time.Hour))
		require.ErrorIs(t, err, driver.ErrConflict)
	})

	t.Run("PauseResumeDelete", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		b.syncSchedules(t, b.now, b.scheduleDef("s"))
		require.NoError(t, b.fire(t, "s", b.at(time.Hour), b.at(2*time.Hour), b.at(time.Hour)))
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.SchedulePause(b.ctx, &driver.SchedulePauseParams{Name: "s", Paused: true,
				NextFireAt: b.at(9 * time.Hour), Now: b.at(time.Minute)}))
		})
		st := b.schedule(t, "s")
		require.True(t, st.Paused)
		requireTime(t, b.at(2*time.Hour), st.NextFireAt, "pausing keeps the next tick")
		requireTime(t, b.at(time.Minute), st.UpdatedAt)
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.SchedulePause(b.ctx, &driver.SchedulePauseParams{Name: "s", NextFireAt: b.at(5 * time.Hour), Now: b.at(4 * time.Hour)}))
		})
		st = b.schedule(t, "s")
		require.False(t, st.Paused)
		requireTime(t, b.at(5*time.Hour), st.NextFireAt, "resuming sets it")

		b.inTx(t, func(tx driver.Tx) {
			err := tx.SchedulePause(b.ctx, &driver.SchedulePauseParams{Name: "missing", Paused: true, Now: b.now})
			require.ErrorIs(t, err, driver.ErrNotFound)
			require.ErrorIs(t, tx.ScheduleDelete(b.ctx, "missing"), driver.ErrNotFound)
		})
		run := b.ticks(t, "s", 0)[0].PipelineID
		b.inTx(t, func(tx driver.Tx) { require.NoError(t, tx.ScheduleDelete(b.ctx, "s")) })
		require.Empty(t, b.schedules(t))
		require.Empty(t, b.ticks(t, "s", 0), "its ticks go with it")
		require.Equal(t, *run, b.getPipeline(t, *run).ID, "the runs stay")
	})
}

func (b *bundle) ticks(t *testing.T, name string, limit int) []*driver.ScheduleTickRow {
	t.Helper()
	got, err := b.drv.Reader().ScheduleTickList(b.ctx, &driver.ScheduleTickListParams{Name: name, Limit: limit})
	require.NoError(t, err)
	return got
}

// insertPipelineIn inserts a pending run of "wf" in tx and returns its id.
func (b *bundle) insertPipelineIn(t *testing.T, tx driver.Tx) uuid.UUID {
	t.Helper()
	p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
		Status: driver.PipelinePending, Input: []byte("{}"), Now: b.now}
	ids, err := tx.PipelineInsertMany(b.ctx, []*driver.PipelineInsertParams{p})
	require.NoError(t, err)
	require.Len(t, ids, 1)
	return p.ID
}
