package cloacina

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/robfig/cron/v3"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

func mustCron(t *testing.T, spec, tz string) cron.Schedule {
	t.Helper()
	s, err := parseCron(spec, tz)
	require.NoError(t, err)
	return s
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

// dueTicks decides which ticks fire: the newest one late (latest), every
// one (all, capped per transaction), none older than MaxLateness.
func TestDueTicks(t *testing.T) {
	t.Parallel()
	hourly := mustCron(t, "0 * * * *", "UTC")
	now := utc("2026-05-01T13:30:00Z")
	for _, tc := range []struct {
		name    string
		next    time.Time
		catchUp CatchUp
		maxLate time.Duration
		want    []string
		after   string
	}{
		{"not due yet", utc("2026-05-01T14:00:00Z"), CatchUpLatest, 0, nil, "2026-05-01T14:00:00Z"},
		// A due tick that is not one of the cron's (from an earlier
		// definition) still fires.
		{"due exactly now", now, CatchUpAll, 0, []string{"2026-05-01T13:30:00Z"}, "2026-05-01T14:00:00Z"},
		{"latest of four late", utc("2026-05-01T10:00:00Z"), CatchUpLatest, 0, []string{"2026-05-01T13:00:00Z"}, "2026-05-01T14:00:00Z"},
		{"all four late", utc("2026-05-01T10:00:00Z"), CatchUpAll, 0,
			[]string{"2026-05-01T10:00:00Z", "2026-05-01T11:00:00Z", "2026-05-01T12:00:00Z", "2026-05-01T13:00:00Z"}, "2026-05-01T14:00:00Z"},
		{"latest within lateness", utc("2026-05-01T10:00:00Z"), CatchUpLatest, 45 * time.Minute, []string{"2026-05-01T13:00:00Z"}, "2026-05-01T14:00:00Z"},
		{"latest too late", utc("2026-05-01T10:00:00Z"), CatchUpLatest, 20 * time.Minute, nil, "2026-05-01T14:00:00Z"},
		{"all within lateness", utc("2026-05-01T10:00:00Z"), CatchUpAll, 2 * time.Hour,
			[]string{"2026-05-01T12:00:00Z", "2026-05-01T13:00:00Z"}, "2026-05-01T14:00:00Z"},
		{"all too late", utc("2026-05-01T10:00:00Z"), CatchUpAll, time.Minute, nil, "2026-05-01T14:00:00Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fire, after := dueTicks(hourly, tc.next, now, tc.catchUp, tc.maxLate)
			var got []string
			for _, f := range fire {
				got = append(got, f.UTC().Format(time.RFC3339))
			}
			require.Equal(t, tc.want, got)
			require.Equal(t, utc(tc.after), after.UTC())
		})
	}

	t.Run("all is capped per transaction", func(t *testing.T) {
		everySecond := mustCron(t, "* * * * * *", "UTC")
		next := now.Add(-time.Hour)
		fire, after := dueTicks(everySecond, next, now, CatchUpAll, 0)
		require.Len(t, fire, maxCatchUpTicks)
		require.Equal(t, next, fire[0])
		require.Equal(t, next.Add(maxCatchUpTicks*time.Second), after, "the rest are due at once")
	})

	t.Run("latest does not walk a year of seconds", func(t *testing.T) {
		everySecond := mustCron(t, "* * * * * *", "UTC")
		fire, after := dueTicks(everySecond, now.AddDate(-1, 0, 0), now.Add(500*time.Millisecond), CatchUpLatest, 0)
		require.Equal(t, []time.Time{now}, fire)
		require.Equal(t, now.Add(time.Second), after)
	})

	t.Run("intervals count from the previous tick", func(t *testing.T) {
		every := mustCron(t, "@every 90m", "UTC")
		next := utc("2026-05-01T09:10:00Z")
		fire, after := dueTicks(every, next, now, CatchUpAll, 0)
		require.Equal(t, []time.Time{next, next.Add(90 * time.Minute), next.Add(3 * time.Hour)}, fire)
		require.Equal(t, next.Add(270*time.Minute), after)
	})

	t.Run("a spec that stops ticking ends the walk", func(t *testing.T) {
		last := utc("2026-05-01T12:00:00Z")
		for _, catchUp := range []CatchUp{CatchUpLatest, CatchUpAll} {
			fire, after := dueTicks(stopsTicking{last}, utc("2026-05-01T11:00:00Z"), now, catchUp, 0)
			require.NotEmpty(t, fire, catchUp)
			require.Equal(t, last, fire[len(fire)-1], catchUp)
			require.True(t, after.IsZero(), "no tick after: %s", after)
			fire, after = dueTicks(stopsTicking{last}, utc("2026-05-01T11:00:00Z"), now, catchUp, time.Minute)
			require.Empty(t, fire, "every tick too late, and none after: %s", catchUp)
			require.True(t, after.IsZero())
		}
	})

	t.Run("time zones follow daylight saving time", func(t *testing.T) {
		paris := mustCron(t, "0 9 * * *", "Europe/Paris")
		require.Equal(t, utc("2026-01-15T08:00:00Z"), paris.Next(utc("2026-01-15T00:00:00Z")).UTC(), "CET is UTC+1")
		require.Equal(t, utc("2026-07-15T07:00:00Z"), paris.Next(utc("2026-07-15T00:00:00Z")).UTC(), "CEST is UTC+2")
	})
}

