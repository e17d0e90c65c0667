package drivertest

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// fromStart is an AfterSeq that follows the log from its first event:
// sequence numbers are positive.
const fromStart = -1

// waitFollowable waits until a follower starting at the beginning of the
// log sees every committed event. On PostgreSQL a following read holds
// back events while any transaction in the cluster that could precede
// them is open, and other tests run transactions at the same time, so
// this is a wait on their commits with the subtest's deadline.
func (b *bundle) waitFollowable(t *testing.T) {
	t.Helper()
	all := len(b.events(t, &driver.EventListParams{}))
	b.follow(t, fromStart, all)
}

// follow reads the log the way a follower does, passing the sequence
// number of the last event it got, until it has n events, and returns
// them in the order it got them.
func (b *bundle) follow(t *testing.T, after int64, n int) []*driver.Event {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var got []*driver.Event
	for {
		page := b.events(t, &driver.EventListParams{AfterSeq: after})
		got = append(got, page...)
		if len(page) > 0 {
			after = page[len(page)-1].SequenceNum
		}
		if len(got) >= n {
			require.Len(t, got, n, "a follower gets each committed event once")
			return got
		}
		select {
		case <-b.ctx.Done():
			require.Failf(t, "follower never caught up", "want %d events, have %d: %v", n, len(got), b.ctx.Err())
		case <-tick.C:
		}
	}
}

// followSetup gives a test of following with concurrent transactions a
// run with one event that a follower has seen. It skips on a backend with
// one writer at a time, where sequence order is commit order.
func (s *suite) followSetup(t *testing.T) (b *bundle, p uuid.UUID, base *driver.Event) {
	t.Helper()
	if !s.opts.ConcurrentTx {
		t.Skip("one writer at a time: sequence order is commit order")
	}
	b = s.setup(t)
	p = b.insertPipeline(t).ID
	base = b.insertEventsAt(t, p, 0)[0]
	b.waitFollowable(t)
	return b, p, base
}

