package cloacina

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/robfig/cron/v3"
	"github.com/stretchr/testify/require"
)

// A schedule ticks at exactly the instants whose wall-clock time in its
// zone the cron matches, whatever the zone's changes of offset: the ticks
// Next walks through are those found by stepping through every minute and
// reading the wall clock, over 2026 and 2027, and over the end of 2040. A
// wall-clock time a change skips has no tick; one it repeats has two.
// robfig/cron's own zone handling, which moves by whole hours, missed
// ticks and fired extra ones in Australia/Lord_Howe, whose shift is half
// an hour, and at Pacific/Chatham's shifts, which fall at 02:45 and 03:45.
func TestScheduleZoneTicks(t *testing.T) {
	t.Parallel()
	zones := []string{
		"Australia/Lord_Howe", // ±30 minutes, at 02:00
		"Pacific/Chatham",     // +12:45/+13:45, at 02:45 and 03:45
		"Europe/Paris",
		"America/New_York",
		"America/Santiago", // at midnight: 00:00 is skipped, 23:00 repeated
		"Asia/Kathmandu",   // +05:45, no daylight saving time
		"Asia/Tokyo",       // no daylight saving time
		"UTC",
	}
	specs := []string{
		// At and around the shift times.
		"0 2 * * *", "45 1 * * *", "15 3 * * *", "30 2 * * *", "0 3 * * *", "45 2 * * *", "15 2 * * *",
		"0 0 * * *", "30 23 * * *", "59 23 * * *",
		// Every quarter hour of the hours these zones shift in (all
		// day, every day, would be 70,000 ticks a zone: too slow under
		// -race).
		"*/15 0-3,23 * * *",
		// Days of the week and of the month (restricting both: either
		// matches).
		"15,45 1-3 * * 0", "0 9 * * 1-5", "0 2 1,15 * *", "30 0 1 * 6", "0 3 * 4,9,10 sun",
		// Seconds first.
		"30 0 2 * * *", "*/20 45 1,2 * * *", "59 59 23 * * *", "0 30 0 * 4,9 *",
		"@daily",
		// No 29 February in 2026, 2027, 2040 or 2041 (until 2044).
		"0 2 29 2 *",
	}
	spans := []struct {
		from, to time.Time
		// every is how often Next is also tried from a time that is
		// not a tick (besides around every change of offset).
		every time.Duration
	}{
		{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2028, 1, 1, 0, 0, 0, 0, time.UTC), 79*time.Hour + 13*time.Minute},
		// The end of a leap year after the zones' last listed change,
		// where Go reads the offsets from their rule strings: there
		// time.ZoneBounds gives the year's last UTC day an end before it
		// (https://go.dev/issue/81583), which once stalled Next.
		{time.Date(2040, 12, 24, 0, 0, 0, 0, time.UTC), time.Date(2041, 1, 8, 0, 0, 0, 0, time.UTC), 2*time.Hour + 13*time.Minute},
	}
	for _, zone := range zones {
		t.Run(zone, func(t *testing.T) {
			t.Parallel()
			loc, err := time.LoadLocation(zone)
			require.NoError(t, err)
			for _, span := range spans {
				from, to := span.from, span.to
				walls, changes := wallMinutes(t, loc, from, to)
				samples := sampleTimes(loc, from, to, span.every, changes)
				for _, spec := range specs {
					fields, err := cronParser.Parse(spec)
					require.NoError(t, err)
					want := wallTicks(fields.(*cron.SpecSchedule), walls, from)
					s := mustCron(t, spec, zone)

					// Ticks are compared as Unix seconds, which sort and
					// compare faster than time.Times under -race.
					var got []int64
					for at := from.Add(-time.Nanosecond); ; {
						next := s.Next(at)
						if next.IsZero() || !next.Before(to) {
							break
						}
						if !next.After(at) || next.Nanosecond() != 0 {
							t.Fatalf("%s in %s: Next(%s) is %s, not a whole second after it", spec, zone, at, next)
						}
						got = append(got, next.Unix())
						at = next
					}
					missing, extra := tickDiff(want, got)
					require.Empty(t, showTicks(missing, loc), "%s in %s: ticks missed (of %d)", spec, zone, len(want))
					require.Empty(t, showTicks(extra, loc), "%s in %s: ticks fired that are not (of %d)", spec, zone, len(want))

					// Next from times that are not ticks, in the zone's
					// location, which the result keeps. (Checked without
					// require in the loop, whose Helper calls would take
					// most of the time.)
					for _, at := range samples {
						// The first tick after at, which is not a whole
						// second.
						i, _ := slices.BinarySearch(want, at.Unix()+1)
						next := s.Next(at)
						switch {
						case i == len(want) && next.Before(to):
							t.Fatalf("%s in %s: Next(%s) is %s; want none before %s", spec, zone, at, next, to)
						case i < len(want) && (next.Unix() != want[i] || next.Nanosecond() != 0 || next.Location() != loc):
							t.Fatalf("%s in %s: Next(%s) is %s; want %s", spec, zone, at, next, time.Unix(want[i], 0).In(loc))
						}
					}
				}
			}
		})
	}
}