// stopsTicking ticks every hour until last, then never (Next returns the
// zero time, as robfig/cron's does for a date that does not come).
type stopsTicking struct{ last time.Time }

func (s stopsTicking) Next(t time.Time) time.Time {
	n := t.Truncate(time.Hour).Add(time.Hour)
	if n.After(s.last) {
		return time.Time{}
	}
	return n
}

// Bad schedules fail Open with a message that names the fix, before
// anything is stored.
func TestScheduleValidation(t *testing.T) {
	t.Parallel()
	url := testdb.SQLiteURL(t)
	wf := MustWorkflow("report", Task{Name: "a", Run: ok})
	good := Schedule{Name: "nightly", Workflow: "report", Cron: "0 3 * * *"}
	with := func(f func(s *Schedule)) Schedule {
		s := good
		f(&s)
		return s
	}
	paris, err := time.LoadLocation("Europe/Paris")
	require.NoError(t, err)
	for _, tc := range []struct {
		name      string
		schedules []Schedule
		msg       string
	}{
		{"no name", []Schedule{with(func(s *Schedule) { s.Name = " " })}, "Name is empty: give the schedule a name"},
		{"duplicate", []Schedule{good, good}, "another schedule has this Name: names must be unique"},
		{"NUL in the name", []Schedule{with(func(s *Schedule) { s.Name = "nightly\x00" })}, "Name contains a NUL character (\\x00), which PostgreSQL cannot store: use UTF-8 text"},
		{"name too long", []Schedule{with(func(s *Schedule) { s.Name = strings.Repeat("n", 2000) })}, "Name is 2000 bytes long: use a name of at most 1024 bytes"},
		{"no workflow", []Schedule{with(func(s *Schedule) { s.Workflow = "" })}, "Workflow is empty"},
		{"unknown workflow", []Schedule{with(func(s *Schedule) { s.Workflow = "reprot" })}, `did you mean "report"?`},
		{"bad cron", []Schedule{with(func(s *Schedule) { s.Cron = "0 3 * *" })}, `cron "0 3 * *": expected 5 to 6 fields`},
		{"bad cron fix", []Schedule{with(func(s *Schedule) { s.Cron = "every day" })}, `write five fields (minute hour day-of-month month day-of-week`},
		{"zone in cron", []Schedule{with(func(s *Schedule) { s.Cron = "CRON_TZ=Europe/Paris 0 3 * * *" })}, "set Schedule.Location instead"},
		{"local zone", []Schedule{with(func(s *Schedule) { s.Location = time.Local })}, `name the zone, as time.LoadLocation("Europe/Paris")`},
		{"catch-up", []Schedule{with(func(s *Schedule) { s.CatchUp = "some" })}, `CatchUp "some" is unknown: use CatchUpLatest or CatchUpAll`},
		{"lateness", []Schedule{with(func(s *Schedule) { s.MaxLateness = -time.Second })}, "MaxLateness -1s is negative: use 0 for no limit"},
		{"overlap", []Schedule{with(func(s *Schedule) { s.Overlap = "queue" })}, `Overlap "queue" is unknown: use OverlapAllow or OverlapSkip`},
		{"never ticks", []Schedule{with(func(s *Schedule) { s.Cron = "0 0 30 2 *" })}, `cron "0 0 30 2 *" never ticks (no such date in the next five years)`},
		{"sub-second interval", []Schedule{with(func(s *Schedule) { s.Cron = "@every 500ms" })}, "an interval must be a whole number of seconds, at least 1s"},
		{"fractional interval", []Schedule{with(func(s *Schedule) { s.Cron = "@every 1500ms" })}, "an interval must be a whole number of seconds"},
		{"fixed zone", []Schedule{with(func(s *Schedule) { s.Location = time.FixedZone("UTC+1", 3600) })}, `use an IANA zone, as time.LoadLocation("Europe/Paris") returns`},
		// Fixed zones whose names load, as another zone: UTC, each
		// machine's own, Paris's summer offset.
		{"fixed zone named empty", []Schedule{with(func(s *Schedule) { s.Location = time.FixedZone("", 3600) })},
			`Location "" is not the zone its name loads (a time.FixedZone?)`},
		{"fixed zone named Local", []Schedule{with(func(s *Schedule) { s.Location = time.FixedZone("Local", 0) })},
			`Location is named "Local", which runners read as their machine's own zone`},
		{"fixed zone named like an IANA zone", []Schedule{with(func(s *Schedule) { s.Location = time.FixedZone("Europe/Paris", 3600) })},
			`Location "Europe/Paris" is not the zone its name loads`},
		{"reserved input", []Schedule{with(func(s *Schedule) {
			s.Input = NewContext()
			require.NoError(t, s.Input.Set("scheduled_at", 1))
		})}, `Input sets "scheduled_at", which each run gets from its tick`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Open(testContext(t), url, &Config{Workflows: []*Workflow{wf}, Schedules: tc.schedules, Logger: quietLogger()})
			require.ErrorContains(t, err, tc.msg)
			require.ErrorContains(t, err, "cloacina: Config.Schedules[")
		})
	}
	r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, Schedules: []Schedule{with(func(s *Schedule) { s.Location = paris })}})
	got, err := r.Schedules(testContext(t))
	require.NoError(t, err)
	require.Empty(t, got, "nothing is stored before Start")
}

