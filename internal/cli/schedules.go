package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/cloacina-go/cloacina"
)

const defaultTickLimit = 20

const schedulesLong = `

Schedules are declared in Go (cloacina.Config.Schedules) and stored in the
database by each runner that declares them when it starts; started runners
fire them, each tick once however many runners declare it. These commands
show and control the stored schedules, from any process.`

// noSchedules is what `schedules list` prints for a database without
// schedules.
const noSchedules = "no schedules: declare them in Config.Schedules, and a runner stores them when it starts"

func (a *app) schedulesCommand() *cobra.Command {
	cmd := groupCommand("schedules", "List, inspect, pause, resume and delete cron schedules",
		a.schedulesListCommand(), a.schedulesGetCommand(),
		a.scheduleControlCommand("pause", "Pause a schedule: no tick fires, from any runner, until it is resumed",
			`pause stops schedule NAME from firing, from any process, until it is resumed;
it stays paused when its runners restart. Runs it started already go on.`,
			pauseSchedule),
		a.scheduleControlCommand("resume", "Resume a paused schedule from its next tick after now",
			`resume lets paused schedule NAME fire again from its next tick after now (or
after the newest tick it fired, if that is later: a tick never fires twice): the
ticks that passed while it was paused do not run. Resuming a schedule that is
not paused changes nothing.`,
			resumeSchedule),
		a.schedulesDeleteCommand(),
	)
	cmd.Long = "schedules shows and controls the cron schedules stored in the database." + schedulesLong
	return cmd
}

func (a *app) schedulesListCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the stored schedules with their next and last ticks",
		Long: `list shows every stored schedule, by name: its workflow, cron specification,
time zone and catch-up policy, whether it is active or paused, its next tick
(none while paused: a resumed schedule fires from the next tick after it is
resumed), the newest tick it fired with the run that tick started, and how
many runs it has started.` + schedulesLong,
		Example: `  cloacina schedules list
  cloacina schedules list --json | jq -r 'select(.state == "paused") | .name'`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			return a.withRunner(cmd.Context(), d, openReadOnly, func(ctx context.Context, r *cloacina.Runner) error {
				all, err := r.Schedules(ctx)
				if err != nil {
					return fmt.Errorf("list schedules: %w", err)
				}
				if asJSON {
					return writeJSONLines(a.stdout, all, func(s cloacina.ScheduleInfo) any { return newScheduleJSON(&s) })
				}
				if len(all) == 0 {
					_, err := fmt.Fprintln(a.stdout, noSchedules)
					return err
				}
				tb := newTable("NAME", "WORKFLOW", "CRON", "TIMEZONE", "CATCH UP", "STATE", "NEXT TICK", "LAST TICK", "LAST RUN", "FIRED").
					alignRight(9)
				for i := range all {
					s := &all[i]
					lastRun := "-"
					if s.LastRunID != nil {
						lastRun = s.LastRunID.String()
					}
					tb.add(s.Name, s.Workflow, s.Cron, s.Timezone, string(s.CatchUp), scheduleState(s), formatTimePtr(nextTick(s)),
						formatTimePtr(s.LastTickAt), lastRun, strconv.FormatInt(s.Fired, 10))
				}
				return tb.render(a.stdout)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON Lines, one schedule a line")
	return cmd
}

func (a *app) schedulesGetCommand() *cobra.Command {
	var asJSON bool
	limit := countFlag(defaultTickLimit)
	cmd := &cobra.Command{
		Use:   "get NAME",
		Short: "Show a schedule, its input and the newest ticks it fired",
		Long: `get shows schedule NAME as it is stored: its definition, state, next and last
ticks and input context, then the newest ticks it fired (at most --limit),
newest first, each with the run it started and when it fired. Inspect a run
with ` + "`cloacina runs get RUN`." + schedulesLong,
		Example: `  cloacina schedules get nightly
  cloacina schedules get nightly --limit 5
  cloacina schedules get nightly --json | jq -r '.ticks[].run_id'`,
		Args: exactArgs(1, "a schedule name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			return a.withRunner(cmd.Context(), d, openReadOnly, func(ctx context.Context, r *cloacina.Runner) error {
				ticks, err := r.ScheduleTicks(ctx, name, int(limit))
				if err != nil {
					return err
				}
				s, err := findSchedule(ctx, r, name)
				if err != nil {
					return err
				}
				if asJSON {
					j := scheduleDetailJSON{scheduleJSON: newScheduleJSON(s), Ticks: make([]tickJSON, len(ticks))}
					for i, t := range ticks {
						j.Ticks[i] = tickJSON{At: t.At.UTC(), Skipped: t.Skipped, FiredAt: t.FiredAt.UTC()}
						if t.Skipped == "" {
							j.Ticks[i].RunID = &t.RunID
						}
					}
					return json.NewEncoder(a.stdout).Encode(j)
				}
				return writeSchedule(a, s, ticks)
			})
		},
	}
	cmd.Flags().Var(&limit, "limit", "show at most this many ticks")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the schedule with its ticks as one JSON object")
	return cmd
}