// testEventFollow pins following mode (EventListParams.AfterSeq): a reader
// that passes the last sequence number it saw never skips an event, even
// when transactions commit out of sequence order.
func testEventFollow(t *testing.T, s *suite) {
	// Events of a transaction still open, and every event numbered after
	// them, are held back until it ends; readers that do not follow see
	// committed events at once.
	t.Run("HoldsBackBehindOpenTransaction", func(t *testing.T) {
		t.Parallel()
		b, p, base := s.followSetup(t)

		early := event(p, nil, driver.EventTaskCreated, b.at(time.Second))
		open, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		defer open.Rollback(b.ctx)
		applyNow(t, b, open, &driver.ChangeSet{Events: []driver.EventInsert{early}})

		late := event(p, nil, driver.EventTaskCreated, b.at(2*time.Second))
		b.apply(t, &driver.ChangeSet{Events: []driver.EventInsert{late}})

		committed := b.events(t, &driver.EventListParams{PipelineID: &p})
		require.Equal(t, []uuid.UUID{base.ID, late.ID}, eventIDs(committed), "reads that do not follow see the committed event")
		require.Empty(t, b.events(t, &driver.EventListParams{AfterSeq: base.SequenceNum}),
			"a follower must not pass an event that an open transaction can still commit")
		require.Equal(t, []uuid.UUID{base.ID}, eventIDs(b.events(t, &driver.EventListParams{AfterSeq: fromStart})),
			"following from the start holds back the same events")
		require.Empty(t, b.events(t, &driver.EventListParams{AfterSeq: base.SequenceNum, PipelineID: &p, Newest: true}),
			"filters and order do not widen what following sees")

		require.NoError(t, open.Commit(b.ctx))
		got := b.follow(t, base.SequenceNum, 2)
		require.Equal(t, []uuid.UUID{early.ID, late.ID}, eventIDs(got), "the earlier event is not skipped")
		require.Less(t, got[0].SequenceNum, got[1].SequenceNum)
	})

	// A transaction that took its transaction id first (here by inserting
	// a pipeline; in the engine, by locking one) but numbered its event
	// after a later transaction did can commit first. Its event comes
	// first (following is in transaction order), and the earlier-numbered
	// event of the transaction still open follows when it commits: it is
	// not skipped although a smaller number than the follower's last.
	t.Run("NeverSkipsEarlierNumber", func(t *testing.T) {
		t.Parallel()
		b, p, base := s.followSetup(t)

		first, second, numberedFirst, numberedSecond := b.outOfOrder(t, p, time.Second, 2*time.Second)
		require.NoError(t, first.Commit(b.ctx))
		require.Equal(t, []uuid.UUID{base.ID, numberedSecond.ID}, eventIDs(b.events(t, &driver.EventListParams{PipelineID: &p})))

		// Whether the committed event is released now depends on other
		// transactions in the cluster; the open one's never is.
		got := b.events(t, &driver.EventListParams{AfterSeq: base.SequenceNum})
		require.LessOrEqual(t, len(got), 1)
		after := base.SequenceNum
		if len(got) == 1 {
			require.Equal(t, numberedSecond.ID, got[0].ID)
			after = got[0].SequenceNum
		}

		require.NoError(t, second.Commit(b.ctx))
		got = append(got, b.follow(t, after, 2-len(got))...)
		require.Equal(t, []uuid.UUID{numberedSecond.ID, numberedFirst.ID}, eventIDs(got),
			"in transaction order, the earlier number last, nothing skipped")
		require.Greater(t, got[0].SequenceNum, got[1].SequenceNum)
		require.Empty(t, b.events(t, &driver.EventListParams{AfterSeq: got[1].SequenceNum}), "and nothing repeated")
	})

	// A rolled-back transaction leaves a gap in the numbers; following
	// goes on past it.
	t.Run("PassesRolledBackGap", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t).ID
		base := b.insertEventsAt(t, p, 0)[0]
		tx, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		require.NoError(t, tx.ChangeSetApply(b.ctx, &driver.ChangeSet{Events: []driver.EventInsert{event(p, nil, driver.EventTaskCreated, b.at(time.Second))}}))
		require.NoError(t, tx.Rollback(b.ctx))
		after := event(p, nil, driver.EventTaskCreated, b.at(2*time.Second))
		b.apply(t, &driver.ChangeSet{Events: []driver.EventInsert{after}})
		got := b.follow(t, base.SequenceNum, 1)
		require.Equal(t, after.ID, got[0].ID)
		// A number no event has (the rolled-back one) skips nothing after
		// it; where following is in transaction order it cannot be placed
		// and the log starts over (see CursorDeletedByRetention).
		again := eventIDs(b.events(t, &driver.EventListParams{AfterSeq: got[0].SequenceNum - 1}))
		require.Contains(t, again, after.ID)
		require.Subset(t, []uuid.UUID{base.ID, after.ID}, again)
	})

	// Retention can delete the event a follower last got, while an event
	// of a later transaction, numbered lower and created later, stays
	// (created_at order is not sequence order: clocks of several hosts, a
	// transaction that waited for a lock). The follower must still get it.
	t.Run("CursorDeletedByRetention", func(t *testing.T) {
		t.Parallel()
		b, p, base := s.followSetup(t)

		// late: numbered first, in the later transaction, created later.
		first, second, late, cursor := b.outOfOrder(t, p, 10*time.Second, time.Second)
		require.NoError(t, first.Commit(b.ctx))
		got := b.follow(t, base.SequenceNum, 1)
		require.Equal(t, cursor.ID, got[0].ID)
		require.NoError(t, second.Commit(b.ctx))

		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.EventDelete(b.ctx, &driver.EventDeleteParams{Before: b.at(5 * time.Second), Limit: 100})
			require.NoError(t, err)
			require.EqualValues(t, 2, res.Deleted, "base and the follower's last event")
		})
		require.Equal(t, []uuid.UUID{late.ID}, eventIDs(b.follow(t, got[0].SequenceNum, 1)))
	})

	// A follower that passes the TxID of its last event with its number
	// keeps its place when retention deletes that event: PostgreSQL
	// compares with the pair instead of looking the event up (without it,
	// it would follow from the start and repeat the event kept below).
	// Each event here is a transaction of its own; the first is created
	// latest, so retention keeps it.
	t.Run("CursorHeldByItsTransaction", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t).ID
		b.insertEventsAt(t, p, 10*time.Second, time.Second, 2*time.Second, 6*time.Second, 7*time.Second)
		all := b.follow(t, fromStart, 5)
		cursor := all[2]
		if s.opts.ConcurrentTx {
			require.NotZero(t, cursor.TxID, "PostgreSQL reports each event's transaction")
			require.Less(t, all[1].TxID, cursor.TxID)
		}
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.EventDelete(b.ctx, &driver.EventDeleteParams{Before: b.at(5 * time.Second), Limit: 100})
			require.NoError(t, err)
			require.EqualValues(t, 2, res.Deleted, "the second and third events, the cursor among them")
		})
		got := b.events(t, &driver.EventListParams{AfterSeq: cursor.SequenceNum, AfterTx: cursor.TxID})
		require.Equal(t, eventIDs(all[3:]), eventIDs(got), "the events after the cursor, none again")
	})

	// A follower paging through the log sees every event once, in order.
	t.Run("Pages", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t).ID
		var offsets []time.Duration
		for i := range 7 {
			offsets = append(offsets, time.Duration(i)*time.Second)
		}
		all := b.insertEventsAt(t, p, offsets...)
		b.waitFollowable(t)
		var got []uuid.UUID
		after := int64(fromStart)
		for range 10 {
			page := b.events(t, &driver.EventListParams{AfterSeq: after, Limit: 3})
			if len(page) == 0 {
				break
			}
			got = append(got, eventIDs(page)...)
			after = page[len(page)-1].SequenceNum
		}
		require.Equal(t, eventIDs(all), got)
	})
}

