package cloacina

import (
	"time"

	"github.com/robfig/cron/v3"
)

// zonedSchedule is a cron specification read in a time zone: its ticks are
// the instants whose wall-clock time in loc the specification matches. A
// wall-clock time that a change of offset skips has no such instant, and
// one it repeats has two, each a tick.
//
// robfig/cron's SpecSchedule, given the zone as its Location, moves
// through the zone's instants by whole hours, which is right only where
// the offset changes by whole hours at whole hours: in Australia/Lord_Howe
// (half an hour) and at Pacific/Chatham's changes (at 02:45 and 03:45) it
// missed ticks, fired some that are not, and could return a time before
// the one it was given. Here robfig/cron only matches the fields, in
// wall-clock time (its Location is UTC, which has no changes of offset, so
// it reads a wall-clock time as if it were UTC), and the zone's offsets
// are applied to its ticks, one period of constant offset at a time.
type zonedSchedule struct {
	// wall is the specification read in UTC: its ticks are wall-clock
	// times, as time.Times whose fields are those of the wall clock.
	wall *cron.SpecSchedule
	loc  *time.Location
}

// zonedSearchLimit bounds how far after t Next looks through the zone's
// periods for a wall-clock tick that is not skipped: robfig/cron gives up
// on a specification after about five years, and so does this.
const zonedSearchLimit = 5 * 366 * 24 * time.Hour

// newZonedSchedule reads spec in loc; spec's own Location is overwritten.
func newZonedSchedule(spec *cron.SpecSchedule, loc *time.Location) *zonedSchedule {
	spec.Location = time.UTC
	return &zonedSchedule{wall: spec, loc: loc}
}

// Next returns the first tick after t, in t's location, or the zero time
// when there is none in about five years (as robfig/cron's Next does).
//
// The zone's instants fall in periods of constant offset, in each of which
// an instant's wall-clock time is the instant plus the offset, and rises
// with it. The first tick of a period after an instant is therefore
// robfig/cron's first wall-clock tick after that instant's wall-clock
// time, less the offset, if that falls before the period's end; if not,
// the period has none. Next searches the periods in order from t's, so the
// first tick it finds is the earliest. A wall-clock time that a change of
// offset skips falls in no period, and one it repeats in two: the periods'
// bounds decide, and no bound on the size of a change is assumed. The
// search stops at a period that starts more than zonedSearchLimit after t
// (a cron whose every wall-clock tick falls where a change skips, year
// after year, has no tick).
func (z *zonedSchedule) Next(t time.Time) time.Time {
	limit := t.Add(zonedSearchLimit)
	// In each period (the one in falls in), ticks are searched after the
	// instant after: t in the first, the instant before the period's start
	// in the others.
	in, after := t.In(z.loc), t
	for {
		_, off := in.Zone()
		end := zoneEnd(in)
		offset := time.Duration(off) * time.Second
		w := z.wall.Next(after.UTC().Add(offset))
		if w.IsZero() {
			return time.Time{}
		}
		if at := w.Add(-offset); end.IsZero() || at.Before(end) {
			return at.In(t.Location())
		}
		if end.After(limit) {
			return time.Time{}
		}
		in, after = end, end.Add(-time.Nanosecond)
	}
}

// zoneEnd returns the end of the period of constant offset that t (a time
// in the zone) falls in, as time.ZoneBounds does, or the zero time when
// the offset never changes. An end may be no change at all (Go ends
// periods at each new year where a zone's rule string, not its list of
// changes, gives its offsets).
//
// For the last UTC day of a leap year read by the rule string,
// ZoneBounds returns an end before t, a day before the year's end
// (https://go.dev/issue/81583): 2028 already with Go's own zone database
// (time/tzdata, $GOROOT/lib/time), which lists few future changes, and
// 2040 with system zone files that list them up to 2037. Next would then
// search that period for ever; the year's end, which ZoneBounds means,
// is returned instead.
func zoneEnd(t time.Time) time.Time {
	_, end := t.ZoneBounds()
	if end.IsZero() || end.After(t) {
		return end
	}
	return time.Date(t.UTC().Year()+1, time.January, 1, 0, 0, 0, 0, time.UTC).In(t.Location())
}
