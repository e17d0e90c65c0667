package cloacina

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/robfig/cron/v3"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/dag"
)

// Schedule starts runs of a workflow on a cron specification: one run per
// tick, from whichever started runner declares the schedule, exactly once
// however many runners, in however many processes, declare it.
//
// The definition lives in the code (Config.Schedules); the schedule's
// state — its next tick, whether it is paused, the ticks it fired — lives
// in the database, under its Name. A runner that starts stores the
// definitions it declares; a schedule whose Cron and Location are
// unchanged keeps its next tick, so that ticks that passed while no runner
// ran are found late and handled by CatchUp. One whose timing changed
// starts over from the next tick after now (or after the newest tick it
// fired, if that is later: a tick never fires twice). When runners declare different
// definitions under one name (during a rolling deploy), the one stored
// last is the one every runner fires by.
//
// A tick fires in one transaction that creates its run, records the tick
// and moves the schedule on from the tick it read (the database refuses
// both a schedule moved on twice from one tick and a tick recorded
// twice), so a crash either fires a tick with its run or leaves it due. A run
// started by a tick has the schedule's Input plus two keys: "schedule"
// (the schedule's name) and "scheduled_at" (the tick, RFC 3339 in UTC);
// read them with ScheduledAt. Overlap decides whether a tick starts a run
// while the schedule's last run is unfinished. Ticks fire within
// milliseconds of their time while a runner that declares the schedule is
// started.
type Schedule struct {
	// Name identifies the schedule in the database (one namespace per
	// database or PostgreSQL schema). Required.
	Name string
	// Workflow is the name of the workflow each tick runs; it must be
	// registered in the same Config. Required.
	Workflow string
	// Cron is when ticks fall: five fields (minute, hour, day of month,
	// month, day of week: "30 2 * * 1-5" is 02:30 on weekdays), six with
	// a leading seconds field ("*/10 * * * * *"), or a descriptor:
	// @yearly, @monthly, @weekly, @daily, @hourly, or "@every 1h30m"
	// (intervals counted from the previous tick). Parsed by
	// github.com/robfig/cron/v3. Required.
	Cron string
	// Location is the time zone Cron is read in, daylight saving time
	// included: "0 9 * * *" in Europe/Paris fires at 09:00 Paris time
	// all year. A wall-clock time that a change of offset skips does not
	// tick that day ("30 2 * * *" in Paris on the last Sunday of March),
	// and one it repeats ticks twice, the shift apart (an hour in Paris,
	// on the last Sunday of October; half an hour in Australia/Lord_Howe): keep daily schedules out of the hours the zone shifts,
	// or use UTC. Default: UTC. Runners load the zone by its name, so
	// time.Local is refused, since runners on other machines may not share
	// it, and so is a time.FixedZone whose name does not load as that
	// same zone (other runners could not load it, or would load another
	// zone by its name): name the zone
	// (time.LoadLocation("Europe/Paris")).
	Location *time.Location
	// Input is each run's input context (nil: empty), to which a run adds
	// the "schedule" and "scheduled_at" keys; Input must not set them.
	Input *Context
	// CatchUp says which ticks run when a runner finds several due at
	// once: those that passed while no runner fired them (every runner
	// down, or stopped), or — rarely — while the one that fires them fell
	// behind by more than a tick. Default: CatchUpLatest.
	CatchUp CatchUp
	// MaxLateness, when positive, drops ticks found more than this after
	// their time instead of running them: with CatchUpLatest, a schedule
	// that must not run late at all (a 09:00 reminder is no use at noon).
	// Default: 0, no limit.
	MaxLateness time.Duration
	// Overlap says what a tick does while the run the schedule started
	// last is unfinished. Default: OverlapAllow.
	Overlap Overlap
}

// Overlap is what a schedule does with a tick that falls while its last
// run is unfinished.
type Overlap string

const (
	// OverlapAllow starts the tick's run all the same: runs of the
	// schedule may overlap.
	OverlapAllow Overlap = "allow"
	// OverlapSkip starts no run for the tick and records it as skipped,
	// with the unfinished run named (ScheduleTick.Skipped): a schedule
	// whose runs take longer than its interval never piles them up. A
	// cancelled run counts as unfinished until its running tasks have
	// returned.
	OverlapSkip Overlap = "skip"
)

