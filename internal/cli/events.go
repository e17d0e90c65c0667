package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloacina-go/cloacina"
	"github.com/cloacina-go/cloacina/driver"
)

const (
	defaultEventLimit   = 50
	defaultCleanupBatch = 1000
)

func (a *app) eventsCommand() *cobra.Command {
	return groupCommand("events", "Inspect and prune the execution event log",
		a.eventsListCommand(), a.eventsCleanupCommand())
}

func eventTypeNames() []string {
	names := make([]string, len(driver.EventTypes))
	for i, t := range driver.EventTypes {
		names[i] = string(t)
	}
	return names
}

func (a *app) eventsListCommand() *cobra.Command {
	run := &idFlag{what: "run"}
	task := &taskFlag{}
	types := &choiceFlag{kind: "type", allowed: eventTypeNames()}
	limit := countFlag(defaultEventLimit)
	var follow, asJSON bool
	var since, until timeFlag
	var before seqFlag
	interval := intervalFlag(defaultFollowInterval)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List execution events, newest last",
		Long: `list prints the most recent execution events (newest last), optionally only
those of one run, of one task execution, or of some types. With --before it
prints those numbered below a SEQ instead: pass the SEQ of the first event
shown to page back. When --limit leaves older matching events out (it is 50
unless given: a long run has more), a line on stderr says so and gives that
SEQ. A listing of more than 1000 events is read 1000 at a time
(twice: first newest first, to find where each page starts) and printed as it
goes, so a large --limit does not hold the whole listing in memory.

With --follow it prints them, then every new event as it is committed (polling
every --interval), until interrupted; with --run or --task it ends by itself once
that run has finished (or been deleted by ` + "`cloacina runs cleanup`" + `) and every
event it has is printed, so a script can watch a run to its end. Events come in commit order, none skipped and none repeated (if
retention deletes the last event shown while the whole log is followed,
PostgreSQL may show events again). While the database cannot be reached
(a restart, a lost connection) it warns on stderr and keeps trying.`,
		Example: `  cloacina events list --run 0199c3e1-…
  cloacina events list --type task_failed --type task_retry_scheduled --limit 20
  cloacina events list --type task_failed --since 1h
  cloacina events list --limit 100 --before 52731
  cloacina events list --follow --type task_failed
  cloacina events list --run 0199c3e1-… --follow
  cloacina events list --follow --json | jq -c 'select(.type == "task_failed")'`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("interval") && !follow {
				return usageErrorf(cmd, "--interval is how often --follow polls: add --follow, or leave --interval out")
			}
			if cmd.Flags().Changed("until") && follow {
				// New events come after any --until: a follower would wait
				// for ever and print nothing.
				return usageErrorf(cmd, "--follow prints new events, and --until only older ones: leave out --until to follow, or --follow to list up to a time")
			}
			if cmd.Flags().Changed("before") && follow {
				return usageErrorf(cmd, "--follow prints new events, and --before pages back through older ones: leave out one of them")
			}
			if task.name != "" && run.id == nil {
				return usageErrorf(cmd, "--task %q is a task name, which needs --run with its run's id: add --run, or pass the task execution's id (shown by `cloacina runs get`)", task.name)
			}
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			filter := &eventFilter{run: run.id, task: task.id}
			if filter.since, filter.until, err = timeRange(cmd, &since, &until, "event"); err != nil {
				return err
			}
			for _, t := range types.values {
				filter.types = append(filter.types, cloacina.EventType(t))
			}
			return a.withRunner(cmd.Context(), d, openReadOnly, func(ctx context.Context, r *cloacina.Runner) error {
				if filter.since, filter.until, err = atDatabaseTime(ctx, r, &since, &until, filter.since, filter.until); err != nil {
					return err
				}
				if task.name != "" {
					res, err := r.Get(ctx, *run.id)
					if err != nil {
						return runError(*run.id, err)
					}
					tr, err := taskOf(res, task.name)
					if err != nil {
						return err
					}
					filter.task = &tr.ID
				}
				if follow {
					f := &follower{r: r, filter: filter, backlog: int(limit), interval: time.Duration(interval),
						w: a.stdout, asJSON: asJSON, logger: a.logger, polled: a.followPolled}
					if !asJSON {
						f.out = newStream(a.stdout, newEventTable(), eventColumnWidths()...)
					}
					return f.run(ctx)
				}
				return a.listEvents(ctx, r, filter, int(limit), int64(before), asJSON)
			})
		},
	}
	cmd.Flags().Var(run, "run", "only events of this run (id)")
	cmd.Flags().Var(task, "task", "only events of this task execution: its id (shown by 'cloacina runs get'), or its name with --run")
	cmd.Flags().Var(types, "type", "only events of this type (repeatable, or comma-separated)")
	cmd.Flags().Var(&limit, "limit", "show at most this many of the most recent events")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events as they are committed")
	cmd.Flags().Var(&interval, "interval", "how often --follow looks for new events")
	cmd.Flags().Var(&since, "since", "only events created at or after this time, or this long ago (90m, 1d, 2026-11-27T05:00:00Z; a time without a zone is UTC)")
	cmd.Flags().Var(&until, "until", "only events created before this time, or this long ago")
	cmd.Flags().Var(&before, "before", "only events numbered below this SEQ (the first SEQ shown pages back)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON Lines, one event a line (with --follow, each as it comes)")
	return cmd
}

