package drivertest

import (
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func testEventList(t *testing.T, s *suite) {
	// Two runs: p1 with tasks a and b, p2 with task c; seven events e[0..6].
	type fixture struct {
		b      *bundle
		p1, p2 uuid.UUID
		a, c   uuid.UUID
		e      []*driver.Event // as listed, in insertion order
	}
	setup := func(t *testing.T) *fixture {
		b := s.setup(t)
		p1, p2 := b.insertPipeline(t), b.insertPipeline(t)
		ta, tb, tc := b.newTask(p1, 0), b.newTask(p1, 1), b.newTask(p2, 0)
		ta.Name, tb.Name, tc.Name = "a", "b", "c"
		b.insertTasks(t, ta, tb, tc)
		evs := []driver.EventInsert{
			event(p1.ID, nil, driver.EventPipelineStarted, b.at(0*time.Second)),
			event(p1.ID, &ta.ID, driver.EventTaskMarkedReady, b.at(1*time.Second)),
			event(p2.ID, nil, driver.EventPipelineStarted, b.at(2*time.Second)),
			event(p1.ID, &ta.ID, driver.EventTaskClaimed, b.at(3*time.Second)),
			event(p2.ID, &tc.ID, driver.EventTaskMarkedReady, b.at(4*time.Second)),
			event(p1.ID, &tb.ID, driver.EventTaskSkipped, b.at(5*time.Second)),
			event(p1.ID, nil, driver.EventPipelineCompleted, b.at(6*time.Second)),
		}
		for _, ev := range evs {
			b.apply(t, &driver.ChangeSet{Events: []driver.EventInsert{ev}})
		}
		all := b.events(t, &driver.EventListParams{})
		require.Len(t, all, len(evs))
		for i := range evs {
			require.Equal(t, evs[i].ID, all[i].ID)
		}
		return &fixture{b: b, p1: p1.ID, p2: p2.ID, a: ta.ID, c: tc.ID, e: all}
	}
	pick := func(f *fixture, idx ...int) []uuid.UUID {
		out := make([]uuid.UUID, len(idx))
		for i, j := range idx {
			out[i] = f.e[j].ID
		}
		return out
	}
	list := func(t *testing.T, f *fixture, params *driver.EventListParams) []uuid.UUID {
		t.Helper()
		return eventIDs(f.b.events(t, params))
	}

	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		require.Empty(t, b.events(t, &driver.EventListParams{}))
	})

	t.Run("ByPipeline", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		require.Equal(t, pick(f, 0, 1, 3, 5, 6), list(t, f, &driver.EventListParams{PipelineID: &f.p1}))
		require.Equal(t, pick(f, 2, 4), list(t, f, &driver.EventListParams{PipelineID: &f.p2}))
		unknown := uuid.New()
		require.Empty(t, list(t, f, &driver.EventListParams{PipelineID: &unknown}))
	})

	t.Run("ByTask", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		require.Equal(t, pick(f, 1, 3), list(t, f, &driver.EventListParams{TaskID: &f.a}))
		require.Equal(t, pick(f, 4), list(t, f, &driver.EventListParams{TaskID: &f.c}))
		require.Empty(t, list(t, f, &driver.EventListParams{TaskID: &f.c, PipelineID: &f.p1}), "filters combine with AND")
	})

	t.Run("ByTypes", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		require.Equal(t, pick(f, 0, 2, 5), list(t, f, &driver.EventListParams{
			Types: []driver.EventType{driver.EventPipelineStarted, driver.EventTaskSkipped}}))
		require.Equal(t, pick(f, 0, 5), list(t, f, &driver.EventListParams{PipelineID: &f.p1,
			Types: []driver.EventType{driver.EventPipelineStarted, driver.EventTaskSkipped}}))
		require.Empty(t, list(t, f, &driver.EventListParams{Types: []driver.EventType{driver.EventTaskAbandoned}}))
	})

	t.Run("AfterSeqAndLimit", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		f.b.waitFollowable(t)
		require.Equal(t, pick(f, 3, 4, 5, 6), list(t, f, &driver.EventListParams{AfterSeq: f.e[2].SequenceNum}))
		require.Empty(t, list(t, f, &driver.EventListParams{AfterSeq: f.e[6].SequenceNum}))
		require.Equal(t, pick(f, 0, 1), list(t, f, &driver.EventListParams{Limit: 2}))
		// Following the stream page by page sees every event once (see
		// follow.go for following while transactions are open).
		var got []uuid.UUID
		var after int64
		for range 10 {
			page := f.b.events(t, &driver.EventListParams{AfterSeq: after, Limit: 3})
			if len(page) == 0 {
				break
			}
			got = append(got, eventIDs(page)...)
			after = page[len(page)-1].SequenceNum
		}
		require.Equal(t, pick(f, 0, 1, 2, 3, 4, 5, 6), got)
		require.Equal(t, pick(f, 3, 5), list(t, f, &driver.EventListParams{PipelineID: &f.p1, AfterSeq: f.e[1].SequenceNum, Limit: 2}))
	})

	t.Run("Newest", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		f.b.waitFollowable(t)
		require.Equal(t, pick(f, 6, 5, 4), list(t, f, &driver.EventListParams{Newest: true, Limit: 3}))
		require.Equal(t, pick(f, 6, 5, 4, 3, 2, 1, 0), list(t, f, &driver.EventListParams{Newest: true}))
		require.Equal(t, pick(f, 6, 5), list(t, f, &driver.EventListParams{Newest: true, PipelineID: &f.p1, Limit: 2}))
		require.Equal(t, pick(f, 6, 5, 4), list(t, f, &driver.EventListParams{Newest: true, AfterSeq: f.e[3].SequenceNum}))
	})

	// Paging back: the oldest event of each newest-first page bounds the
	// next, through the whole log or with any filter.
	t.Run("BeforeSeq", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		seq := func(i int) int64 { return f.e[i].SequenceNum }
		require.Equal(t, pick(f, 3, 2, 1), list(t, f, &driver.EventListParams{BeforeSeq: seq(4), Newest: true, Limit: 3}))
		require.Equal(t, pick(f, 0, 1, 2, 3), list(t, f, &driver.EventListParams{BeforeSeq: seq(4)}), "in sequence order without Newest")
		require.Empty(t, list(t, f, &driver.EventListParams{BeforeSeq: seq(0)}))
		var got []uuid.UUID
		var before int64
		for range 10 {
			page := f.b.events(t, &driver.EventListParams{BeforeSeq: before, Newest: true, Limit: 3})
			if len(page) == 0 {
				break
			}
			got = append(got, eventIDs(page)...)
			before = page[len(page)-1].SequenceNum
		}
		require.Equal(t, pick(f, 6, 5, 4, 3, 2, 1, 0), got)

		require.Equal(t, pick(f, 3, 1), list(t, f, &driver.EventListParams{PipelineID: &f.p1, BeforeSeq: seq(5), Newest: true, Limit: 2}))
		require.Equal(t, pick(f, 1), list(t, f, &driver.EventListParams{TaskID: &f.a, BeforeSeq: seq(3), Newest: true}))
		require.Equal(t, pick(f, 2, 0), list(t, f, &driver.EventListParams{
			Types: []driver.EventType{driver.EventPipelineStarted}, BeforeSeq: seq(5), Newest: true}))
		skipped := []driver.EventType{driver.EventTaskSkipped} // one of the indexed types
		require.Equal(t, pick(f, 5), list(t, f, &driver.EventListParams{Types: skipped, BeforeSeq: seq(6), Newest: true}))
		require.Empty(t, list(t, f, &driver.EventListParams{Types: skipped, BeforeSeq: seq(5), Newest: true}))
		from := f.b.at(2 * time.Second)
		require.Equal(t, pick(f, 3, 2), list(t, f, &driver.EventListParams{CreatedFrom: &from, BeforeSeq: seq(4), Newest: true}))
	})

	t.Run("CreatedRange", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		f.b.waitFollowable(t)
		from, before := f.b.at(2*time.Second), f.b.at(5*time.Second)
		require.Equal(t, pick(f, 2, 3, 4), list(t, f, &driver.EventListParams{CreatedFrom: &from, CreatedBefore: &before}),
			"from is inclusive, before exclusive")
		require.Equal(t, pick(f, 2, 3, 4, 5, 6), list(t, f, &driver.EventListParams{CreatedFrom: &from}))
		require.Equal(t, pick(f, 0, 1, 2, 3, 4), list(t, f, &driver.EventListParams{CreatedBefore: &before}))
		require.Equal(t, pick(f, 6, 5), list(t, f, &driver.EventListParams{CreatedFrom: &from, Newest: true, Limit: 2}))
		require.Equal(t, pick(f, 3), list(t, f, &driver.EventListParams{CreatedFrom: &from, CreatedBefore: &before, PipelineID: &f.p1}))
		require.Equal(t, pick(f, 3, 4), list(t, f, &driver.EventListParams{CreatedFrom: &from, CreatedBefore: &before, AfterSeq: f.e[2].SequenceNum}),
			"following within the range")
		require.Empty(t, list(t, f, &driver.EventListParams{CreatedFrom: &before, CreatedBefore: &from}))
		// Other time zones name the same instants.
		east := from.In(time.FixedZone("UTC+9", 9*3600))
		require.Equal(t, pick(f, 2, 3, 4, 5, 6), list(t, f, &driver.EventListParams{CreatedFrom: &east}))
	})

	// A listing by creation time returns exactly the events the time
	// filter selects, in sequence order, however creation times and
	// sequence numbers disagree: a clock that stepped, a transaction that
	// numbered its events long after it timed them. A backend may first
	// place the window among sequence numbers (driver.EventSpan); these
	// events sit just outside that place, or far from it, on both sides of
	// each bound.
	t.Run("CreatedRangeOutOfOrder", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t).ID
		sec := func(n float64) time.Duration { return time.Duration(n * float64(time.Second)) }
		offsets := make([]time.Duration, 300)
		for i := range offsets {
			offsets[i] = sec(float64(i))
		}
		for i, off := range map[int]time.Duration{
			1: sec(295), 3: sec(105), 50: sec(100), // far early in the log, timed late
			97: sec(101), 98: sec(100), 99: sec(110) - time.Microsecond, // before the window, timed in it
			100: sec(99), 101: sec(110), 103: sec(100), 109: sec(95), 110: sec(100.5), // at its edges
			200: sec(4), 250: sec(104), 260: sec(105), // late, timed early
			299: 0,
		} {
			offsets[i] = off
		}
		var inserts []driver.EventInsert
		for i, off := range offsets {
			typ := driver.EventTaskClaimed
			if i%7 == 3 {
				typ = driver.EventTaskFailed // one of the indexed types
			}
			inserts = append(inserts, event(p, nil, typ, b.at(off)))
		}
		b.apply(t, &driver.ChangeSet{Events: inserts})
		all := b.events(t, &driver.EventListParams{})
		require.Len(t, all, len(inserts))

		at := func(n float64) *time.Time { v := b.at(sec(n)); return &v }
		windows := [][2]*time.Time{
			{at(100), at(110)}, {at(150), at(150.000001)}, {at(0), at(5)}, {at(290), at(310)},
			{at(280), nil}, {nil, at(20)}, {at(1000), at(2000)}, {at(-10), at(400)}, {at(104), at(106)},
		}
		for _, w := range windows {
			for _, newest := range []bool{false, true} {
				for _, limit := range []int{0, 3} {
					for _, types := range [][]driver.EventType{nil, {driver.EventTaskFailed}} {
						for _, below := range []int64{0, all[105].SequenceNum} {
							params := &driver.EventListParams{CreatedFrom: w[0], CreatedBefore: w[1], Newest: newest, Limit: limit,
								Types: types, BeforeSeq: below}
							want := []uuid.UUID{}
							for _, e := range all {
								if (w[0] == nil || !e.CreatedAt.Before(*w[0])) && (w[1] == nil || e.CreatedAt.Before(*w[1])) &&
									(types == nil || e.Type == types[0]) && (below == 0 || e.SequenceNum < below) {
									want = append(want, e.ID)
								}
							}
							if newest {
								slices.Reverse(want)
							}
							if limit > 0 && len(want) > limit {
								want = want[:limit]
							}
							require.Equal(t, want, eventIDs(b.events(t, params)), "from %v before %v newest %v limit %d types %v below %d",
								w[0], w[1], newest, limit, types, below)
						}
					}
				}
			}
		}
	})

	t.Run("TaskName", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		names := []string{"", "a", "", "a", "c", "b", ""}
		for i, ev := range f.e {
			require.Equal(t, names[i], ev.TaskName, "event %d (%s)", i, ev.Type)
			require.Equal(t, names[i] == "", ev.TaskID == nil)
		}
		got := f.b.events(t, &driver.EventListParams{TaskID: &f.c})
		require.Equal(t, "c", got[0].TaskName)
	})

	t.Run("InsideTx", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		b.inTx(t, func(tx driver.Tx) {
			require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Events: []driver.EventInsert{event(p.ID, nil, driver.EventPipelineStarted, b.now)}}))
			evs, err := tx.EventList(b.ctx, &driver.EventListParams{PipelineID: &p.ID})
			require.NoError(t, err)
			require.Len(t, evs, 1, "a transaction sees its own events")
			n, err := tx.EventCount(b.ctx, &driver.EventCountParams{PipelineID: &p.ID})
			require.NoError(t, err)
			require.Equal(t, int64(1), n)
		})
	})
}