// CatchUp is what a schedule does with the ticks it finds late.
type CatchUp string

const (
	// CatchUpLatest runs only the newest of the ticks found late: one run
	// however long no runner fired the schedule.
	CatchUpLatest CatchUp = "latest"
	// CatchUpAll runs every tick found late, oldest first, each with its
	// own scheduled_at: a schedule whose runs each process their own
	// period (a day's data, say) misses none. At most maxCatchUpTicks are
	// fired per transaction; the rest follow at once.
	CatchUpAll CatchUp = "all"
)

// The keys a tick adds to its run's input.
const (
	scheduleKey    = "schedule"
	scheduledAtKey = "scheduled_at"
)

// maxCatchUpTicks bounds the runs one schedule starts in one transaction.
const maxCatchUpTicks = 100

// ErrScheduleNotFound is returned for a schedule name the database does
// not hold.
var ErrScheduleNotFound = errors.New("schedule not found")

// cronParser reads five fields, six with seconds first, or a descriptor.
var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ScheduledAt returns the tick that started the run a task belongs to, and
// the schedule's name, from the task's context (keys "scheduled_at" and
// "schedule"); ok is false for a run no schedule started. Root tasks
// receive them with the run's input; others as long as their dependencies
// pass them on.
func ScheduledAt(tc *Context) (at time.Time, schedule string, ok bool) {
	at, err := Get[time.Time](tc, scheduledAtKey)
	if err != nil {
		return time.Time{}, "", false
	}
	schedule, _ = Get[string](tc, scheduleKey)
	return at, schedule, true
}

// compiledSchedule is a declared schedule, checked and encoded.
type compiledSchedule struct {
	def   driver.ScheduleDef
	spec  cron.Schedule
	input *Context
}

// zoneProblem says why loc cannot be stored by its name, or returns "":
// runners load a schedule's zone by name, and a time.FixedZone named ""
// or "Local" (or named like an IANA zone it is not) would load as another
// zone (UTC, each machine's own). A name that does not load at all is
// parseCron's to report.
func zoneProblem(loc *time.Location) string {
	const fix = "name an IANA zone, as time.LoadLocation(\"Europe/Paris\") returns"
	name := loc.String()
	if name == "Local" {
		return fmt.Sprintf("Location is named %q, which runners read as their machine's own zone: %s", name, fix)
	}
	loaded, err := time.LoadLocation(name)
	if err != nil {
		return ""
	}
	// Twenty-four months cross every daylight-saving change of a zone.
	start := time.Now().UTC()
	for i := range 24 {
		at := time.Date(start.Year(), start.Month()+time.Month(i), 15, 12, 0, 0, 0, time.UTC)
		_, given := at.In(loc).Zone()
		if _, read := at.In(loaded).Zone(); read != given {
			return fmt.Sprintf("Location %q is not the zone its name loads (a time.FixedZone?): other runners would read it "+
				"as that zone, UTC%+.1fh on %s where this one is UTC%+.1fh; %s", name, float64(read)/3600, at.Format(time.DateOnly),
				float64(given)/3600, fix)
		}
	}
	return ""
}

// parseCron parses a schedule's Cron in the zone named tz (see
// zonedSchedule), and refuses an interval that would not tick as written:
// robfig/cron would round "@every 1500ms" to every second. checkTicks
// refuses a specification with no tick at all.
func parseCron(spec, tz string) (cron.Schedule, error) {
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		return nil, fmt.Errorf("cron %q names a time zone: set Schedule.Location instead", spec)
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, fmt.Errorf("time zone %q: %w: use an IANA zone, as time.LoadLocation(\"Europe/Paris\") returns "+
			"(a time.FixedZone cannot be loaded by the other runners)", tz, err)
	}
	if every, ok := strings.CutPrefix(spec, "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(every))
		if err == nil && (d < time.Second || d%time.Second != 0) {
			return nil, fmt.Errorf("cron %q: an interval must be a whole number of seconds, at least 1s", spec)
		}
	}
	s, err := cronParser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("cron %q: %w: write five fields (minute hour day-of-month month day-of-week, as \"30 2 * * 1-5\"), "+
			"six with seconds first, or a descriptor (@hourly, @daily, \"@every 10m\")", spec, err)
	}
	// An interval ("@every 1h") is one of absolute time, and stays so; a
	// specification is read in the zone's wall-clock time.
	if ss, ok := s.(*cron.SpecSchedule); ok {
		return newZonedSchedule(ss, loc), nil
	}
	return s, nil
}