// waitCommits calls cond after every commit of the runners until it holds,
// and fails the test at the deadline: a wait on a signal, not a sleep.
func waitCommits(t *testing.T, what string, cond func() bool, runners ...*Runner) {
	t.Helper()
	ch := make(chan struct{}, 1)
	for _, r := range runners {
		hook := func(*changes) {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		r.commitHook.Store(&hook)
	}
	deadline := time.After(testTimeout)
	for !cond() {
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func scheduleTicks(t *testing.T, r *Runner, name string) []ScheduleTick {
	t.Helper()
	ticks, err := r.ScheduleTicks(testContext(t), name, 1000)
	require.NoError(t, err)
	return ticks
}

// A started runner fires a schedule every tick; each run gets the
// schedule's input plus its name and tick, which ScheduledAt reads.
func TestScheduleFiresEveryTick(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		type seen struct {
			at    time.Time
			name  string
			color string
		}
		got := make(chan seen, 100)
		wf := MustWorkflow("tick", Task{Name: "a", Run: func(_ context.Context, tc *Context) error {
			at, name, ok := ScheduledAt(tc)
			if !ok {
				return Permanent(errString("no tick in the input"))
			}
			color, _ := Get[string](tc, "color")
			got <- seen{at, name, color}
			return nil
		}})
		input := NewContext()
		require.NoError(t, input.Set("color", "blue"))
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, Schedules: []Schedule{
			{Name: "every-second", Workflow: "tick", Cron: "* * * * * *", Input: input, CatchUp: CatchUpAll},
		}})
		// Three runs' tasks ran (so three ticks fired); then nothing more
		// is claimed.
		for range 3 {
			s := waitFor(t, got, "a task of a scheduled run")
			require.Equal(t, "every-second", s.name)
			require.Equal(t, "blue", s.color)
		}
		require.NoError(t, r.Stop(ctx))

		ticks := scheduleTicks(t, r, "every-second")
		slices.Reverse(ticks)
		for i, tk := range ticks {
			require.Equal(t, "every-second", tk.Schedule)
			require.Zero(t, tk.At.Nanosecond(), "ticks are whole seconds")
			if i > 0 {
				require.Equal(t, ticks[i-1].At.Add(time.Second), tk.At, "no tick missed or fired twice")
			}
			res, err := r.Get(ctx, tk.RunID)
			require.NoError(t, err)
			require.Equal(t, "tick", res.Workflow)
			at, name, ok := ScheduledAt(res.Input)
			require.True(t, ok)
			require.Equal(t, tk.At, at.UTC())
			require.Equal(t, "every-second", name)
			require.False(t, tk.FiredAt.Before(tk.At), "a tick fires at its time, not before")
		}
		require.GreaterOrEqual(t, len(ticks), 3)
		infos, err := r.Schedules(ctx)
		require.NoError(t, err)
		require.Len(t, infos, 1)
		info := infos[0]
		require.Equal(t, int64(len(ticks)), info.Fired)
		require.Equal(t, ticks[len(ticks)-1].At, *info.LastTickAt)
		require.Equal(t, ticks[len(ticks)-1].RunID, *info.LastRunID)
		require.True(t, info.NextFireAt.After(*info.LastTickAt))
		require.Equal(t, "UTC", info.Timezone)
		require.Equal(t, CatchUpAll, info.CatchUp)
		require.Equal(t, `{"color":"blue"}`, info.Input.String())
	})
}