// insertEventsAt appends one event of pipeline pid at each offset from
// b.now, each in its own change set, and returns them as listed.
func (b *bundle) insertEventsAt(t *testing.T, pid uuid.UUID, offsets ...time.Duration) []*driver.Event {
	t.Helper()
	var want []uuid.UUID
	for _, off := range offsets {
		ev := event(pid, nil, driver.EventTaskCreated, b.at(off))
		want = append(want, ev.ID)
		b.apply(t, &driver.ChangeSet{Events: []driver.EventInsert{ev}})
	}
	got := b.events(t, &driver.EventListParams{PipelineID: &pid})
	require.Equal(t, want, eventIDs(got))
	return got
}

func testEventCount(t *testing.T, s *suite) {
	t.Run("ByPipelineAndCutoff", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		count := func(params *driver.EventCountParams) int64 {
			t.Helper()
			n, err := b.drv.Reader().EventCount(b.ctx, params)
			require.NoError(t, err)
			return n
		}
		require.Zero(t, count(&driver.EventCountParams{}))
		p1, p2 := b.insertPipeline(t).ID, b.insertPipeline(t).ID
		b.insertEventsAt(t, p1, 0, time.Second, 2*time.Second)
		b.insertEventsAt(t, p2, 0, 3*time.Second)

		require.Equal(t, int64(5), count(&driver.EventCountParams{}))
		require.Equal(t, int64(3), count(&driver.EventCountParams{PipelineID: &p1}))
		require.Equal(t, int64(2), count(&driver.EventCountParams{PipelineID: &p2}))
		unknown := uuid.New()
		require.Zero(t, count(&driver.EventCountParams{PipelineID: &unknown}))

		cut := b.at(time.Second)
		require.Equal(t, int64(2), count(&driver.EventCountParams{Before: &cut}), "strictly before the cutoff")
		require.Equal(t, int64(1), count(&driver.EventCountParams{Before: &cut, PipelineID: &p1}))
		cut = b.at(time.Second + time.Microsecond)
		require.Equal(t, int64(3), count(&driver.EventCountParams{Before: &cut}))
		early := b.at(-time.Hour)
		require.Zero(t, count(&driver.EventCountParams{Before: &early}))
	})

	t.Run("ExcludeUnfinishedRuns", func(t *testing.T) {
		t.Parallel()
		f := runsInEveryStatus(t, s)
		count := func(params *driver.EventCountParams) int64 {
			t.Helper()
			n, err := f.b.drv.Reader().EventCount(f.b.ctx, params)
			require.NoError(t, err)
			return n
		}
		later := f.b.at(time.Hour)
		require.EqualValues(t, len(f.finished), count(&driver.EventCountParams{Before: &later, ExcludeUnfinishedRuns: true}))
		require.EqualValues(t, len(f.finished)+len(f.unfinished), count(&driver.EventCountParams{Before: &later}))
		require.EqualValues(t, len(f.finished), count(&driver.EventCountParams{ExcludeUnfinishedRuns: true}), "without a cutoff")
		cut := f.b.at(3 * time.Second) // the first three events: pending's, running's, paused's
		require.Zero(t, count(&driver.EventCountParams{Before: &cut, ExcludeUnfinishedRuns: true}))
		cut = f.b.at(5 * time.Second)
		require.EqualValues(t, 2, count(&driver.EventCountParams{Before: &cut, ExcludeUnfinishedRuns: true}), "the cutoff still holds")
		running, completed := f.runs[driver.PipelineRunning], f.runs[driver.PipelineCompleted]
		require.Zero(t, count(&driver.EventCountParams{PipelineID: &running, ExcludeUnfinishedRuns: true}))
		require.EqualValues(t, eventsPerRun, count(&driver.EventCountParams{PipelineID: &completed, ExcludeUnfinishedRuns: true}))
	})
}