// checkTicks refuses a specification with no tick in the five years
// after now ("0 0 30 2 *": February has no 30th), for which Next returns
// the zero time.
func checkTicks(spec cron.Schedule, cronSpec string, now time.Time) error {
	if spec.Next(now).IsZero() {
		return fmt.Errorf("cron %q never ticks (no such date in the next five years): check the day of month against the month", cronSpec)
	}
	return nil
}

// compileSchedules checks the declared schedules against the registered
// workflows, before anything is written.
func (r *Runner) compileSchedules(defs []Schedule) (map[string]*compiledSchedule, error) {
	out := make(map[string]*compiledSchedule, len(defs))
	for i, s := range defs {
		fail := func(format string, args ...any) error {
			return fmt.Errorf("cloacina: Config.Schedules[%d] (%q): %s", i, s.Name, fmt.Sprintf(format, args...))
		}
		switch {
		case strings.TrimSpace(s.Name) == "":
			return nil, fail("Name is empty: give the schedule a name to identify it in the database")
		case nameProblem(s.Name) != "":
			return nil, fail("Name %s", nameProblem(s.Name))
		case out[s.Name] != nil:
			return nil, fail("another schedule has this Name: names must be unique")
		case s.MaxLateness < 0:
			return nil, fail("MaxLateness %s is negative: use 0 for no limit", s.MaxLateness)
		case s.Location == time.Local:
			return nil, fail("Location is time.Local, which runners on other machines may not share: name the zone, as time.LoadLocation(\"Europe/Paris\")")
		}
		if s.Workflow == "" {
			return nil, fail("Workflow is empty: name the workflow each tick runs")
		}
		if _, err := r.workflow(s.Workflow); err != nil {
			return nil, fail("%v", err)
		}
		catchUp := s.CatchUp
		if catchUp == "" {
			catchUp = CatchUpLatest
		}
		if catchUp != CatchUpLatest && catchUp != CatchUpAll {
			return nil, fail("CatchUp %q is unknown: use CatchUpLatest or CatchUpAll", s.CatchUp)
		}
		overlap := s.Overlap
		if overlap == "" {
			overlap = OverlapAllow
		}
		if overlap != OverlapAllow && overlap != OverlapSkip {
			return nil, fail("Overlap %q is unknown: use OverlapAllow or OverlapSkip", s.Overlap)
		}
		loc := s.Location
		if loc == nil {
			loc = time.UTC
		}
		if why := zoneProblem(loc); why != "" {
			return nil, fail("%s", why)
		}
		spec, err := parseCron(s.Cron, loc.String())
		if err == nil {
			err = checkTicks(spec, s.Cron, time.Now())
		}
		if err != nil {
			return nil, fail("%v", err)
		}
		input := NewContext()
		if s.Input != nil {
			input = s.Input.Clone()
		}
		for _, k := range []string{scheduleKey, scheduledAtKey} {
			if _, ok := input.values[k]; ok {
				return nil, fail("Input sets %q, which each run gets from its tick: use another key", k)
			}
		}
		raw, err := input.MarshalJSON()
		if err != nil {
			return nil, fail("encode Input: %v", err)
		}
		out[s.Name] = &compiledSchedule{spec: spec, input: input, def: driver.ScheduleDef{Name: s.Name, WorkflowName: s.Workflow,
			Cron: s.Cron, Timezone: loc.String(), Input: raw, CatchUp: string(catchUp), MaxLateness: s.MaxLateness,
			Overlap: string(overlap)}}
	}
	return out, nil
}