// eventPage is how many events listEvents reads, and holds, at once.
const eventPage = 1000

// lateEvents is how many events listEvents makes room for that commit,
// below a page's bounds, between its two reads.
const lateEvents = 100

// listEvents prints the newest limit events of filter numbered below
// before (0: no bound), oldest first. Up to eventPage of them are read in
// one query and printed as one table. A longer listing holds one page at
// a time, not the whole listing: it is read twice, newest first to find
// where each page of it starts, then page by page from the oldest, and
// printed as a stream with the columns of events list --follow.
func (a *app) listEvents(ctx context.Context, r *cloacina.Runner, filter *eventFilter, limit int, before int64, asJSON bool) error {
	read := func(below int64, n int) ([]*cloacina.Event, error) {
		q := filter.query()
		q.Newest, q.Limit, q.BeforeSeq = true, n, below
		events, err := r.Events(ctx, q)
		if err != nil {
			return nil, listError(err)
		}
		return events, nil
	}
	pageSize := cmp.Or(a.eventPage, eventPage)
	writeJSON := func(events []*cloacina.Event) error {
		return writeJSONLines(a.stdout, events, func(e *cloacina.Event) any { return newEventJSON(e) })
	}
	// noteOlder tells, on stderr, that the listing stopped at its limit
	// with older events left out: a run's listing otherwise starts mid-way
	// through its story without a sign.
	noteOlder := func(shown int, oldest int64) error {
		if shown < limit {
			return nil
		}
		older, err := read(oldest, 1)
		if err != nil || len(older) == 0 {
			return err
		}
		_, err = fmt.Fprintf(a.stderr, "cloacina: %s shown, older ones left out: page back with --before %d, or raise --limit\n",
			plural(shown, "event"), oldest)
		return err
	}
	if limit <= pageSize {
		events, err := read(before, limit)
		if err != nil {
			return err
		}
		slices.Reverse(events)
		if asJSON {
			err = writeJSON(events)
		} else {
			err = writeEventList(a.stdout, events)
		}
		if err != nil || len(events) == 0 {
			return err
		}
		return noteOlder(len(events), events[0].SequenceNum)
	}
	// A page is the events from its oldest to below its bound.
	type page struct{ below, oldest int64 }
	var pages []page
	for below, left := before, limit; left > 0; {
		asked := min(left, pageSize)
		events, err := read(below, asked)
		if err != nil {
			return err
		}
		if len(events) == 0 {
			break
		}
		if below == 0 {
			// Events written from now on stay out of the listing.
			below = events[0].SequenceNum + 1
		}
		oldest := events[len(events)-1].SequenceNum
		pages = append(pages, page{below: below, oldest: oldest})
		below, left = oldest, left-len(events)
		if len(events) < asked {
			break // no older events
		}
	}
	if len(pages) == 0 {
		if asJSON {
			return nil
		}
		return writeEventList(a.stdout, nil)
	}
	out := newStream(a.stdout, newEventTable(), eventColumnWidths()...)
	shown := 0
	for i := len(pages) - 1; i >= 0; i-- {
		// Read again, with room for events that committed since below the
		// page's bound (a higher number reserved earlier, retention's
		// deletions aside), so none seen the first time is pushed out.
		p := pages[i]
		events, err := read(p.below, pageSize+lateEvents)
		if err != nil {
			return err
		}
		events = slices.DeleteFunc(events, func(e *cloacina.Event) bool { return e.SequenceNum < p.oldest })
		slices.Reverse(events)
		shown += len(events)
		if asJSON {
			err = writeJSON(events)
		} else {
			for _, e := range events {
				if err = out.add(eventRow(e)); err != nil {
					break
				}
			}
		}
		if err != nil {
			return err
		}
	}
	return noteOlder(shown, pages[len(pages)-1].oldest)
}