// wallMinute is a minute of UTC and the date its wall clock shows in a
// zone.
type wallMinute struct {
	// minute is the number of minutes after the start of the span.
	minute            int32
	month, day, wdays uint8
}

// wallMinutes steps through every minute from from to to and files it by
// the time of day its wall clock shows in loc (hour*60+minute): the
// minutes of each time of day, in order. The wall clock is the minute
// plus the offset loc gives it. It also returns the minutes at which the
// offset changes.
func wallMinutes(t *testing.T, loc *time.Location, from, to time.Time) (*[24 * 60][]wallMinute, []time.Time) {
	var walls [24 * 60][]wallMinute
	// Each time of day falls about once a day, twice on the day a change
	// of offset repeats it.
	days := int(to.Sub(from)/(24*time.Hour)) + 2
	for i := range walls {
		walls[i] = make([]wallMinute, 0, days)
	}
	var changes []time.Time
	var date wallMinute
	day, last := int64(-1), 0
	for at, i := from, int32(0); at.Before(to); at, i = at.Add(time.Minute), i+1 {
		_, off := at.In(loc).Zone()
		// Every offset of these zones in these years is whole minutes:
		// a wall-clock minute starts at a UTC minute.
		if off%60 != 0 {
			t.Fatalf("%s: offset of %d seconds at %s", loc, off, at)
		}
		if i > 0 && off != last {
			changes = append(changes, at)
		}
		last = off
		wall := at.Unix()/60 + int64(off/60)
		if wall/(24*60) != day {
			day = wall / (24 * 60)
			d := time.Unix(day*24*60*60, 0).UTC()
			date = wallMinute{month: uint8(d.Month()), day: uint8(d.Day()), wdays: uint8(d.Weekday())}
		}
		date.minute = i
		walls[wall%(24*60)] = append(walls[wall%(24*60)], date)
	}
	return &walls, changes
}

// cronStar is the bit robfig/cron sets in a field written "*" (or "?"): a
// day of the month and a day of the week both restricted match when
// either does, and otherwise when both do.
const cronStar = 1 << 63

// wallTicks returns the instants (Unix seconds), in order, whose
// wall-clock time walls shows matches the fields of spec.
func wallTicks(spec *cron.SpecSchedule, walls *[24 * 60][]wallMinute, from time.Time) []int64 {
	bit := func(field uint64, v uint8) bool { return field&(1<<v) != 0 }
	var ticks []int64
	for hour := range uint8(24) {
		for minute := range uint8(60) {
			if !bit(spec.Hour, hour) || !bit(spec.Minute, minute) {
				continue
			}
			for _, w := range walls[int(hour)*60+int(minute)] {
				dom, dow := bit(spec.Dom, w.day), bit(spec.Dow, w.wdays)
				day := dom && dow
				if spec.Dom&cronStar == 0 && spec.Dow&cronStar == 0 {
					day = dom || dow
				}
				if !bit(spec.Month, w.month) || !day {
					continue
				}
				for second := range uint8(60) {
					if bit(spec.Second, second) {
						ticks = append(ticks, from.Unix()+int64(w.minute)*60+int64(second))
					}
				}
			}
		}
	}
	slices.Sort(ticks)
	return ticks
}

// sampleTimes returns times from from to to in loc, not on whole seconds:
// one each every, and every 10 minutes in the two hours either side of
// each change of offset (a nanosecond before, and half a second after).
func sampleTimes(loc *time.Location, from, to time.Time, every time.Duration, changes []time.Time) []time.Time {
	var out []time.Time
	for at := from.Add(250 * time.Millisecond); at.Before(to); at = at.Add(every) {
		out = append(out, at.In(loc))
	}
	for _, change := range changes {
		for d := -2 * time.Hour; d <= 2*time.Hour; d += 10 * time.Minute {
			out = append(out, change.Add(d-time.Nanosecond).In(loc), change.Add(d+500*time.Millisecond).In(loc))
		}
	}
	return out
}

// tickDiff returns the ticks of want that got lacks, and those of got
// that want lacks; both are in order.
func tickDiff(want, got []int64) (missing, extra []int64) {
	for len(want) > 0 || len(got) > 0 {
		switch {
		case len(got) == 0 || len(want) > 0 && want[0] < got[0]:
			missing, want = append(missing, want[0]), want[1:]
		case len(want) == 0 || got[0] < want[0]:
			extra, got = append(extra, got[0]), got[1:]
		default:
			want, got = want[1:], got[1:]
		}
	}
	return missing, extra
}

// showTicks formats the first few ticks in loc, and says how many more.
func showTicks(ticks []int64, loc *time.Location) []string {
	var out []string
	for i, at := range ticks {
		if i == 5 {
			out = append(out, fmt.Sprintf("and %d more", len(ticks)-i))
			break
		}
		out = append(out, time.Unix(at, 0).In(loc).Format("2006-01-02 15:04:05 -0700 MST"))
	}
	return out
}