// outOfOrder opens two transactions on run p: first takes its transaction
// id at once (by inserting a run), second then inserts numberedFirst
// (created at the offset createdFirst), and first inserts numberedSecond.
// The caller commits them; both roll back when the test ends.
//
// Where following is in transaction order, numberedSecond comes first:
// first's place is its own id, below second's. A transaction's place is
// also at least the newest id that had ended when it wrote its events
// (EventListParams.AfterTx), so a transaction of another test that got
// its id after second and ended before first wrote can place first after
// second: the two transactions then roll back and it begins again.
func (b *bundle) outOfOrder(t *testing.T, p uuid.UUID, createdFirst, createdSecond time.Duration) (first, second driver.Tx,
	numberedFirst, numberedSecond driver.EventInsert) {
	t.Helper()
	for try := 1; ; try++ {
		first, second, numberedFirst, numberedSecond = b.tryOutOfOrder(t, p, createdFirst, createdSecond)
		placeFirst, placeSecond := b.ownTxID(t, second, p, numberedFirst.ID), b.ownTxID(t, first, p, numberedSecond.ID)
		if placeSecond < placeFirst {
			return first, second, numberedFirst, numberedSecond
		}
		require.NoError(t, first.Rollback(b.ctx))
		require.NoError(t, second.Rollback(b.ctx))
		require.Less(t, try, 50, "the two transactions never took the places the test needs")
	}
}

func (b *bundle) tryOutOfOrder(t *testing.T, p uuid.UUID, createdFirst, createdSecond time.Duration) (first, second driver.Tx,
	numberedFirst, numberedSecond driver.EventInsert) {
	t.Helper()
	first, err := b.drv.Begin(b.ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = first.Rollback(b.ctx) })
	ok, err := insertOne(b.ctx, first, &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf",
		WorkflowVersion: "v1", Status: driver.PipelinePending, Input: []byte(`{}`), Now: b.now})
	require.NoError(t, err)
	require.True(t, ok)
	second, err = b.drv.Begin(b.ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = second.Rollback(b.ctx) })
	numberedFirst = event(p, nil, driver.EventTaskCreated, b.at(createdFirst))
	applyNow(t, b, second, &driver.ChangeSet{Events: []driver.EventInsert{numberedFirst}})
	numberedSecond = event(p, nil, driver.EventTaskCreated, b.at(createdSecond))
	applyNow(t, b, first, &driver.ChangeSet{Events: []driver.EventInsert{numberedSecond}})
	return first, second, numberedFirst, numberedSecond
}

// ownTxID reads, inside tx, the place (Event.TxID) of the event id that
// tx wrote on run p.
func (b *bundle) ownTxID(t *testing.T, tx driver.Tx, p, id uuid.UUID) int64 {
	t.Helper()
	evs, err := tx.EventList(b.ctx, &driver.EventListParams{PipelineID: &p})
	require.NoError(t, err)
	for _, e := range evs {
		if e.ID == id {
			return e.TxID
		}
	}
	require.Failf(t, "event not found", "event %s of run %s, in the transaction that wrote it", id, p)
	return 0
}

// applyNow applies a change set inside tx and makes sure its rows are
// written now, not held for COMMIT (which a backend may do): a later read
// in the same transaction must see them.
func applyNow(t *testing.T, b *bundle, tx driver.Tx, cs *driver.ChangeSet) {
	t.Helper()
	require.NoError(t, tx.ChangeSetApply(b.ctx, cs))
	_, err := tx.EventCount(b.ctx, &driver.EventCountParams{})
	require.NoError(t, err)
}