type errString string

func (e errString) Error() string { return string(e) }

// Several runners declaring one schedule fire each tick once between
// them.
func TestScheduleFiresOnceAcrossRunners(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("shared", Task{Name: "a", Run: ok})
		cfg := &Config{Workflows: []*Workflow{wf}, Schedules: []Schedule{
			{Name: "s", Workflow: "shared", Cron: "* * * * * *", CatchUp: CatchUpAll},
		}}
		var runners []*Runner
		for range 3 {
			runners = append(runners, startRunner(t, url, cfg))
		}
		r := runners[0]
		waitCommits(t, "four ticks", func() bool { return len(scheduleTicks(t, r, "s")) >= 4 }, runners...)
		for _, x := range runners {
			require.NoError(t, x.Stop(ctx))
		}
		ticks := scheduleTicks(t, r, "s")
		runs, err := r.List(ctx, &ListOpts{Workflow: "shared", Limit: 1000})
		require.NoError(t, err)
		require.Len(t, runs, len(ticks), "one run per tick, and no run without one")
		byRun := map[string]bool{}
		for i, tk := range ticks {
			byRun[tk.RunID.String()] = true
			if i > 0 {
				require.Equal(t, ticks[i-1].At.Add(-time.Second), tk.At, "consecutive ticks, each once")
			}
		}
		for _, run := range runs {
			require.True(t, byRun[run.ID.String()], "run %s has a tick", run.ID)
		}
	})
}

// pastSchedule opens (without starting) a runner declaring s, and stores
// s as a runner that last ran long ago left it: next tick at next.
func pastSchedule(t *testing.T, url string, wf *Workflow, s Schedule, next time.Time) *Runner {
	t.Helper()
	r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, Schedules: []Schedule{s}})
	def := r.schedules[s.Name].def
	def.NextFireAt = next
	_, err := r.withTx(testContext(t), 1, func(ctx context.Context, tx driver.Tx, c *changes) error {
		return tx.ScheduleSync(ctx, &driver.ScheduleSyncParams{Schedules: []driver.ScheduleDef{def}, Now: c.now})
	})
	require.NoError(t, err)
	return r
}