// syncSchedules stores the definitions of the schedules this runner
// declares (see driver.ScheduleSyncParams).
func (r *Runner) syncSchedules(ctx context.Context) error {
	if len(r.schedules) == 0 {
		return nil
	}
	_, err := r.withTx(ctx, apiTxAttempts, func(ctx context.Context, tx driver.Tx, c *changes) error {
		p := &driver.ScheduleSyncParams{Now: c.now}
		names := r.scheduleNames()
		stored, err := tx.ScheduleList(ctx, &driver.ScheduleListParams{Names: names})
		if err != nil {
			return err
		}
		byName := make(map[string]*driver.Schedule, len(stored))
		for _, s := range stored {
			byName[s.Name] = s
		}
		for _, name := range names {
			s := r.schedules[name]
			def := s.def
			// Used where the stored timing changed (see ScheduleSync).
			from, err := tickFloor(ctx, tx, byName[name], c.now)
			if err != nil {
				return err
			}
			def.NextFireAt = s.spec.Next(from).UTC()
			p.Schedules = append(p.Schedules, def)
		}
		return tx.ScheduleSync(ctx, p)
	})
	if err != nil {
		return fmt.Errorf("cloacina: store schedules: %w", err)
	}
	return nil
}

func (r *Runner) scheduleNames() []string {
	names := make([]string, 0, len(r.schedules))
	for name := range r.schedules {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// dueTicks returns the ticks of spec to fire at now, when the next one due
// was next, and the tick to fire after them. With CatchUpLatest only the
// newest tick at or before now fires; with CatchUpAll every one, up to
// maxCatchUpTicks (the tick after those is then due already). Ticks more
// than maxLate before now (when positive) are dropped.
func dueTicks(spec cron.Schedule, next, now time.Time, catchUp CatchUp, maxLate time.Duration) (fire []time.Time, after time.Time) {
	if next.After(now) {
		return nil, next
	}
	anchor := next
	if maxLate > 0 {
		if oldest := now.Add(-maxLate); next.Before(oldest) {
			next = tickAfter(spec, anchor, oldest.Add(-time.Nanosecond))
		}
	}
	if next.After(now) || next.IsZero() {
		// Nothing late enough to run (or no tick after oldest at all).
		return nil, next
	}
	if catchUp == CatchUpAll {
		t := next
		for !t.After(now) && len(fire) < maxCatchUpTicks {
			fire = append(fire, t)
			n := tickAfter(spec, anchor, t)
			if !n.After(t) {
				// No tick after t (a zero Next): fire what is due, and the
				// schedule never again.
				return fire, time.Time{}
			}
			t = n
		}
		return fire, t
	}
	last := latestTick(spec, anchor, next, now)
	return []time.Time{last}, tickAfter(spec, anchor, last)
}

// tickAfter returns the first tick of spec after t. A cron specification's
// ticks are fixed; an interval's ("@every 1h") are counted from the tick
// anchor, one of them, rather than from t.
func tickAfter(spec cron.Schedule, anchor, t time.Time) time.Time {
	if d, ok := spec.(cron.ConstantDelaySchedule); ok {
		if t.Before(anchor) {
			return anchor
		}
		return anchor.Add((t.Sub(anchor)/d.Delay + 1) * d.Delay)
	}
	return spec.Next(t)
}

// latestTick returns the newest tick of spec in [from, now], from being a
// tick at or before now, without walking every tick since from: it widens
// a window back from now until a tick falls in it, then walks that window
// only.
func latestTick(spec cron.Schedule, anchor, from, now time.Time) time.Time {
	if d, ok := spec.(cron.ConstantDelaySchedule); ok {
		return anchor.Add(now.Sub(anchor) / d.Delay * d.Delay)
	}
	for d := time.Second; ; d *= 2 {
		start := now.Add(-d)
		if !start.After(from) {
			start = from.Add(-time.Nanosecond)
		}
		if t := spec.Next(start); !t.After(now) && t.After(start) {
			for n := spec.Next(t); !n.After(now) && n.After(t); n = spec.Next(n) {
				t = n
			}
			return t
		}
		if !start.After(from) {
			// Unreachable while from is a tick at or before now.
			return from
		}
	}
}

// scheduleLoop fires this runner's schedules while it is started. It
// reads when the earliest of them is due and sleeps until then, or a
// PollInterval at most (another process may resume or change a
// schedule), so that an idle runner costs one read per PollInterval; a
// firing transaction is begun only for a due tick, one per schedule, so
// that a schedule that cannot fire holds back no other.
func (r *Runner) scheduleLoop(svc *services) {
	defer svc.loops.Done()
	ctx := svc.claimCtx
	names := r.scheduleNames()
	// failed holds back, for a PollInterval, the schedules this runner
	// failed to fire, so that they cost one attempt (and one warning) per
	// PollInterval rather than one per tick of the others.
	failed := map[string]time.Time{}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-svc.scheduleWake:
		}
		if svc.draining.Load() {
			return
		}
		wait, due := r.untilNextTick(ctx, names)
		for _, name := range due {
			if until, ok := failed[name]; ok && time.Now().Before(until) {
				wait = min(wait, time.Until(until))
				continue
			}
			delete(failed, name)
			switch r.fireSchedule(ctx, name) {
			case fireMoved:
				// More may be due (CatchUpAll fires in batches).
				wait = 0
			case fireLocked:
				// Another transaction holds it (another runner firing it,
				// a pause, a runner storing it): look again shortly.
				wait = min(wait, lockedRetry)
			case fireFailed:
				failed[name] = time.Now().Add(r.cfg.PollInterval)
			}
		}
		timer.Reset(max(wait, 0))
	}
}

