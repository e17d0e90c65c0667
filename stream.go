package cloacina

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/readretry"
)

const (
	// defaultStreamInterval is how often StreamEvents reads the log.
	defaultStreamInterval = time.Second
	// streamPage bounds the events one read of StreamEvents returns; a
	// full page is followed at once by the next.
	streamPage = 1000
	// maxStreamBackoff caps the wait between reads while the database
	// does not answer.
	maxStreamBackoff = 5 * time.Second
)

// StreamOpts tunes StreamEvents. A nil *StreamOpts means defaults.
type StreamOpts struct {
	// Interval is how long the stream waits before it reads the log
	// again after a read that returned less than a full page (1,000
	// events); after a full page it reads again at once. Default: 1s.
	Interval time.Duration
}

// StreamEvents returns the events that match q (RunID, TaskID, Types) as
// they are committed, in commit order, none skipped and none repeated:
// the log followed as EventQuery.Follow describes, read every
// opts.Interval.
//
// It starts after the event numbered q.AfterSeq (the SequenceNum of the
// last event a reader handled, saved to resume from), from the start of
// the log with q.Follow, and otherwise after the newest event a follower
// can have seen when the iteration begins (so, on PostgreSQL, events of
// transactions that committed just before but were held back by another
// transaction still open can come first). q.Newest, q.Limit and
// q.BeforeSeq must be zero.
//
// The stream ends when ctx ends or the loop over it stops. Reads that fail
// for a transient reason (a lost connection, a database restarting, too
// many clients) are retried with backoff, with a warning in the runner's
// log when they start failing and when they work again; any other error
// is yielded once and ends the stream.
//
// The stream keeps its place in the log by the last event it read (or,
// while no event matches, the newest event of the whole log) and, on
// PostgreSQL, that event's transaction, so retention deleting that event
// does not move it: nothing is repeated. A stream started from
// q.AfterSeq finds that event's place at its first read; if retention
// deleted it already, PostgreSQL follows from the start of the log then,
// as EventQuery.AfterSeq describes (events can repeat, none is skipped).
func (r *Runner) StreamEvents(ctx context.Context, q *EventQuery, opts *StreamOpts) iter.Seq2[*Event, error] {
	var filter EventQuery
	if q != nil {
		filter = *q
	}
	interval := defaultStreamInterval
	if opts != nil && opts.Interval != 0 {
		interval = opts.Interval
	}
	return func(yield func(*Event, error) bool) {
		switch {
		case filter.Newest || filter.Limit != 0:
			yield(nil, errors.New("cloacina: StreamEvents returns events oldest first as they come: leave EventQuery.Newest and Limit zero"))
			return
		case filter.AfterSeq < 0:
			yield(nil, fmt.Errorf("cloacina: EventQuery.AfterSeq %d: sequence numbers are positive (use Follow to stream from the start)", filter.AfterSeq))
			return
		case filter.BeforeSeq != 0:
			yield(nil, errors.New("cloacina: StreamEvents follows the log forward: leave EventQuery.BeforeSeq zero (it pages back with Events)"))
			return
		case interval < 0:
			yield(nil, fmt.Errorf("cloacina: StreamOpts.Interval %s is negative: leave it zero for the default (1s)", interval))
			return
		}
		s := &eventStream{r: r, retry: readretry.Retrier{Initial: interval, Max: maxStreamBackoff,
			Down: func(err error) {
				r.logger.Warn("cannot read the event log; retrying until the database answers", "error", err)
			},
			Up: func() { r.logger.Warn("the database answers again; streaming events on") },
		}}
		// The cursor is an event's place in following order: its number
		// and, on PostgreSQL, its transaction, kept so that the place
		// holds when retention deletes that event. A cursor given by
		// number alone is looked up at the first read.
		cursor, cursorTx := filter.AfterSeq, int64(0)
		if cursor == 0 && !filter.Follow {
			head, err := s.head(ctx)
			if err != nil {
				if ctx.Err() == nil {
					yield(nil, err)
				}
				return
			}
			cursor, cursorTx = head.SequenceNum, head.TxID
		}
		filtered := filter.RunID != nil || filter.TaskID != nil || len(filter.Types) > 0 ||
			!filter.Since.IsZero() || !filter.Until.IsZero()
		for {
			// The head is read before the page: every matching event up
			// to it is then in the page, so an empty page can move the
			// cursor there.
			var head driver.Event
			if filtered {
				var err error
				if head, err = s.head(ctx); err != nil {
					if ctx.Err() == nil {
						yield(nil, err)
					}
					return
				}
			}
			page, err := s.read(ctx, &EventQuery{RunID: filter.RunID, TaskID: filter.TaskID, Types: filter.Types,
				Since: filter.Since, Until: filter.Until,
				AfterSeq: cursor, Follow: cursor == 0, Limit: streamPage}, cursorTx)
			if err != nil {
				if ctx.Err() == nil {
					yield(nil, err)
				}
				return
			}
			for _, e := range page {
				if !yield(eventFromDriver(e), nil) {
					return
				}
				cursor, cursorTx = e.SequenceNum, e.TxID
			}
			// Never backwards: if retention took the newest events of the
			// log, its head can be older than the cursor.
			if len(page) == 0 && head.SequenceNum > cursor {
				cursor, cursorTx = head.SequenceNum, head.TxID
			}
			if hook := r.streamPolled.Load(); hook != nil {
				(*hook)(cursor)
			}
			if len(page) == streamPage {
				continue
			}
			if !readretry.Sleep(ctx, interval) {
				return
			}
		}
	}
}

// eventStream is the state of one StreamEvents iteration.
type eventStream struct {
	r     *Runner
	retry readretry.Retrier
}

// head returns the newest event a follower can have seen, or the zero
// event if the log is empty.
func (s *eventStream) head(ctx context.Context) (driver.Event, error) {
	evs, err := s.read(ctx, &EventQuery{Follow: true, Newest: true, Limit: 1}, 0)
	if err != nil || len(evs) == 0 {
		return driver.Event{}, err
	}
	return *evs[0], nil
}

// read runs q (placed after afterTx, see Runner.listEvents), retrying it
// with backoff while it fails for a transient reason.
func (s *eventStream) read(ctx context.Context, q *EventQuery, afterTx int64) ([]*driver.Event, error) {
	var evs []*driver.Event
	err := s.retry.Do(ctx, func() (err error) {
		evs, err = s.r.listEvents(ctx, q, afterTx)
		return err
	})
	return evs, err
}