// Ticks that passed while no runner ran fire by the catch-up policy when
// a runner starts: the latest, all of them, or none too late.
func TestScheduleCatchUp(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("late", Task{Name: "a", Run: ok})
		base := time.Now().UTC().Truncate(time.Second)
		first := base.Add(-150 * time.Minute) // ticks at -2h30, -1h30, -0h30
		want := []time.Time{first, first.Add(time.Hour), first.Add(2 * time.Hour)}
		for _, tc := range []struct {
			name    string
			catchUp CatchUp
			maxLate time.Duration
			fired   []time.Time
		}{
			{"latest", CatchUpLatest, 0, want[2:]},
			{"all", CatchUpAll, 0, want},
			{"all within two hours", CatchUpAll, 2 * time.Hour, want[1:]},
			{"latest too late", CatchUpLatest, 10 * time.Minute, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := testContext(t)
				s := Schedule{Name: "catch-" + string(tc.catchUp) + tc.maxLate.String(), Workflow: "late", Cron: "@every 1h",
					CatchUp: tc.catchUp, MaxLateness: tc.maxLate}
				r := pastSchedule(t, url, wf, s, first)
				require.NoError(t, r.Start(ctx))
				waitCommits(t, "the late ticks to fire", func() bool {
					return findSchedule(t, r, s.Name).NextFireAt.After(base)
				}, r)
				require.NoError(t, r.Stop(ctx))
				var fired []time.Time
				for _, tk := range scheduleTicks(t, r, s.Name) {
					fired = append(fired, tk.At)
				}
				slices.SortFunc(fired, time.Time.Compare)
				require.Equal(t, tc.fired, fired)
				require.Equal(t, base.Add(30*time.Minute), findSchedule(t, r, s.Name).NextFireAt, "the next tick is the one after now")
			})
		}
	})
}

func findSchedule(t *testing.T, r *Runner, name string) ScheduleInfo {
	t.Helper()
	infos, err := r.Schedules(testContext(t))
	require.NoError(t, err)
	for _, s := range infos {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no schedule %q", name)
	panic("unreachable")
}

// A paused schedule does not fire, across restarts, until resumed; resumed,
// it fires from its next tick after now, not the ones it missed.
func TestSchedulePauseResumeDelete(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("p", Task{Name: "a", Run: ok})
		s := Schedule{Name: "yearly", Workflow: "p", Cron: "0 0 1 1 *"}
		r := pastSchedule(t, url, wf, s, time.Now().UTC().Add(-time.Hour).Truncate(time.Second))

		require.NoError(t, r.PauseSchedule(ctx, "yearly"))
		require.True(t, findSchedule(t, r, "yearly").Paused)
		require.NoError(t, r.syncSchedules(ctx), "a restarting runner keeps it paused")
		require.True(t, findSchedule(t, r, "yearly").Paused)
		require.Equal(t, fireLocked, r.fireSchedule(ctx, "yearly"), "not due while paused")
		require.Empty(t, scheduleTicks(t, r, "yearly"), "a paused schedule does not fire, though due")

		require.NoError(t, r.ResumeSchedule(ctx, "yearly"))
		info := findSchedule(t, r, "yearly")
		require.False(t, info.Paused)
		require.Equal(t, time.Date(time.Now().UTC().Year()+1, 1, 1, 0, 0, 0, 0, time.UTC), info.NextFireAt,
			"resumed from the next tick after now")
		require.Equal(t, fireLocked, r.fireSchedule(ctx, "yearly"), "not due")
		require.Empty(t, scheduleTicks(t, r, "yearly"), "the tick missed while paused does not fire")
		require.NoError(t, r.ResumeSchedule(ctx, "yearly"), "resuming an active schedule does nothing")
		require.Equal(t, info.NextFireAt, findSchedule(t, r, "yearly").NextFireAt)

		err := r.PauseSchedule(ctx, "yearyl")
		require.ErrorIs(t, err, ErrScheduleNotFound)
		require.ErrorContains(t, err, `did you mean "yearly"?`)
		_, err = r.ScheduleTicks(ctx, "nope", 1)
		require.ErrorIs(t, err, ErrScheduleNotFound)
		require.ErrorIs(t, r.ResumeSchedule(ctx, "nope"), ErrScheduleNotFound)

		require.NoError(t, r.DeleteSchedule(ctx, "yearly"))
		infos, err := r.Schedules(ctx)
		require.NoError(t, err)
		require.Empty(t, infos)
		require.ErrorIs(t, r.DeleteSchedule(ctx, "yearly"), ErrScheduleNotFound)
	})
}