// lockedRetry is how soon the schedule loop looks again at a due schedule
// whose row another transaction held.
const lockedRetry = 50 * time.Millisecond

// fireResult is what fireSchedule did with a due schedule.
type fireResult int

const (
	// fireMoved: ticks fired (or were skipped or dropped) and the
	// schedule moved on.
	fireMoved fireResult = iota
	// fireLocked: the schedule was not due, or its row was held by
	// another transaction (SKIP LOCKED), when the transaction read it.
	fireLocked
	// fireFailed: it could not be fired (see the log); it stays due.
	fireFailed
)

// fireSchedule fires the due ticks of one schedule in a transaction of
// its own.
func (r *Runner) fireSchedule(ctx context.Context, name string) fireResult {
	res, fired := fireLocked, 0
	_, err := r.withTx(ctx, apiTxAttempts, func(ctx context.Context, tx driver.Tx, c *changes) error {
		res, fired = fireLocked, 0
		due, err := tx.ScheduleDue(ctx, &driver.ScheduleDueParams{Names: []string{name}, Now: c.now})
		if err != nil || len(due) == 0 {
			return err
		}
		s := due[0]
		ticks, after, err := r.planTicks(ctx, tx, s, c.now)
		if err != nil {
			// A definition this runner cannot fire (a workflow it does
			// not run, a cron stored by another version of the code):
			// leave it to runners that can.
			res = fireFailed
			r.logger.Warn("schedule not fired", "schedule", s.Name, "error", err)
			return nil
		}
		f := &driver.ScheduleFireParams{Name: s.Name, Expect: s.NextFireAt, NextFireAt: after, Now: c.now}
		var runs []*newRun
		for _, t := range ticks {
			if t.run == nil {
				f.Ticks = append(f.Ticks, driver.ScheduleTick{At: t.at, Skipped: t.skipped})
				r.logger.Info("schedule skipped a tick", "schedule", s.Name, "tick", t.at, "reason", t.skipped)
				continue
			}
			f.Ticks = append(f.Ticks, driver.ScheduleTick{At: t.at, PipelineID: &t.run.id})
			runs = append(runs, t.run)
		}
		if !s.NextFireAt.Equal(firstOr(ticks, after)) {
			r.logger.Info("schedule dropped late ticks", "schedule", s.Name, "from", s.NextFireAt,
				"catch_up", s.CatchUp, "max_lateness", s.MaxLateness)
		}
		if err := r.createRuns(ctx, tx, c, runs, false); err != nil {
			return err
		}
		if err := tx.ScheduleFire(ctx, f); err != nil {
			return err
		}
		res, fired = fireMoved, len(runs)
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			r.logger.Warn("fire schedule", "schedule", name, "error", err)
		}
		return fireFailed
	}
	if fired > 0 {
		r.logger.Debug("schedule fired", "schedule", name, "runs", fired)
	}
	return res
}

// tick is a tick about to fire and the run it starts, or (run nil) why
// it is skipped.
type tick struct {
	at      time.Time
	run     *newRun
	skipped string
}

func firstOr(ticks []tick, after time.Time) time.Time {
	if len(ticks) > 0 {
		return ticks[0].at
	}
	return after
}

