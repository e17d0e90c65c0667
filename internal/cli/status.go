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
		Short: "Show the live runners and each workflow's unfinished work",
		Long: `status lists the runners registered on the database (started and
heartbeating, or dead and not yet swept); LEADER marks the one that sweeps
for dead runners.

Then, for each workflow with unfinished work: the tasks waiting to be
claimed and how long the oldest has waited, the tasks delayed by a retry,
the tasks running (deferred ones among them) and the unfinished runs by
status. A growing OLDEST WAIT means the workflow's runners do not keep up,
or that none runs it.`,
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
				if asJSON {
					return json.NewEncoder(a.stdout).Encode(newStatusJSON(runners, backlog))
				}
				return writeStatus(a, runners, backlog, time.Now())
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object with the runners and the backlog")
	return cmd
}

// writeStatus prints the runners, then the backlog, with waits measured
// at now.
func writeStatus(a *app, runners []cloacina.RunnerInfo, backlog []cloacina.Backlog, now time.Time) error {
	if len(runners) == 0 {
		fmt.Fprintln(a.stdout, "no runners")
	} else {
		tb := newTable("RUNNER", "NAME", "HOST", "PID", "STARTED", "HEARTBEAT", "LEADER", "WORKFLOWS").alignRight(3)
		for _, ri := range runners {
			leader := "-"
			if ri.Leader {
				leader = "yes"
			}
			tb.add(ri.ID, ri.Name, ri.Host, strconv.Itoa(ri.PID), formatTime(ri.StartedAt), formatTime(ri.HeartbeatAt),
				leader, dash(strings.Join(ri.Workflows, ",")))
		}
		if err := tb.render(a.stdout); err != nil {
			return err
		}
	}
	fmt.Fprintln(a.stdout)
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
	Runners []runnerJSON  `json:"runners"`
	Backlog []backlogJSON `json:"backlog"`
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

func newStatusJSON(runners []cloacina.RunnerInfo, backlog []cloacina.Backlog) statusJSON {
	j := statusJSON{Runners: make([]runnerJSON, len(runners)), Backlog: make([]backlogJSON, len(backlog))}
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