// A runner that declares a schedule with other timing stores it, and the
// schedule starts over from the next tick of the new timing.
func TestScheduleRedefined(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("r", Task{Name: "a", Run: ok})
		old := Schedule{Name: "s", Workflow: "r", Cron: "0 0 1 1 *"}
		r := pastSchedule(t, url, wf, old, time.Now().UTC().Add(-time.Hour).Truncate(time.Second))

		tokyo, err := time.LoadLocation("Asia/Tokyo")
		require.NoError(t, err)
		input := NewContext()
		require.NoError(t, input.Set("v", 2))
		r2 := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, Schedules: []Schedule{
			{Name: "s", Workflow: "r", Cron: "0 9 * * *", Location: tokyo, Input: input, CatchUp: CatchUpAll, MaxLateness: time.Hour},
		}})
		require.NoError(t, r2.syncSchedules(ctx))
		info := findSchedule(t, r, "s")
		require.Equal(t, "0 9 * * *", info.Cron)
		require.Equal(t, "Asia/Tokyo", info.Timezone)
		require.Equal(t, `{"v":2}`, info.Input.String())
		require.Equal(t, CatchUpAll, info.CatchUp)
		require.Equal(t, time.Hour, info.MaxLateness)
		require.True(t, info.NextFireAt.After(time.Now()), "not the old, missed tick")
		require.Equal(t, 9, info.NextFireAt.In(tokyo).Hour())
		require.Equal(t, 0, info.NextFireAt.In(tokyo).Minute())
	})
}

// With OverlapSkip a tick that falls while the schedule's last run is
// unfinished starts no run and is recorded as skipped, naming that run;
// once it ends, the next tick fires again.
func TestScheduleOverlapSkip(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		release := make(chan struct{})
		wf := MustWorkflow("slow", Task{Name: "a", Run: func(ctx context.Context, _ *Context) error {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, Schedules: []Schedule{
			{Name: "s", Workflow: "slow", Cron: "* * * * * *", Overlap: OverlapSkip},
		}})
		waitCommits(t, "two ticks skipped behind the first run", func() bool {
			return findSchedule(t, r, "s").Skipped >= 2
		}, r)
		close(release)
		waitCommits(t, "a second run once the first ended", func() bool {
			return findSchedule(t, r, "s").Fired >= 2
		}, r)
		require.NoError(t, r.Stop(ctx))

		ticks := scheduleTicks(t, r, "s")
		slices.Reverse(ticks)
		first := ticks[0]
		require.NotEqual(t, uuid.Nil, first.RunID)
		require.Empty(t, first.Skipped)
		var skipped, fired int
		for _, tk := range ticks[1:] {
			if tk.Skipped != "" {
				require.Zero(t, fired, "no tick is skipped after the first run ended and another fired")
				require.Equal(t, uuid.Nil, tk.RunID)
				require.Equal(t, "run "+first.RunID.String()+" of the schedule is unfinished (OverlapSkip)", tk.Skipped)
				skipped++
				continue
			}
			fired++
		}
		require.GreaterOrEqual(t, skipped, 2)
		require.GreaterOrEqual(t, fired, 1)
		info := findSchedule(t, r, "s")
		require.Equal(t, int64(skipped), info.Skipped)
		require.Equal(t, int64(fired+1), info.Fired)
		require.Equal(t, OverlapSkip, info.Overlap)
		runs, err := r.List(ctx, &ListOpts{Workflow: "slow", Limit: 1000})
		require.NoError(t, err)
		require.Len(t, runs, fired+1, "a skipped tick starts no run")
	})
}

