package driver

// EventSpan places a time window of the event log (EventListParams'
// CreatedFrom and CreatedBefore) among sequence numbers, as a backend
// estimates it with a few lookups: exactly where creation times grow
// with sequence numbers, roughly where they do not (clocks that step, a
// transaction that numbers its events long after it timed them). It only
// chooses how a listing reads the log; what the listing returns never
// depends on it.
type EventSpan struct {
	// First and Last are the numbers of the oldest and newest events a
	// listing may return (Last is below EventListParams.BeforeSeq).
	First, Last int64
	// From is the number of the first event created at or after the
	// window's start (First without a start), Before that of the first
	// event created at or after its end (Last+1 without an end).
	From, Before int64
}

// Bound reports whether a listing of the window in the given order and
// limit (0 for none) should first find, through the index on creation
// times, the lowest and highest numbers the window's events have, and
// then read that range of the log only: when that reads fewer events
// than a walk of the log from its newest (newest first) or oldest end,
// which skips every event outside the window until it has limit events
// or has walked the whole log (the window's end does not stop a walk).
// Bounding reads the window's events up to twice (to find the range, to
// list it), so it is chosen when the window holds less than half what the
// walk reads: for a narrow window deep in the log, or one holding fewer
// events than limit, not for a wide one that starts at the walk's end.
func (s EventSpan) Bound(newest bool, limit int) bool {
	if s.Last < s.First {
		return false // nothing to list
	}
	window := max(s.Before-s.From, 0)
	walk := s.Last + 1 - s.First
	if limit > 0 && window >= int64(limit) {
		skipped := s.From - s.First
		if newest {
			skipped = s.Last + 1 - s.Before
		}
		walk = max(skipped, 0) + int64(limit)
	}
	return 2*window < walk
}

// Windowed reports whether a listing of p may be read through its time
// window's range of sequence numbers (see EventSpan): it filters by time,
// and neither by run or task (their indexes bound the read already) nor
// follows the log. A walk of the primary key skips every event outside
// the window, as the planners take its events to be spread over the log;
// when that is more than the window holds (EventSpan.Bound), a backend
// reads the lowest and highest numbers of the events that match through
// its index on creation times, then that range only. The range is read in
// the same statement as the listing, so the result is what the time
// filter alone returns, however creation times and numbers disagree.
func (p *EventListParams) Windowed() bool {
	return (p.CreatedFrom != nil || p.CreatedBefore != nil) && p.PipelineID == nil && p.TaskID == nil && p.AfterSeq == 0
}
