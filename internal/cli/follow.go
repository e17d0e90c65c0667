package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/readretry"
)

const (
	// defaultFollowInterval is how often events list --follow polls.
	defaultFollowInterval = time.Second
	// followPage bounds the events one poll of a run reads; a full page
	// is followed at once by the next.
	followPage = 1000
	// maxFollowBackoff caps the wait between reads while the database
	// does not answer.
	maxFollowBackoff = 5 * time.Second
)

// eventFilter is the selection of events list: zero fields do not filter.
type eventFilter struct {
	run, task    *uuid.UUID
	types        []cloacina.EventType
	since, until time.Time
}

func (f *eventFilter) query() *cloacina.EventQuery {
	return &cloacina.EventQuery{RunID: f.run, TaskID: f.task, Types: f.types, Since: f.since, Until: f.until}
}

// follower prints the events of events list --follow as they are
// committed.
type follower struct {
	r        *cloacina.Runner
	filter   *eventFilter
	backlog  int           // how many existing events to print first
	interval time.Duration // between polls that found nothing new
	out      *stream       // the table, unless asJSON
	w        io.Writer
	asJSON   bool // JSON Lines instead of a table
	logger   *slog.Logger
	printed  bool
	retry    readretry.Retrier
	// polled, when set, is called after each poll of a run (a test hook).
	polled func()
}

// eventColumnWidths are the widths a followed event table starts with, so
// that its fixed-width columns line up from the first row on: the time,
// the run id and the longest event type; task names get room for most.
func eventColumnWidths() []int {
	longest := 0
	for _, t := range eventTypeNames() {
		longest = max(longest, len(t))
	}
	return []int{0, len(timeLayout), len(uuid.UUID{}.String()), longest, 12}
}

