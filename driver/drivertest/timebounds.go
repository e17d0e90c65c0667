package drivertest

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// A cutoff beyond the times a backend stores (driver.ClampTime) is taken
// as the bound: "everything" for a far future, "nothing" for a far past,
// on both backends alike (PostgreSQL's own range would refuse the first
// past year 294276).
func testTimeBounds(t *testing.T, s *suite) {
	t.Run("FarCutoffs", func(t *testing.T) {
		t.Parallel()
		f := runsInEveryStatus(t, s)
		b, r := f.b, f.b.drv.Reader()
		far := time.Date(300000, 1, 1, 0, 0, 0, 0, time.UTC)
		past := time.Date(-300000, 1, 1, 0, 0, 0, 0, time.UTC)
		all := len(f.finished) + len(f.unfinished)
		ended := b.insertPipeline(t)
		b.endRun(t, ended, driver.PipelineCompleted, b.at(0))

		events := func(p *driver.EventListParams) int {
			t.Helper()
			evs, err := r.EventList(b.ctx, p)
			require.NoError(t, err)
			return len(evs)
		}
		require.Equal(t, all, events(&driver.EventListParams{CreatedFrom: &past, CreatedBefore: &far}))
		require.Zero(t, events(&driver.EventListParams{CreatedFrom: &far}))
		require.Zero(t, events(&driver.EventListParams{CreatedBefore: &past}))

		n, err := r.EventCount(b.ctx, &driver.EventCountParams{Before: &far})
		require.NoError(t, err)
		require.EqualValues(t, all, n)
		n, err = r.EventCount(b.ctx, &driver.EventCountParams{Before: &past})
		require.NoError(t, err)
		require.Zero(t, n)

		runs, err := r.PipelineList(b.ctx, &driver.PipelineListParams{CreatedSince: &past, CreatedUntil: &far})
		require.NoError(t, err)
		require.Len(t, runs, len(f.runs)+1)
		runs, err = r.PipelineList(b.ctx, &driver.PipelineListParams{CreatedSince: &far})
		require.NoError(t, err)
		require.Empty(t, runs)

		require.EqualValues(t, 1, b.countFinished(t, far))
		require.Zero(t, b.countFinished(t, past))

		b.inTx(t, func(tx driver.Tx) {
			last, err := tx.EventLastBefore(b.ctx, far)
			require.NoError(t, err)
			require.NotZero(t, last)
			last, err = tx.EventLastBefore(b.ctx, past)
			require.NoError(t, err)
			require.Zero(t, last)
			res, err := tx.EventDelete(b.ctx, &driver.EventDeleteParams{Before: past, Limit: 100, UpTo: math.MaxInt64})
			require.NoError(t, err)
			require.Zero(t, res.Deleted)
			ticks, err := tx.ScheduleTickDeleteSkipped(b.ctx, &driver.ScheduleTickDeleteParams{Before: far, Limit: 10})
			require.NoError(t, err)
			require.Zero(t, ticks)
		})
		require.Equal(t, 1, b.deleteFinished(t, far, 100))
	})
}