// eventsPerRun is how many events runsInEveryStatus gives each run.
const eventsPerRun = 3

// everyStatusFixture holds one run in each status and one event stream
// whose run row does not exist, with eventsPerRun events each.
type everyStatusFixture struct {
	b *bundle
	// runs maps each status to its run; orphan has events but no row.
	runs   map[driver.PipelineStatus]uuid.UUID
	orphan uuid.UUID
	// unfinished are the events of Pending, Running and Paused runs, and
	// finished the others (those of the orphan included), each oldest
	// first.
	unfinished, finished []*driver.Event
}

// runsInEveryStatus makes an everyStatusFixture. The runs' events
// interleave in time, one second apart: round i gives each run (in
// unfinishedFirst order, then the orphan) its event i, so batches that go
// oldest first cross runs.
func runsInEveryStatus(t *testing.T, s *suite) *everyStatusFixture {
	t.Helper()
	b := s.setup(t)
	f := &everyStatusFixture{b: b, runs: map[driver.PipelineStatus]uuid.UUID{}, orphan: uuid.New()}
	order := []driver.PipelineStatus{driver.PipelinePending, driver.PipelineRunning, driver.PipelinePaused,
		driver.PipelineCompleted, driver.PipelineFailed, driver.PipelineCancelled}
	pids := make([]uuid.UUID, 0, len(order)+1)
	for _, st := range order {
		p := b.insertPipeline(t, withStatus(st))
		f.runs[st] = p.ID
		pids = append(pids, p.ID)
	}
	pids = append(pids, f.orphan)
	var inserts []driver.EventInsert
	for i := range eventsPerRun {
		for j, pid := range pids {
			inserts = append(inserts, event(pid, nil, driver.EventTaskCreated, b.at(time.Duration(i*len(pids)+j)*time.Second)))
		}
	}
	b.apply(t, &driver.ChangeSet{Events: inserts})
	all := b.events(t, &driver.EventListParams{})
	require.Len(t, all, len(inserts))
	for _, ev := range all {
		switch ev.PipelineID {
		case f.runs[driver.PipelinePending], f.runs[driver.PipelineRunning], f.runs[driver.PipelinePaused]:
			f.unfinished = append(f.unfinished, ev)
		default:
			f.finished = append(f.finished, ev)
		}
	}
	return f
}

