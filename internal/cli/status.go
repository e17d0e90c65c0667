package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloacina-go/cloacina"
)

func (a *app) statusCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the runners and each workflow's unfinished work",
		Long: `status lists the runners registered on the database (started and
heartbeating, or dead and not yet swept), with how long ago each last
heartbeated: one silent for longer than its RunnerTimeout (30s by default)
is dead, and stays listed until a leader sweeps it; LEADER marks the one
that sweeps for dead runners.

Then, for each workflow with unfinished work: the tasks waiting to be
claimed and how long the oldest has waited, the tasks delayed by a retry,
the tasks running (deferred ones among them) and the unfinished runs by
status. A growing OLDEST WAIT means the workflow's runners do not keep up,
or that none runs it. Ages and lateness are by the database's clock, which
recorded the times.

Last, the stored schedules, if any: active or paused, the next tick, and
how late it is. A tick late by more than moments means that no started
runner declares the schedule (see ` + "`cloacina schedules list`" + `).`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			return a.withRunner(cmd.Context(), d, openReadOnly, func(ctx context.Context, r *cloacina.Runner) error {
				runners, err := r.Runners(ctx)
				if err != nil {
					return fmt.Errorf("list runners: %w", err)
				}
				backlog, err := r.Backlog(ctx)
				if err != nil {
					return fmt.Errorf("read the backlog: %w", err)
				}
				schedules, err := r.Schedules(ctx)
				if err != nil {
					return fmt.Errorf("list schedules: %w", err)
				}
				// Ages by the database's clock, which recorded the times.
				now, err := r.Now(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					return json.NewEncoder(a.stdout).Encode(newStatusJSON(runners, backlog, schedules, now))
				}
				return writeStatus(a, runners, backlog, schedules, now)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object with the runners, the backlog and the schedules")
	return cmd
}

// writeStatus prints the runners, the backlog, then the schedules (if
// any), with waits and lateness measured at now.
func writeStatus(a *app, runners []cloacina.RunnerInfo, backlog []cloacina.Backlog, schedules []cloacina.ScheduleInfo, now time.Time) error {
	if len(runners) == 0 {
		fmt.Fprintln(a.stdout, "no runners")
	} else {
		tb := newTable("RUNNER", "NAME", "HOST", "PID", "STARTED", "HEARTBEAT", "HEARTBEAT AGE", "LEADER", "WORKFLOWS").alignRight(3, 6)
		for _, ri := range runners {
			leader := "-"
			if ri.Leader {
				leader = "yes"
			}
			tb.add(ri.ID, ri.Name, ri.Host, strconv.Itoa(ri.PID), formatTime(ri.StartedAt), formatTime(ri.HeartbeatAt),
				formatDuration(max(now.Sub(ri.HeartbeatAt), 0)), leader, dash(strings.Join(ri.Workflows, ",")))
		}
		if err := tb.render(a.stdout); err != nil {
			return err
		}
	}
	fmt.Fprintln(a.stdout)
	if err := writeBacklog(a, backlog, now); err != nil {
		return err
	}
	if len(schedules) == 0 {
		return nil
	}
	fmt.Fprintln(a.stdout)
	tb := newTable("SCHEDULE", "WORKFLOW", "STATE", "NEXT TICK", "LATE").alignRight(4)
	for i := range schedules {
		s := &schedules[i]
		tb.add(s.Name, s.Workflow, scheduleState(s), formatTimePtr(nextTick(s)), formatLate(s, now))
	}
	return tb.render(a.stdout)
}

// formatLate is how late an active schedule's next tick is at now, or
// "-" when it is not due yet (or paused).
func formatLate(s *cloacina.ScheduleInfo, now time.Time) string {
	if late := scheduleLate(s, now); late > 0 {
		return formatDuration(late)
	}
	return "-"
}

// scheduleLate is how long past its time an active schedule's next tick
// is at now; zero when not due or paused.
func scheduleLate(s *cloacina.ScheduleInfo, now time.Time) time.Duration {
	if s.Paused {
		return 0
	}
	return max(now.Sub(s.NextFireAt), 0)
}

// writeBacklog prints each workflow's unfinished work, with waits
// measured at now.
func writeBacklog(a *app, backlog []cloacina.Backlog, now time.Time) error {
	if len(backlog) == 0 {
		_, err := fmt.Fprintln(a.stdout, "no unfinished work")
		return err
	}
	tb := newTable("WORKFLOW", "READY", "OLDEST WAIT", "DELAYED", "RUNNING", "DEFERRED", "PENDING RUNS", "RUNNING RUNS", "PAUSED RUNS").
		alignRight(1, 2, 3, 4, 5, 6, 7, 8)
	for _, b := range backlog {
		wait := "-"
		if b.OldestReadyAt != nil {
			wait = formatDuration(max(now.Sub(*b.OldestReadyAt), 0))
		}
		tb.add(b.Workflow, strconv.Itoa(b.Ready), wait, strconv.Itoa(b.Delayed), strconv.Itoa(b.Running), strconv.Itoa(b.Deferred),
			strconv.Itoa(b.PendingRuns), strconv.Itoa(b.RunningRuns), strconv.Itoa(b.PausedRuns))
	}
	return tb.render(a.stdout)
}

// statusJSON is `status --json`.
type statusJSON struct {
	Runners   []runnerJSON         `json:"runners"`
	Backlog   []backlogJSON        `json:"backlog"`
	Schedules []scheduleStatusJSON `json:"schedules"`
}

// scheduleStatusJSON is a schedule in `status --json`: next_fire_at is
// null while it is paused; late_ms is how late its next tick is.
type scheduleStatusJSON struct {
	Name       string     `json:"name"`
	Workflow   string     `json:"workflow"`
	State      string     `json:"state"`
	NextFireAt *time.Time `json:"next_fire_at"`
	LateMS     int64      `json:"late_ms"`
}

type runnerJSON struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Host        string    `json:"host"`
	PID         int       `json:"pid"`
	Workflows   []string  `json:"workflows"`
	StartedAt   time.Time `json:"started_at"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
	Leader      bool      `json:"leader"`
}

type backlogJSON struct {
	Workflow      string     `json:"workflow"`
	Ready         int        `json:"ready"`
	OldestReadyAt *time.Time `json:"oldest_ready_at"`
	Delayed       int        `json:"delayed"`
	Running       int        `json:"running"`
	Deferred      int        `json:"deferred"`
	PendingRuns   int        `json:"pending_runs"`
	RunningRuns   int        `json:"running_runs"`
	PausedRuns    int        `json:"paused_runs"`
}

func newStatusJSON(runners []cloacina.RunnerInfo, backlog []cloacina.Backlog, schedules []cloacina.ScheduleInfo, now time.Time) statusJSON {
	j := statusJSON{Runners: make([]runnerJSON, len(runners)), Backlog: make([]backlogJSON, len(backlog)),
		Schedules: make([]scheduleStatusJSON, len(schedules))}
	for i := range schedules {
		s := &schedules[i]
		j.Schedules[i] = scheduleStatusJSON{Name: s.Name, Workflow: s.Workflow, State: scheduleState(s), NextFireAt: utc(nextTick(s)),
			LateMS: scheduleLate(s, now).Milliseconds()}
	}
	for i, ri := range runners {
		workflows := ri.Workflows
		if workflows == nil {
			workflows = []string{}
		}
		j.Runners[i] = runnerJSON{ID: ri.ID, Name: ri.Name, Host: ri.Host, PID: ri.PID, Workflows: workflows,
			StartedAt: ri.StartedAt.UTC(), HeartbeatAt: ri.HeartbeatAt.UTC(), Leader: ri.Leader}
	}
	for i, b := range backlog {
		j.Backlog[i] = backlogJSON{Workflow: b.Workflow, Ready: b.Ready, OldestReadyAt: utc(b.OldestReadyAt), Delayed: b.Delayed,
			Running: b.Running, Deferred: b.Deferred, PendingRuns: b.PendingRuns, RunningRuns: b.RunningRuns, PausedRuns: b.PausedRuns}
	}
	return j
}