// writeSchedule prints a schedule's fields, then its ticks.
func writeSchedule(a *app, s *cloacina.ScheduleInfo, ticks []cloacina.ScheduleTick) error {
	fields := newTable()
	fields.add("schedule", s.Name)
	fields.add("workflow", s.Workflow)
	fields.add("cron", s.Cron)
	fields.add("timezone", s.Timezone)
	fields.add("catch up", string(s.CatchUp))
	if s.MaxLateness > 0 {
		fields.add("max lateness", s.MaxLateness.String())
	}
	fields.add("overlap", string(s.Overlap))
	fields.add("state", scheduleState(s))
	fields.add("next tick", formatTimePtr(nextTick(s)))
	fields.add("last tick", formatTimePtr(s.LastTickAt))
	if s.LastRunID != nil {
		fields.add("last run", s.LastRunID.String())
	} else {
		fields.add("last run", "-")
	}
	fields.add("last fired", formatTimePtr(s.LastFiredAt))
	fields.add("fired", strconv.FormatInt(s.Fired, 10))
	if s.Skipped > 0 {
		fields.add("skipped", strconv.FormatInt(s.Skipped, 10))
	}
	fields.add("created", formatTime(s.CreatedAt))
	fields.add("updated", formatTime(s.UpdatedAt))
	fields.add("input", contextText(s.Input))
	if err := fields.render(a.stdout); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	if len(ticks) == 0 {
		_, err := fmt.Fprintln(a.stdout, "no ticks fired yet")
		return err
	}
	tb := newTable("TICK", "RUN", "FIRED AT")
	for _, t := range ticks {
		run := t.RunID.String()
		if t.Skipped != "" {
			run = "skipped: " + t.Skipped
		}
		tb.add(formatTime(t.At), run, formatTime(t.FiredAt))
	}
	return tb.render(a.stdout)
}

// scheduleControlCommand builds `schedules pause|resume NAME`; op changes
// the schedule and returns the line to print.
func (a *app) scheduleControlCommand(name, short, long string,
	op func(context.Context, *cloacina.Runner, string) (string, error)) *cobra.Command {
	return &cobra.Command{
		Use:   name + " NAME",
		Short: short,
		Long:  long + schedulesLong,
		Args:  exactArgs(1, "a schedule name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			return a.withRunner(cmd.Context(), d, openExisting, func(ctx context.Context, r *cloacina.Runner) error {
				line, err := op(ctx, r, args[0])
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(a.stdout, line)
				return err
			})
		},
	}
}

// pauseSchedule pauses schedule name on r.
func pauseSchedule(ctx context.Context, r *cloacina.Runner, name string) (string, error) {
	if err := r.PauseSchedule(ctx, name); err != nil {
		return "", err
	}
	return fmt.Sprintf("schedule %s is paused: no tick fires until it is resumed", name), nil
}

// resumeSchedule resumes schedule name on r and names its next tick.
func resumeSchedule(ctx context.Context, r *cloacina.Runner, name string) (string, error) {
	if err := r.ResumeSchedule(ctx, name); err != nil {
		return "", err
	}
	s, err := findSchedule(ctx, r, name)
	if err != nil {
		return "", err
	}
	if s.Paused {
		// Paused again by another process in the meantime.
		return fmt.Sprintf("schedule %s is paused", name), nil
	}
	return fmt.Sprintf("schedule %s is active: next tick %s", name, formatTime(s.NextFireAt)), nil
}