func testEventDelete(t *testing.T, s *suite) {
	del := func(t *testing.T, b *bundle, before time.Time, limit int) int64 {
		t.Helper()
		var n int64
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.EventDelete(b.ctx, &driver.EventDeleteParams{Before: before, Limit: limit})
			require.NoError(t, err)
			n = res.Deleted
		})
		return n
	}

	t.Run("OldestFirstInBatches", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t).ID
		var offsets []time.Duration
		for i := range 10 {
			offsets = append(offsets, time.Duration(i)*time.Second)
		}
		all := b.insertEventsAt(t, p, offsets...)
		cut := b.at(5 * time.Second)
		require.Equal(t, int64(3), del(t, b, cut, 3))
		require.Equal(t, eventIDs(all[3:]), eventIDs(b.events(t, &driver.EventListParams{})), "the oldest go first")
		require.Equal(t, int64(2), del(t, b, cut, 3), "at most the events before the cutoff")
		require.Zero(t, del(t, b, cut, 3))
		require.Equal(t, eventIDs(all[5:]), eventIDs(b.events(t, &driver.EventListParams{})), "an event at the cutoff is kept")
	})

	// A batch takes the first recorded first, even when an event was
	// recorded after a later-dated one (a transaction that began earlier,
	// say): so a batch walks the primary key and stops at its limit.
	t.Run("FirstRecordedFirst", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t).ID
		all := b.insertEventsAt(t, p, 2*time.Second, 0, time.Hour, time.Second)
		cut := b.at(time.Minute)
		require.Equal(t, int64(1), del(t, b, cut, 1))
		require.Equal(t, eventIDs(all[1:]), eventIDs(b.events(t, &driver.EventListParams{})))
		require.Equal(t, int64(2), del(t, b, cut, 5), "past an event at or after the cutoff")
		require.Equal(t, eventIDs(all[2:3]), eventIDs(b.events(t, &driver.EventListParams{})))
	})

	t.Run("UpTo", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t).ID
		all := b.insertEventsAt(t, p, 0, time.Second, 2*time.Second, time.Hour, 3*time.Second)
		cut := b.at(time.Minute)
		var last int64
		b.inTx(t, func(tx driver.Tx) {
			var err error
			last, err = tx.EventLastBefore(b.ctx, cut)
			require.NoError(t, err)
		})
		require.Equal(t, all[4].SequenceNum, last, "the newest event before the cutoff, not the newest recorded before it")
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.EventDelete(b.ctx, &driver.EventDeleteParams{Before: cut, Limit: 10, UpTo: all[1].SequenceNum})
			require.NoError(t, err)
			require.Equal(t, driver.EventDeleteResult{Deleted: 2, Last: all[1].SequenceNum}, *res, "none numbered above UpTo")
		})
		require.Equal(t, eventIDs(all[2:]), eventIDs(b.events(t, &driver.EventListParams{})))
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.EventDelete(b.ctx, &driver.EventDeleteParams{Before: cut, Limit: 10, UpTo: last})
			require.NoError(t, err)
			require.Equal(t, driver.EventDeleteResult{Deleted: 2, Last: last}, *res)
			none, err := tx.EventLastBefore(b.ctx, cut)
			require.NoError(t, err)
			require.Zero(t, none, "no event before the cutoff is left")
			at, err := tx.EventLastBefore(b.ctx, b.at(time.Hour))
			require.NoError(t, err)
			require.Zero(t, at, "an event at the time given is not before it")
		})
		require.Equal(t, eventIDs(all[3:4]), eventIDs(b.events(t, &driver.EventListParams{})))
	})

	// A batch starts after the number it is given: a pass goes on where
	// its previous batch ended, past the old events that batch kept.
	t.Run("After", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t).ID
		all := b.insertEventsAt(t, p, 0, time.Second, 2*time.Second, time.Hour, 3*time.Second, 4*time.Second)
		cut := b.at(time.Minute)
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.EventDelete(b.ctx, &driver.EventDeleteParams{Before: cut, Limit: 2, After: all[0].SequenceNum})
			require.NoError(t, err)
			require.Equal(t, driver.EventDeleteResult{Deleted: 2, Last: all[2].SequenceNum}, *res, "none numbered at or below After")
			res, err = tx.EventDelete(b.ctx, &driver.EventDeleteParams{Before: cut, Limit: 2, After: res.Last})
			require.NoError(t, err)
			require.Equal(t, driver.EventDeleteResult{Deleted: 2, Last: all[5].SequenceNum}, *res, "past an event at or after the cutoff")
			res, err = tx.EventDelete(b.ctx, &driver.EventDeleteParams{Before: cut, Limit: 2, After: res.Last})
			require.NoError(t, err)
			require.Equal(t, driver.EventDeleteResult{}, *res, "nothing deleted, nothing last")
		})
		require.Equal(t, eventIDs([]*driver.Event{all[0], all[3]}), eventIDs(b.events(t, &driver.EventListParams{})))
	})

	delFinished := func(t *testing.T, b *bundle, before time.Time, limit int) int64 {
		t.Helper()
		var n int64
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.EventDelete(b.ctx, &driver.EventDeleteParams{Before: before, Limit: limit, ExcludeUnfinishedRuns: true})
			require.NoError(t, err)
			n = res.Deleted
		})
		return n
	}

	// Retention keeps the events of runs still going, so a reader can
	// still rebuild their tasks' statuses; those of Completed, Failed and
	// Cancelled runs go, as do those whose run row is gone.
	t.Run("ExcludeUnfinishedRuns", func(t *testing.T) {
		t.Parallel()
		f := runsInEveryStatus(t, s)
		b := f.b
		later := b.at(time.Hour)
		count := func(exclude bool) int64 {
			t.Helper()
			n, err := b.drv.Reader().EventCount(b.ctx, &driver.EventCountParams{Before: &later, ExcludeUnfinishedRuns: exclude})
			require.NoError(t, err)
			return n
		}
		want := count(true)
		require.EqualValues(t, len(f.finished), want)

		// Batches of 5 go oldest first, skipping the unfinished runs' events.
		require.Equal(t, int64(5), delFinished(t, b, later, 5))
		left := append(append([]*driver.Event{}, f.unfinished...), f.finished[5:]...)
		require.ElementsMatch(t, eventIDs(left), eventIDs(b.events(t, &driver.EventListParams{})))
		var deleted int64 = 5
		for {
			n := delFinished(t, b, later, 5)
			require.LessOrEqual(t, n, int64(5))
			deleted += n
			if n < 5 {
				break
			}
		}
		require.Equal(t, want, deleted, "the count is what the deletion deletes")
		require.Equal(t, eventIDs(f.unfinished), eventIDs(b.events(t, &driver.EventListParams{})))
		require.Zero(t, count(true))
		require.Zero(t, delFinished(t, b, later, 5))

		// Without the filter, the rest goes by age alone.
		require.EqualValues(t, len(f.unfinished), count(false))
		require.Equal(t, int64(len(f.unfinished)), del(t, b, later, 100))
		require.Empty(t, b.events(t, &driver.EventListParams{}))
	})

	t.Run("ExcludeUnfinishedRunsKeepsTheCutoff", func(t *testing.T) {
		t.Parallel()
		f := runsInEveryStatus(t, s)
		b := f.b
		// Before 10s: events 0..9, of which 3, 4, 5, 6 (completed, failed,
		// cancelled, orphan) and 0..2, 7..9 (pending, running, paused).
		cut := b.at(10 * time.Second)
		require.Equal(t, int64(4), delFinished(t, b, cut, 100))
		left := append(append([]*driver.Event{}, f.unfinished...), f.finished[4:]...)
		require.ElementsMatch(t, eventIDs(left), eventIDs(b.events(t, &driver.EventListParams{})))
	})

	// The status that counts is the run's when the batch runs: once a run
	// finishes, the next batch deletes its old events.
	t.Run("ExcludeUnfinishedRunsUntilTheRunEnds", func(t *testing.T) {
		t.Parallel()
		f := runsInEveryStatus(t, s)
		b := f.b
		later := b.at(time.Hour)
		require.EqualValues(t, len(f.finished), delFinished(t, b, later, 100))
		running := f.runs[driver.PipelineRunning]
		b.apply(t, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{{ID: running,
			FromStatus: driver.PipelineRunning, Status: driver.PipelineCompleted, CompletedAt: &later, Now: later}}})
		require.EqualValues(t, eventsPerRun, delFinished(t, b, later, 100))
		for _, ev := range b.events(t, &driver.EventListParams{}) {
			require.NotEqual(t, running, ev.PipelineID)
		}
		require.Len(t, b.events(t, &driver.EventListParams{}), len(f.unfinished)-eventsPerRun)
	})

	t.Run("LimitMustBePositive", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t).ID
		b.insertEventsAt(t, p, 0)
		for _, limit := range []int{0, -1} {
			for _, exclude := range []bool{false, true} {
				tx, err := b.drv.Begin(b.ctx)
				require.NoError(t, err)
				_, err = tx.EventDelete(b.ctx, &driver.EventDeleteParams{Before: b.at(time.Hour), Limit: limit, ExcludeUnfinishedRuns: exclude})
				require.Error(t, err, "limit %d: a delete without a batch size is refused, not unbounded", limit)
				require.NoError(t, tx.Rollback(b.ctx))
			}
		}
		require.Len(t, b.events(t, &driver.EventListParams{}), 1)
	})

	t.Run("SequenceNumbersNeverReused", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t).ID
		old := b.insertEventsAt(t, p, 0, time.Second, 2*time.Second)
		require.Equal(t, int64(3), del(t, b, b.at(time.Hour), 100))
		require.Empty(t, b.events(t, &driver.EventListParams{}))
		fresh := b.insertEventsAt(t, p, 3*time.Second)
		require.Greater(t, fresh[0].SequenceNum, old[2].SequenceNum,
			"a reader that saw sequence %d must not miss later events", old[2].SequenceNum)
	})
}