// A cancelled run whose task has not returned yet still holds back an
// OverlapSkip schedule: its task still runs, and the next run would
// overlap it. Ticks used to fire as soon as the run was cancelled.
func TestScheduleOverlapSkipWaitsForACancelledRunsTask(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started, release := make(chan struct{}, 8), make(chan struct{})
		wf := MustWorkflow("stubborn", Task{Name: "a", Run: func(context.Context, *Context) error {
			started <- struct{}{}
			<-release // ignores the cancel
			return nil
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, Schedules: []Schedule{
			{Name: "s", Workflow: "stubborn", Cron: "* * * * * *", Overlap: OverlapSkip},
		}})
		var once sync.Once
		unblock := func() { once.Do(func() { close(release) }) }
		t.Cleanup(unblock) // before the runner's Close
		waitFor(t, started, "the first run's task to start")
		first := *findSchedule(t, r, "s").LastRunID
		require.NoError(t, r.Cancel(ctx, first))
		skippedBefore := findSchedule(t, r, "s").Skipped
		waitCommits(t, "two ticks skipped behind the cancelled run", func() bool {
			return findSchedule(t, r, "s").Skipped >= skippedBefore+2
		}, r)
		require.Equal(t, first, *findSchedule(t, r, "s").LastRunID, "no run started while its task ran")
		require.Empty(t, started, "no second task ran beside the first")
		unblock()
		waitCommits(t, "a run once the cancelled run's task returned", func() bool {
			return findSchedule(t, r, "s").Fired >= 2
		}, r)
		for _, tk := range scheduleTicks(t, r, "s") {
			if tk.Skipped != "" {
				require.Equal(t, "run "+first.String()+" of the schedule is unfinished (OverlapSkip)", tk.Skipped)
			}
		}
	})
}

// A schedule this runner cannot fire (stored by another version of the
// code, with a workflow this runner does not have) stays due for runners
// that can, and holds back none of this runner's other schedules.
func TestScheduleThatCannotFireHoldsBackNoOther(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("w", Task{Name: "a", Run: ok})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}, Schedules: []Schedule{
			{Name: "bad", Workflow: "w", Cron: "0 0 1 1 *"},
			{Name: "good", Workflow: "w", Cron: "* * * * * *"},
		}})
		// Another deploy stores "bad" with a workflow this runner lacks,
		// due an hour ago.
		due := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
		def := r.schedules["bad"].def
		def.WorkflowName, def.Cron, def.NextFireAt = "elsewhere", "@every 1h", due
		_, err := r.withTx(ctx, 1, func(ctx context.Context, tx driver.Tx, c *changes) error {
			return tx.ScheduleSync(ctx, &driver.ScheduleSyncParams{Schedules: []driver.ScheduleDef{def}, Now: c.now})
		})
		require.NoError(t, err)
		r.wakeSchedules()

		waitCommits(t, "two ticks of the good schedule", func() bool { return findSchedule(t, r, "good").Fired >= 2 }, r)
		require.NoError(t, r.Stop(ctx))
		bad := findSchedule(t, r, "bad")
		require.Equal(t, due, bad.NextFireAt, "still due, for a runner that has its workflow")
		require.Zero(t, bad.Fired)
	})
}