func (a *app) schedulesDeleteCommand() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "delete NAME --yes",
		Short: "Delete a schedule and the record of its ticks (the runs it started stay)",
		Long: `delete removes schedule NAME and the record of the ticks it fired; the runs it
started stay. It cannot be undone, so it needs --yes. A started runner that
declares the schedule stops firing it, and stores it again, from its next tick,
when it next starts: remove the schedule from Config.Schedules too.` + schedulesLong,
		Args: exactArgs(1, "a schedule name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !yes {
				return usageErrorf(cmd, "deleting schedule %s removes it and the record of its ticks for good (the runs it started stay): add --yes to confirm", name)
			}
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			return a.withRunner(cmd.Context(), d, openExisting, func(ctx context.Context, r *cloacina.Runner) error {
				if err := r.DeleteSchedule(ctx, name); err != nil {
					return err
				}
				_, err := fmt.Fprintf(a.stdout, "schedule %s deleted: remove it from Config.Schedules too, or a runner that declares it stores it again when it starts\n", name)
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm that the schedule and the record of its ticks are to be deleted")
	return cmd
}

// scheduleState is "active" or "paused".
func scheduleState(s *cloacina.ScheduleInfo) string {
	if s.Paused {
		return "paused"
	}
	return "active"
}

// nextTick is the schedule's next tick, or nil while it is paused: the
// tick stored then is not the one it resumes from.
func nextTick(s *cloacina.ScheduleInfo) *time.Time {
	if s.Paused {
		return nil
	}
	return &s.NextFireAt
}

// findSchedule returns the stored schedule called name.
func findSchedule(ctx context.Context, r *cloacina.Runner, name string) (*cloacina.ScheduleInfo, error) {
	all, err := r.Schedules(ctx)
	if err != nil {
		return nil, fmt.Errorf("list schedules: %w", err)
	}
	for i := range all {
		if all[i].Name == name {
			return &all[i], nil
		}
	}
	// Deleted by another process since it was looked up.
	return nil, fmt.Errorf("%w: %q", cloacina.ErrScheduleNotFound, name)
}

// scheduleJSON is a schedule in `schedules list --json` and, with its
// ticks, in `schedules get --json`. max_lateness_ms is 0 for no limit;
// next_fire_at is null while the schedule is paused.
type scheduleJSON struct {
	Name          string            `json:"name"`
	Workflow      string            `json:"workflow"`
	Cron          string            `json:"cron"`
	Timezone      string            `json:"timezone"`
	CatchUp       string            `json:"catch_up"`
	MaxLatenessMS int64             `json:"max_lateness_ms"`
	Overlap       string            `json:"overlap"`
	State         string            `json:"state"`
	NextFireAt    *time.Time        `json:"next_fire_at"`
	LastTickAt    *time.Time        `json:"last_tick_at"`
	LastRunID     *uuid.UUID        `json:"last_run_id"`
	LastFiredAt   *time.Time        `json:"last_fired_at"`
	Fired         int64             `json:"fired"`
	Skipped       int64             `json:"skipped"`
	CreatedAt     time.Time         `json:"created_at"`
	UpdatedAt     time.Time         `json:"updated_at"`
	Input         *cloacina.Context `json:"input"`
}

// scheduleDetailJSON is `schedules get --json`: the schedule and its
// newest ticks, newest first.
type scheduleDetailJSON struct {
	scheduleJSON
	Ticks []tickJSON `json:"ticks"`
}

// tickJSON is a tick a schedule fired and the run it started, or one it
// skipped: run_id null and skipped the reason.
type tickJSON struct {
	At      time.Time  `json:"at"`
	RunID   *uuid.UUID `json:"run_id"`
	Skipped string     `json:"skipped,omitempty"`
	FiredAt time.Time  `json:"fired_at"`
}

func newScheduleJSON(s *cloacina.ScheduleInfo) scheduleJSON {
	return scheduleJSON{Name: s.Name, Workflow: s.Workflow, Cron: s.Cron, Timezone: s.Timezone, CatchUp: string(s.CatchUp),
		MaxLatenessMS: s.MaxLateness.Milliseconds(), Overlap: string(s.Overlap), State: scheduleState(s), NextFireAt: utc(nextTick(s)),
		LastTickAt: utc(s.LastTickAt), LastRunID: s.LastRunID, LastFiredAt: utc(s.LastFiredAt), Fired: s.Fired,
		Skipped: s.Skipped, CreatedAt: s.CreatedAt.UTC(), UpdatedAt: s.UpdatedAt.UTC(), Input: s.Input}
}