// run follows until ctx ends, which is how a follower is meant to stop and
// not an error, or — when it follows one run or one task — until that run
// has finished and every event it has is printed.
func (f *follower) run(ctx context.Context) error {
	// Reads are retried while the error is transient (a lost connection, a
	// server restarting, too many clients): following is meant to outlast
	// a database restart. It warns on stderr once when reads start failing
	// and once when they work again; any other error ends the follower.
	f.retry = readretry.Retrier{Initial: f.interval, Max: maxFollowBackoff,
		Down: func(err error) {
			f.logger.Warn("cannot read the event log; retrying until the database answers (interrupt to stop)", "error", oneLine(err.Error()))
		},
		Up: func() { f.logger.Warn("the database answers again; following on") },
	}
	var err error
	if f.filter.run != nil || f.filter.task != nil {
		err = f.followRun(ctx)
	} else {
		err = f.followLog(ctx)
	}
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// events reads events, retrying through transient errors (see run).
func (f *follower) events(ctx context.Context, q *cloacina.EventQuery) ([]*cloacina.Event, error) {
	var evs []*cloacina.Event
	err := f.retry.Do(ctx, func() (err error) {
		evs, err = f.r.Events(ctx, q)
		return err
	})
	if err != nil {
		return nil, listError(err)
	}
	return evs, nil
}

// get reads a run, retrying through transient errors (see run); a run
// that does not exist is nil, without error.
func (f *follower) get(ctx context.Context, id uuid.UUID) (*cloacina.ExecutionResult, error) {
	var res *cloacina.ExecutionResult
	err := f.retry.Do(ctx, func() (err error) {
		res, err = f.r.Get(ctx, id)
		return err
	})
	if errors.Is(err, cloacina.ErrRunNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, runError(id, err)
	}
	return res, nil
}

// logged reads one event of a run or of a task execution (the one the
// query selects) from the whole log, or nil when the log has none.
func (f *follower) logged(ctx context.Context, q *cloacina.EventQuery) (*cloacina.Event, error) {
	q.Limit = 1
	evs, err := f.events(ctx, q)
	if err != nil || len(evs) == 0 {
		return nil, err
	}
	return evs[0], nil
}

// getTask reads a task, retrying through transient errors (see run); a
// task that does not exist is nil, without error.
func (f *follower) getTask(ctx context.Context, id uuid.UUID) (*cloacina.TaskDetail, error) {
	var t *cloacina.TaskDetail
	err := f.retry.Do(ctx, func() (err error) {
		t, err = f.r.GetTask(ctx, id)
		return err
	})
	if errors.Is(err, cloacina.ErrTaskNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("task execution %s: %w", id, err)
	}
	return t, nil
}

func (f *follower) print(events []*cloacina.Event) error {
	if len(events) == 0 {
		return nil
	}
	f.printed = true
	if f.asJSON {
		return writeJSONLines(f.w, events, func(e *cloacina.Event) any { return newEventJSON(e) })
	}
	rows := make([][]string, len(events))
	for i, e := range events {
		rows[i] = eventRow(e)
	}
	return f.out.add(rows...)
}

// followLog prints the newest events of the whole log (or of some
// types), then streams the log from there with Runner.StreamEvents.
func (f *follower) followLog(ctx context.Context) error {
	// The head is read before the backlog: every event that can still
	// come is then after one or the other.
	head, err := f.events(ctx, &cloacina.EventQuery{Follow: true, Newest: true, Limit: 1})
	if err != nil {
		return err
	}
	q := f.filter.query()
	q.Follow, q.Newest, q.Limit = true, true, f.backlog
	backlog, err := f.events(ctx, q)
	if err != nil {
		return err
	}
	slices.Reverse(backlog)
	if err := f.print(backlog); err != nil {
		return err
	}
	q = f.filter.query()
	switch {
	case len(backlog) > 0:
		q.AfterSeq = backlog[len(backlog)-1].SequenceNum
	case len(head) > 0:
		q.AfterSeq = head[0].SequenceNum
	default:
		q.Follow = true // an empty log: from its start
	}
	for e, err := range f.r.StreamEvents(ctx, q, &cloacina.StreamOpts{Interval: f.interval}) {
		if err != nil {
			return listError(err)
		}
		if err := f.print([]*cloacina.Event{e}); err != nil {
			return err
		}
	}
	return nil
}

// followRun follows the events of one run, or of one task execution, and
// ends once the run has finished and no task of it is still running: a
// cancelled run's running tasks still record how they ended. Events
// stream in commit order as in followLog; what an open transaction
// elsewhere holds back is printed before the follower ends, and none
// twice.
func (f *follower) followRun(ctx context.Context) error {
	seen := map[int64]bool{}
	unseen := func(events []*cloacina.Event) []*cloacina.Event {
		var out []*cloacina.Event
		for _, e := range events {
			if !seen[e.SequenceNum] {
				seen[e.SequenceNum] = true
				out = append(out, e)
			}
		}
		return out
	}
	// A run (or task) that run retention deleted has finished, and the
	// log may still hold its events: they are printed as for any finished
	// run. One the log does not know either is a mistaken id.
	var gone bool
	runID := f.filter.run
	if runID != nil {
		res, err := f.get(ctx, *runID)
		if err != nil {
			return err
		}
		if res == nil {
			e, err := f.logged(ctx, &cloacina.EventQuery{RunID: runID})
			if err != nil {
				return err
			}
			if e == nil {
				return runError(*runID, cloacina.ErrRunNotFound)
			}
			gone = true
		}
	} else {
		// The task's run, not its first event's: the filters may match
		// none of its events yet.
		t, err := f.getTask(ctx, *f.filter.task)
		if err != nil {
			return err
		}
		if t != nil {
			runID = &t.RunID
		} else {
			e, err := f.logged(ctx, &cloacina.EventQuery{TaskID: f.filter.task})
			if err != nil {
				return err
			}
			if e == nil {
				return fmt.Errorf("no task execution %s in this database: task ids are shown by `cloacina runs get`", *f.filter.task)
			}
			runID, gone = &e.PipelineID, true
		}
	}
	q := f.filter.query()
	q.Follow, q.Newest = true, true
	existing, err := f.events(ctx, q)
	if err != nil {
		return err
	}
	slices.Reverse(existing)
	var cursor int64
	if len(existing) > 0 {
		cursor = existing[len(existing)-1].SequenceNum
	}
	if err := f.print(unseen(existing)[max(len(existing)-f.backlog, 0):]); err != nil {
		return err
	}
	for {
		// The run is read before its events: once it has finished, every
		// event it will ever have is committed and read below.
		done := gone
		if !done {
			res, err := f.get(ctx, *runID)
			if err != nil {
				return err
			}
			// Deleted since (by run retention): it had finished.
			done = res == nil || finished(res)
		}
		q := f.filter.query()
		q.AfterSeq, q.Follow, q.Limit = cursor, cursor == 0, followPage
		page, err := f.events(ctx, q)
		if err != nil {
			return err
		}
		if len(page) > 0 {
			cursor = page[len(page)-1].SequenceNum
		}
		if err := f.print(unseen(page)); err != nil {
			return err
		}
		if f.polled != nil {
			f.polled()
		}
		if len(page) == followPage {
			continue
		}
		if done {
			// Following stops at the oldest transaction still open
			// anywhere; the rest of this run's events are committed.
			rest, err := f.events(ctx, f.filter.query())
			if err != nil {
				return err
			}
			if err := f.print(unseen(rest)); err != nil {
				return err
			}
			if !f.printed && !f.asJSON {
				_, err = fmt.Fprintln(f.w, "no events")
			}
			return err
		}
		if !readretry.Sleep(ctx, f.interval) {
			return nil
		}
	}
}

// finished reports whether a run will record no more events: it has
// ended and none of its tasks is still running or queued.
func finished(res *cloacina.ExecutionResult) bool {
	if !res.Status.Terminal() {
		return false
	}
	for _, t := range res.Tasks {
		if t.Status == cloacina.TaskStatusRunning || t.Status == cloacina.TaskStatusReady {
			return false
		}
	}
	return true
}

func listError(err error) error { return fmt.Errorf("list events: %w", err) }