// Runners record by their estimates of the database's clock, which may
// differ by a little. A runner whose estimate lags resuming a schedule
// just after another fired a tick used to set the next tick to the one
// fired already: firing it then conflicted with its record, and the
// schedule never moved on again. Resumed, or given a new cron, a schedule
// counts its next tick from its newest tick when that is later than now.
func TestScheduleTimingSetBehindAFiredTick(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		wf := MustWorkflow("w", Task{Name: "a", Run: ok})
		sched := Schedule{Name: "s", Workflow: "w", Cron: "* * * * * *"}
		tick := time.Now().UTC().Truncate(time.Second).Add(time.Hour)
		a := pastSchedule(t, url, wf, sched, tick)
		a.now = func() time.Time { return tick.Add(20 * time.Millisecond) }
		lagging := func(cron string) *Runner {
			s := sched
			s.Cron = cron
			r := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, Schedules: []Schedule{s}})
			r.now = func() time.Time { return tick.Add(-180 * time.Millisecond) }
			return r
		}
		require.Equal(t, fireMoved, a.fireSchedule(ctx, "s"))
		require.Equal(t, tick, *findSchedule(t, a, "s").LastTickAt)

		b := lagging(sched.Cron)
		require.NoError(t, b.PauseSchedule(ctx, "s"))
		require.NoError(t, b.ResumeSchedule(ctx, "s"))
		require.Equal(t, tick.Add(time.Second), findSchedule(t, a, "s").NextFireAt, "resumed: the tick after the one fired")

		// The same for a cron changed by a lagging runner's start.
		c := lagging("*/1 * * * * *")
		require.NoError(t, c.syncSchedules(ctx))
		require.Equal(t, tick.Add(time.Second), findSchedule(t, a, "s").NextFireAt, "new cron: the tick after the one fired")

		a.now = func() time.Time { return tick.Add(time.Second + 20*time.Millisecond) }
		require.Equal(t, fireMoved, a.fireSchedule(ctx, "s"), "the schedule moves on")
		var fired []time.Time
		for _, tk := range scheduleTicks(t, a, "s") {
			fired = append(fired, tk.At)
		}
		slices.SortFunc(fired, time.Time.Compare)
		require.Equal(t, []time.Time{tick, tick.Add(time.Second)}, fired)
	})
}

// scheduleSyncHook runs beforeSync once, inside the transaction that
// stores the schedules, before it writes them.
type scheduleSyncHook struct {
	beforeSync func()
}

type scheduleSyncHookTx struct {
	driver.Tx
	d *scheduleSyncHook
}

func (tx *scheduleSyncHookTx) ScheduleSync(ctx context.Context, p *driver.ScheduleSyncParams) error {
	if f := tx.d.beforeSync; f != nil {
		tx.d.beforeSync = nil
		f()
	}
	return tx.Tx.ScheduleSync(ctx, p)
}

// A cron changed by a runner that read the schedule just before another
// runner fired its next tick (PostgreSQL runs the two side by side) sets
// the next tick to the one fired already; firing it then used to conflict
// with its record for ever. The firing runner now moves past a next tick
// that was fired already.
func TestScheduleRetimedWhileATickFires(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := testdb.PostgresSchemaURL(t)
	wf := MustWorkflow("w", Task{Name: "a", Run: ok})
	sched := Schedule{Name: "s", Workflow: "w", Cron: "* * * * * *", CatchUp: CatchUpAll}
	tick := time.Now().UTC().Truncate(time.Second).Add(time.Hour)
	a := pastSchedule(t, url, wf, sched, tick)
	a.now = func() time.Time { return tick.Add(20 * time.Millisecond) }
	changed := sched
	changed.Cron = "*/1 * * * * *" // a new cron: the next tick is set anew
	c := openRunner(t, url, &Config{Workflows: []*Workflow{wf}, Schedules: []Schedule{changed}})
	c.now = func() time.Time { return tick.Add(-180 * time.Millisecond) }
	fired := make(chan fireResult, 1)
	hook := &scheduleSyncHook{beforeSync: func() { fired <- a.fireSchedule(ctx, "s") }}
	c.drv = hookTxs(c.drv, func(tx driver.Tx) driver.Tx { return &scheduleSyncHookTx{Tx: tx, d: hook} })
	require.NoError(t, c.syncSchedules(ctx))
	require.Equal(t, fireMoved, waitFor(t, fired, "A to fire the tick"))
	require.Equal(t, tick, findSchedule(t, a, "s").NextFireAt, "set anew behind the tick fired")

	a.now = func() time.Time { return tick.Add(time.Second + 20*time.Millisecond) }
	require.Equal(t, fireMoved, a.fireSchedule(ctx, "s"), "the schedule moves on")
	var fired2 []time.Time
	for _, tk := range scheduleTicks(t, a, "s") {
		fired2 = append(fired2, tk.At)
	}
	slices.SortFunc(fired2, time.Time.Compare)
	require.Equal(t, []time.Time{tick, tick.Add(time.Second)}, fired2, "each tick once")
}