// planTicks builds the runs of the ticks of s due at now, by the stored
// definition, and returns the tick due after them. With OverlapSkip a
// tick is skipped while the schedule's last run, read in tx, is
// unfinished (or cancelled with a task that has not returned yet); so is
// every tick after the first run it starts.
func (r *Runner) planTicks(ctx context.Context, tx driver.Executor, s *driver.Schedule, now time.Time) ([]tick, time.Time, error) {
	spec, err := parseCron(s.Cron, s.Timezone)
	if err != nil {
		return nil, time.Time{}, err
	}
	wf, err := r.workflow(s.WorkflowName)
	if err != nil {
		return nil, time.Time{}, err
	}
	input, err := contextFromJSON(s.Input)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("input: %w", err)
	}
	next := s.NextFireAt
	// A next tick set anew (resumed, cron changed) by a runner that read
	// the schedule just before another fired that tick, or whose clock
	// lagged, is one fired already: fire from the tick after the newest
	// one recorded. Firing holds the schedule's row, so this read is
	// current.
	floor, err := tickFloor(ctx, tx, s, time.Time{})
	if err != nil {
		return nil, time.Time{}, err
	}
	if !next.IsZero() && !next.After(floor) {
		next = tickAfter(spec, next, floor)
	}
	ats, after := dueTicks(spec, next, now, CatchUp(s.CatchUp), s.MaxLateness)
	if after.IsZero() || next.IsZero() {
		return nil, time.Time{}, fmt.Errorf("cron %q in %s has no tick after %s: change the schedule's Cron", s.Cron, s.Timezone, s.NextFireAt)
	}
	var busy *uuid.UUID
	if Overlap(s.Overlap) == OverlapSkip && s.LastRunID != nil && len(ats) > 0 {
		switch p, err := tx.PipelineGet(ctx, *s.LastRunID); {
		case errors.Is(err, driver.ErrNotFound):
		case err != nil:
			return nil, time.Time{}, err
		case !p.Status.Terminal():
			busy = s.LastRunID
		case p.Status == driver.PipelineCancelled:
			// A cancelled run whose task has not returned yet still runs
			// it: the next run would overlap that task.
			tasks, err := tx.TaskList(ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{p.ID}})
			if err != nil {
				return nil, time.Time{}, err
			}
			for _, t := range tasks {
				if t.Status == driver.TaskRunning {
					busy = s.LastRunID
				}
			}
		}
	}
	ticks := make([]tick, len(ats))
	for i, at := range ats {
		if busy != nil {
			ticks[i] = tick{at: at.UTC(), skipped: fmt.Sprintf("run %s of the schedule is unfinished (OverlapSkip)", *busy)}
			continue
		}
		in := input.Clone()
		if err := in.Set(scheduleKey, s.Name); err != nil {
			return nil, time.Time{}, err
		}
		if err := in.Set(scheduledAtKey, at.UTC()); err != nil {
			return nil, time.Time{}, err
		}
		raw, err := in.MarshalJSON()
		if err != nil {
			return nil, time.Time{}, err
		}
		ticks[i] = tick{at: at.UTC(), run: &newRun{id: newID(), wf: wf, input: raw}}
		if Overlap(s.Overlap) == OverlapSkip {
			busy = &ticks[i].run.id
		}
	}
	return ticks, after.UTC(), nil
}

// untilNextTick reads this runner's schedules and returns those due now,
// and how long to wait for the next tick of the others (a PollInterval at
// most, and positive).
func (r *Runner) untilNextTick(ctx context.Context, names []string) (time.Duration, []string) {
	wait := r.cfg.PollInterval
	rows, err := r.drv.Reader().ScheduleList(ctx, &driver.ScheduleListParams{Names: names})
	if err != nil {
		if ctx.Err() == nil {
			r.logger.Warn("read schedules; no schedule fires until a read succeeds, tried again every PollInterval",
				"error", err, "retry_in", wait)
		}
		return wait, nil
	}
	r.syncClock(ctx, r.drv.Reader())
	now := r.now()
	var due []string
	for _, s := range rows {
		switch {
		case s.Paused:
		case !s.NextFireAt.After(now):
			due = append(due, s.Name)
		default:
			wait = min(wait, s.NextFireAt.Sub(now))
		}
	}
	return wait, due
}

// wakeSchedules asks the schedule loop for a pass now.
func (r *Runner) wakeSchedules() {
	if svc := r.services(); svc != nil {
		select {
		case svc.scheduleWake <- struct{}{}:
		default:
		}
	}
}

