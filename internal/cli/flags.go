package cli

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/internal/dag"
)

// The flag types below check their values while the command line is
// parsed, so a typo is reported before any database is opened.

// idFlag is an optional UUID flag (a run or task execution id).
type idFlag struct {
	id   *uuid.UUID
	what string
}

func (f *idFlag) String() string {
	if f.id == nil {
		return ""
	}
	return f.id.String()
}

func (f *idFlag) Set(s string) error {
	id, err := parseID(s, f.what)
	if err != nil {
		return err
	}
	f.id = &id
	return nil
}

func (f *idFlag) Type() string { return "id" }

// taskFlag is a task execution's id, or, with --run, a task's name in
// that run (as runs get --task takes it).
type taskFlag struct {
	id   *uuid.UUID
	name string
}

func (f *taskFlag) String() string {
	if f.id != nil {
		return f.id.String()
	}
	return f.name
}

func (f *taskFlag) Set(s string) error {
	s = strings.TrimSpace(s)
	if s == "" {
		return errors.New("empty task: give a task execution id, or a task name with --run")
	}
	if id, err := uuid.Parse(s); err == nil {
		f.id, f.name = &id, ""
		return nil
	}
	f.id, f.name = nil, s
	return nil
}

func (f *taskFlag) Type() string { return "id|name" }

func parseID(s, what string) (uuid.UUID, error) {
	id, err := uuid.Parse(strings.TrimSpace(s))
	if err != nil {
		return uuid.UUID{}, fmt.Errorf("%q is not a %s id: ids are UUIDs, as shown by `cloacina runs list` and `cloacina runs get`", s, what)
	}
	return id, nil
}

// choiceFlag is a repeatable flag whose values come from a fixed list;
// values may also be separated by commas.
type choiceFlag struct {
	kind    string // what a value is, for help
	allowed []string
	values  []string
}

func (f *choiceFlag) String() string { return strings.Join(f.values, ",") }

func (f *choiceFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		v = strings.ToLower(strings.TrimSpace(v))
		if !slices.Contains(f.allowed, v) {
			if c := dag.Closest(v, f.allowed); c != "" {
				return fmt.Errorf("unknown value %q: did you mean %q?", v, c)
			}
			return fmt.Errorf("unknown value %q: use one of %s", v, strings.Join(f.allowed, ", "))
		}
		f.values = append(f.values, v)
	}
	return nil
}

func (f *choiceFlag) Type() string { return f.kind }

// ageFlag is a positive duration that also accepts days: 30d, 1d12h, 90m.
type ageFlag struct {
	d   time.Duration
	raw string
}

var daysPrefix = regexp.MustCompile(`^(\d+)d`)

func (f *ageFlag) String() string { return f.raw }

func (f *ageFlag) Set(s string) error {
	d, err := parseAge(s)
	if err != nil {
		return err
	}
	f.d, f.raw = d, s
	return nil
}

func (f *ageFlag) Type() string { return "age" }

// parseAge parses a Go duration optionally led by whole days ("30d",
// "1d12h"); it must be positive.
func parseAge(s string) (time.Duration, error) {
	bad := fmt.Errorf("%q is not an age: use a positive duration such as 30d, 12h or 1d12h", s)
	rest := strings.TrimSpace(s)
	var d time.Duration
	if m := daysPrefix.FindStringSubmatch(rest); m != nil {
		days, err := strconv.Atoi(m[1])
		if err != nil || days > 100*365 {
			return 0, bad
		}
		d = time.Duration(days) * 24 * time.Hour
		rest = rest[len(m[0]):]
	}
	if rest != "" {
		more, err := time.ParseDuration(rest)
		if err != nil {
			return 0, bad
		}
		d += more
	}
	if d <= 0 {
		return 0, bad
	}
	return d, nil
}

// timeFlag is a point in time: an age before now (30d, 90m, 1d12h), or
// a time in RFC 3339 (2026-11-27T05:00:00Z) or as the tables print it
// (2026-11-27 05:00:00.000Z); a time without a zone is UTC. The age is
// resolved against now when the command runs.
type timeFlag struct {
	raw string
	age time.Duration // > 0 for an age
	at  time.Time
}

func (f *timeFlag) String() string { return f.raw }

func (f *timeFlag) Set(s string) error {
	s = strings.TrimSpace(s)
	if d, err := parseAge(s); err == nil {
		f.raw, f.age, f.at = s, d, time.Time{}
		return nil
	}
	for _, layout := range []string{time.RFC3339Nano, timeLayout, "2006-01-02 15:04:05.000", "2006-01-02 15:04:05",
		"2006-01-02T15:04:05", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			f.raw, f.age, f.at = s, 0, t
			return nil
		}
	}
	return fmt.Errorf("%q is neither an age nor a time: use an age such as 90m or 1d, or a time such as 2026-11-27T05:00:00Z", s)
}

func (f *timeFlag) Type() string { return "time" }

// time returns the flag's time, an age counted back from now; the zero
// time when the flag was not given.
func (f *timeFlag) time(now time.Time) time.Time {
	if f.age > 0 {
		return now.Add(-f.age)
	}
	return f.at
}

// atDatabaseTime resolves again, against the database's clock
// (Runner.Now), those of since and until given as ages: the times they
// are compared with were recorded by that clock, and the host's may be
// off. from and to (timeRange's) are returned when neither is an age.
func atDatabaseTime(ctx context.Context, r *cloacina.Runner, since, until *timeFlag, from, to time.Time) (time.Time, time.Time, error) {
	if since.age == 0 && until.age == 0 {
		return from, to, nil
	}
	now, err := r.Now(ctx)
	if err != nil {
		return from, to, err
	}
	return since.time(now), until.time(now), nil
}

// timeRange resolves --since and --until against now (the zero time for
// a flag not given); a range that cannot hold anything is a usage error
// that says so of what.
func timeRange(cmd *cobra.Command, since, until *timeFlag, what string) (from, to time.Time, err error) {
	now := time.Now()
	from, to = since.time(now), until.time(now)
	if !from.IsZero() && !to.IsZero() && !from.Before(to) {
		return from, to, usageErrorf(cmd, "--since %s is not before --until %s: no %s can match", since.raw, until.raw, what)
	}
	return from, to, nil
}

// countFlag is a whole number of at least 1 (a limit, a batch size).
type countFlag int

func (f *countFlag) String() string { return strconv.Itoa(int(*f)) }

func (f *countFlag) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 1 {
		return fmt.Errorf("%q is not a count: use a whole number of 1 or more", s)
	}
	*f = countFlag(n)
	return nil
}

func (f *countFlag) Type() string { return "n" }

// seqFlag is an event's sequence number (the SEQ column), at least 1; 0
// when the flag was not given.
type seqFlag int64

func (f *seqFlag) String() string {
	if *f == 0 {
		return ""
	}
	return strconv.FormatInt(int64(*f), 10)
}

func (f *seqFlag) Set(s string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 1 {
		return fmt.Errorf("%q is not a sequence number: use an event's SEQ, a whole number of 1 or more", s)
	}
	*f = seqFlag(n)
	return nil
}

func (f *seqFlag) Type() string { return "seq" }

// intervalFlag is a positive Go duration of at least a millisecond (a
// polling interval).
type intervalFlag time.Duration

func (f *intervalFlag) String() string { return time.Duration(*f).String() }

func (f *intervalFlag) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d < time.Millisecond {
		return fmt.Errorf("%q is not an interval: use a Go duration of 1ms or more, such as 500ms or 2s", s)
	}
	*f = intervalFlag(d)
	return nil
}

func (f *intervalFlag) Type() string { return "duration" }
