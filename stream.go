package cloacina

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

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
	// Interval is how often the log is read for new events when the
	// last read found none. Default: 1s.
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
// transaction still open can come first). q.Newest and q.Limit must be
// zero.
//
// The stream ends when ctx ends or the loop over it stops. Reads that fail
// for a transient reason (a lost connection, a database restarting, too
// many clients) are retried with backoff, with a warning in the runner's
// log when they start failing and when they work again; any other error
// is yielded once and ends the stream.
//
// While no event matches, the stream keeps its place at the newest event
// of the whole log, so retention deleting the last matching event does
// not make PostgreSQL follow from the start of the log again. Only a
// retention pass that deletes the newest event of the whole log (a log
// with no new event for longer than retention keeps them) can take the
// place away; then events can repeat, none is skipped, as
// EventQuery.AfterSeq describes.
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
		cursor := filter.AfterSeq
		if cursor == 0 && !filter.Follow {
			head, err := s.head(ctx)
			if err != nil {
				if ctx.Err() == nil {
					yield(nil, err)
				}
				return
			}
			cursor = head
		}
		filtered := filter.RunID != nil || filter.TaskID != nil || len(filter.Types) > 0 ||
			!filter.Since.IsZero() || !filter.Until.IsZero()
		for {
			// The head is read before the page: every matching event up
			// to it is then in the page, so an empty page can move the
			// cursor there.
			var head int64
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
				AfterSeq: cursor, Follow: cursor == 0, Limit: streamPage})
			if err != nil {
				if ctx.Err() == nil {
					yield(nil, err)
				}
				return
			}
			for _, e := range page {
				if !yield(e, nil) {
					return
				}
				cursor = e.SequenceNum
			}
			// Never backwards: if retention took the newest events of the
			// log, its head can be older than the cursor.
			if len(page) == 0 && head > cursor {
				cursor = head
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

// head returns the number of the newest event a follower can have seen,
// or 0 if the log is empty.
func (s *eventStream) head(ctx context.Context) (int64, error) {
	evs, err := s.read(ctx, &EventQuery{Follow: true, Newest: true, Limit: 1})
	if err != nil || len(evs) == 0 {
		return 0, err
	}
	return evs[0].SequenceNum, nil
}

// read runs q, retrying it with backoff while it fails for a transient
// reason.
func (s *eventStream) read(ctx context.Context, q *EventQuery) ([]*Event, error) {
	var evs []*Event
	err := s.retry.Do(ctx, func() (err error) {
		evs, err = s.r.Events(ctx, q)
		return err
	})
	return evs, err
}