// ScheduleInfo is a stored schedule: its definition, as the runner that
// declared it last stored it, and its state.
type ScheduleInfo struct {
	Name        string
	Workflow    string
	Cron        string
	Timezone    string
	Input       *Context
	CatchUp     CatchUp
	MaxLateness time.Duration
	Overlap     Overlap
	Paused      bool
	// NextFireAt is the next tick (while paused, the one it was at).
	NextFireAt time.Time
	// LastTickAt is the newest tick fired, LastRunID the run it started
	// and LastFiredAt when it fired; nil before the first.
	LastTickAt  *time.Time
	LastRunID   *uuid.UUID
	LastFiredAt *time.Time
	// Fired counts the runs the schedule has started, Skipped the ticks
	// it skipped (OverlapSkip).
	Fired     int64
	Skipped   int64
	CreatedAt time.Time
	// UpdatedAt is when the definition last changed or the schedule was
	// paused or resumed.
	UpdatedAt time.Time
}

// ScheduleTick is a tick a schedule fired and the run it started, or a
// tick it skipped: RunID is then uuid.Nil and Skipped says why.
type ScheduleTick struct {
	Schedule string
	At       time.Time
	RunID    uuid.UUID
	Skipped  string
	// FiredAt is when the tick fired (or was skipped).
	FiredAt time.Time
}