func (a *app) eventsCleanupCommand() *cobra.Command {
	var (
		olderThan         ageFlag
		dryRun            bool
		includeUnfinished bool
		batchSize         = countFlag(defaultCleanupBatch)
	)
	cmd := &cobra.Command{
		Use:   "cleanup --older-than AGE",
		Short: "Delete execution events older than an age",
		Long: `cleanup deletes execution events created more than --older-than ago, in
batches of --batch-size events, one transaction each, so it never holds
locks for long. AGE is a Go duration that may start with days: 30d, 12h, 1d12h,
counted back from the database's clock, which recorded the events' times.

By default it keeps every event of a run that is not finished (pending,
running or paused), however old, so the event log still tells each of its
tasks' status; it deletes the old events of completed, failed and cancelled
runs (and of runs that no longer exist), and says how many old events it
kept. With --include-unfinished it deletes by age alone, unfinished runs
included. With --dry-run it only counts what the same command would delete.`,
		Example: `  cloacina events cleanup --older-than 30d --dry-run
  cloacina events cleanup --older-than 30d --batch-size 5000
  cloacina events cleanup --older-than 90d --include-unfinished`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCleanup(cmd, olderThan, dryRun, "30d", func(ctx context.Context, r *cloacina.Runner, cutoff time.Time) error {
				what := fmt.Sprintf("older than %s (created before %s)", olderThan.raw, formatTime(cutoff))
				opts := &cloacina.DeleteEventsOpts{BatchSize: int(batchSize), IncludeUnfinishedRuns: includeUnfinished}
				total, err := r.CountEventsBefore(ctx, cutoff, opts)
				if err != nil {
					return fmt.Errorf("count events: %w", err)
				}
				switch {
				case dryRun:
					_, err = fmt.Fprintf(a.stdout, "would delete %d events %s; nothing deleted (dry run)\n", total, what)
				case total == 0:
					_, err = fmt.Fprintf(a.stdout, "no events %s to delete\n", what)
				default:
					var deleted int64
					deleted, err = a.deleteInBatches("events", total, func(progress func(int64)) (int64, error) {
						opts.Progress = progress
						return r.DeleteEventsBefore(ctx, cutoff, opts)
					})
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(a.stdout, "deleted %d events %s\n", deleted, what)
				}
				if err != nil || includeUnfinished {
					return err
				}
				// Say how many old events the default leaves to unfinished
				// runs, so nobody wonders why they stay: every event still
				// older than the cutoff, less what a dry run would delete.
				old, err := r.CountEventsBefore(ctx, cutoff, &cloacina.DeleteEventsOpts{IncludeUnfinishedRuns: true})
				if err != nil {
					return fmt.Errorf("count events: %w", err)
				}
				verb := "kept"
				if dryRun {
					old -= total
					verb = "would keep"
				}
				if old <= 0 {
					return nil
				}
				_, err = fmt.Fprintf(a.stdout, "%s %d older events of unfinished runs (pending, running or paused); --include-unfinished deletes them too\n", verb, old)
				return err
			})
		},
	}
	cmd.Flags().Var(&olderThan, "older-than", "delete events older than this age, e.g. 30d or 12h (required)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "count the events that would be deleted; delete nothing")
	cmd.Flags().BoolVar(&includeUnfinished, "include-unfinished", false,
		"delete old events of unfinished (pending, running, paused) runs too; by default they are kept until the run finishes")
	cmd.Flags().Var(&batchSize, "batch-size", "events deleted per transaction")
	return cmd
}

// withCleanup runs the body of a cleanup command: --older-than (as AGE,
// for the message) is required, and fn gets a runner on the database,
// opened read-only for a dry run, and the cutoff.
func (a *app) withCleanup(cmd *cobra.Command, olderThan ageFlag, dryRun bool, example string,
	fn func(ctx context.Context, r *cloacina.Runner, cutoff time.Time) error) error {
	if !cmd.Flags().Changed("older-than") {
		return usageErrorf(cmd, "--older-than is required, e.g. --older-than %s", example)
	}
	d, err := a.database(cmd)
	if err != nil {
		return err
	}
	mode := openExisting
	if dryRun {
		mode = openReadOnly
	}
	return a.withRunner(cmd.Context(), d, mode, func(ctx context.Context, r *cloacina.Runner) error {
		// The cutoff is by the database's clock, which recorded the
		// times: a host clock an hour ahead would delete an hour too much.
		now, err := r.Now(ctx)
		if err != nil {
			return err
		}
		return fn(ctx, r, now.UTC().Add(-olderThan.d))
	})
}

// deleteInBatches runs del, which deletes total counted noun in batches
// and reports each batch to the progress function it is given, printing
// a progress line per batch, and turns an interruption or an error into a
// message that says how far it got.
func (a *app) deleteInBatches(noun string, total int64, del func(progress func(int64)) (int64, error)) (int64, error) {
	deleted, err := del(func(n int64) {
		// More may go than were counted: what is deleted may change
		// between the count and the deletion.
		fmt.Fprintf(a.stdout, "deleted %d of %d %s\n", n, max(n, total), noun)
	})
	if errors.Is(err, context.Canceled) {
		return deleted, fmt.Errorf("interrupted after deleting %d of %d %s; run the command again to continue", deleted, total, noun)
	}
	if err != nil {
		return deleted, fmt.Errorf("%w (%d %s deleted before the error; run the command again to continue)", err, deleted, noun)
	}
	return deleted, nil
}

// withRunner opens an existing database (mode openExisting or
// openReadOnly), runs fn on a runner that executes nothing, and closes it.
func (a *app) withRunner(ctx context.Context, d *database, mode openMode, fn func(context.Context, *cloacina.Runner) error) (err error) {
	r, err := a.open(ctx, d, mode)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := r.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close database: %w", cerr)
		}
	}()
	return fn(ctx, r)
}