// Schedules returns the schedules stored in the database, by name: those
// of every runner, not only this one's. It works on a read-only runner.
func (r *Runner) Schedules(ctx context.Context) ([]ScheduleInfo, error) {
	db, err := r.reader(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := db.ScheduleList(ctx, &driver.ScheduleListParams{})
	if err != nil {
		return nil, r.closedErr(err)
	}
	out := make([]ScheduleInfo, len(rows))
	for i, s := range rows {
		input, err := contextFromJSON(s.Input)
		if err != nil {
			return nil, fmt.Errorf("schedule %q: input: %w", s.Name, err)
		}
		out[i] = ScheduleInfo{Name: s.Name, Workflow: s.WorkflowName, Cron: s.Cron, Timezone: s.Timezone, Input: input,
			CatchUp: CatchUp(s.CatchUp), MaxLateness: s.MaxLateness, Overlap: Overlap(s.Overlap), Paused: s.Paused,
			NextFireAt: s.NextFireAt, LastTickAt: s.LastTickAt, LastRunID: s.LastRunID, LastFiredAt: s.LastFiredAt,
			Fired: s.Fired, Skipped: s.Skipped,
			CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt}
	}
	return out, nil
}

// ScheduleTicks returns the newest ticks (at most limit; 100 when limit is
// not positive) that the named schedule fired, newest first, with the runs
// they started.
func (r *Runner) ScheduleTicks(ctx context.Context, name string, limit int) ([]ScheduleTick, error) {
	db, err := r.reader(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := r.scheduleRow(ctx, db, name, false); err != nil {
		return nil, err
	}
	rows, err := db.ScheduleTickList(ctx, &driver.ScheduleTickListParams{Name: name, Limit: limit})
	if err != nil {
		return nil, r.closedErr(err)
	}
	out := make([]ScheduleTick, len(rows))
	for i, t := range rows {
		out[i] = ScheduleTick{Schedule: t.ScheduleName, At: t.At, Skipped: t.Skipped, FiredAt: t.FiredAt}
		if t.PipelineID != nil {
			out[i].RunID = *t.PipelineID
		}
	}
	return out, nil
}

// PauseSchedule stops the named schedule from firing, from any process,
// until ResumeSchedule: the runners that declare it keep it paused across
// restarts. A run it started already goes on.
func (r *Runner) PauseSchedule(ctx context.Context, name string) error {
	if err := r.checkWritable(fmt.Sprintf("pause schedule %q", name)); err != nil {
		return err
	}
	err := r.apiTx(ctx, func(ctx context.Context, tx driver.Tx, c *changes) error {
		return tx.SchedulePause(ctx, &driver.SchedulePauseParams{Name: name, Paused: true, Now: c.now})
	})
	return r.scheduleErr(ctx, name, err)
}

// ResumeSchedule lets a paused schedule fire again from its next tick
// after now (or after the newest tick it fired, if that is later: a tick
// never fires twice): the ticks that passed while it was paused do not
// run.
// Resuming a schedule that is not paused moves nothing.
func (r *Runner) ResumeSchedule(ctx context.Context, name string) error {
	if err := r.checkWritable(fmt.Sprintf("resume schedule %q", name)); err != nil {
		return err
	}
	err := r.apiTx(ctx, func(ctx context.Context, tx driver.Tx, c *changes) error {
		// Locked: a runner storing a changed cron meanwhile would
		// otherwise be overwritten by a next tick of the cron read here.
		s, err := r.scheduleRow(ctx, tx, name, true)
		if err != nil || !s.Paused {
			return err
		}
		spec, err := parseCron(s.Cron, s.Timezone)
		if err == nil {
			err = checkTicks(spec, s.Cron, c.now)
		}
		if err != nil {
			return fmt.Errorf("cloacina: resume schedule %q: %w", name, err)
		}
		from, err := tickFloor(ctx, tx, s, c.now)
		if err != nil {
			return err
		}
		return tx.SchedulePause(ctx, &driver.SchedulePauseParams{Name: name, NextFireAt: spec.Next(from).UTC(), Now: c.now})
	})
	if err == nil {
		r.wakeSchedules()
	}
	return r.scheduleErr(ctx, name, err)
}

// DeleteSchedule removes the named schedule and the record of its ticks
// (the runs it started stay). A started runner that declares it stops
// firing it, and stores it again, from its next tick after now, when it
// next starts: remove it from Config.Schedules too.
func (r *Runner) DeleteSchedule(ctx context.Context, name string) error {
	if err := r.checkWritable(fmt.Sprintf("delete schedule %q", name)); err != nil {
		return err
	}
	err := r.apiTx(ctx, func(ctx context.Context, tx driver.Tx, c *changes) error {
		return tx.ScheduleDelete(ctx, name)
	})
	return r.scheduleErr(ctx, name, err)
}

// tickFloor is the time the next tick of a stored schedule s (nil when
// none is stored) is counted from when its timing is set anew (resumed, or
// its cron changed): now, or its newest tick when that is later. Runners
// record by their estimates of the database's clock, which differ by a
// little: counted from a lagging now, the next tick could be one fired
// already, which must not fire twice (and whose record would refuse it).
func tickFloor(ctx context.Context, tx driver.Executor, s *driver.Schedule, now time.Time) (time.Time, error) {
	if s == nil {
		return now, nil
	}
	from := now
	if s.LastTickAt != nil && s.LastTickAt.After(from) {
		from = *s.LastTickAt
	}
	// A skipped tick is recorded without moving LastTickAt.
	newest, err := tx.ScheduleTickList(ctx, &driver.ScheduleTickListParams{Name: s.Name, Limit: 1})
	if err != nil {
		return time.Time{}, err
	}
	if len(newest) > 0 && newest[0].At.After(from) {
		from = newest[0].At
	}
	return from, nil
}

// scheduleRow reads one schedule (locking its row, with lock, until the
// transaction ends), or fails with ErrScheduleNotFound.
func (r *Runner) scheduleRow(ctx context.Context, db driver.Executor, name string, lock bool) (*driver.Schedule, error) {
	rows, err := db.ScheduleList(ctx, &driver.ScheduleListParams{Names: []string{name}, Lock: lock})
	if err != nil {
		return nil, r.closedErr(err)
	}
	if len(rows) == 0 {
		return nil, r.scheduleErr(ctx, name, driver.ErrNotFound)
	}
	return rows[0], nil
}

// scheduleErr maps a missing schedule to ErrScheduleNotFound, with the
// closest name the database holds, or what to do when it holds none.
func (r *Runner) scheduleErr(ctx context.Context, name string, err error) error {
	if !errors.Is(err, driver.ErrNotFound) {
		return err
	}
	hint := "list them with Runner.Schedules or `cloacina schedules list`"
	if db, rerr := r.reader(ctx); rerr == nil {
		if rows, lerr := db.ScheduleList(ctx, &driver.ScheduleListParams{}); lerr == nil {
			names := make([]string, len(rows))
			for i, s := range rows {
				names[i] = s.Name
			}
			if len(names) == 0 {
				hint = "the database holds none: declare schedules in Config.Schedules, and a runner stores them when it starts"
			} else if c := dag.Closest(name, names); c != "" {
				hint = fmt.Sprintf("did you mean %q?", c)
			}
		}
	}
	return fmt.Errorf("cloacina: %w: %q: %s", ErrScheduleNotFound, name, hint)
}
