package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/cloacina-go/cloacina"
)

const defaultRunLimit = 50

var runStatuses = []string{
	string(cloacina.PipelinePending), string(cloacina.PipelineRunning), string(cloacina.PipelinePaused),
	string(cloacina.PipelineCompleted), string(cloacina.PipelineFailed), string(cloacina.PipelineCancelled),
}

func (a *app) runsCommand() *cobra.Command {
	return groupCommand("runs", "List, inspect and control runs (from any process)",
		a.runsListCommand(), a.runsGetCommand(),
		a.runControlCommand("cancel", "Cancel a run and its unfinished child runs: queued tasks are skipped, running tasks are told to stop",
			(*cloacina.Runner).Cancel),
		a.runControlCommand("pause", "Pause a run: no new task of it starts until it is resumed",
			(*cloacina.Runner).Pause),
		a.runControlCommand("resume", "Resume a paused run",
			(*cloacina.Runner).Resume),
		a.runsCleanupCommand(),
	)
}

func (a *app) runsListCommand() *cobra.Command {
	statuses := &choiceFlag{kind: "status", allowed: runStatuses}
	var workflow, parent string
	var asJSON bool
	var since, until timeFlag
	after := &idFlag{what: "run"}
	limit := countFlag(defaultRunLimit)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List runs, newest first",
		Long: `list prints the newest runs first, at most --limit of them (50 unless
given), optionally only those in some statuses, of one workflow, started by
tasks of one run, or created in a time range. When --limit leaves older
matching runs out, a line on stderr says so and gives the ID to page on
from with --after.`,
		Example: `  cloacina runs list --status running --status paused
  cloacina runs list --parent <run-id>    # the runs that tasks of a run started
  cloacina runs list --status failed --since 1d
  cloacina runs list --after <last-id-shown>   # the next page, older
  cloacina runs list --status failed --json | jq -r .id`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := &cloacina.ListOpts{Workflow: workflow, Limit: int(limit)}
			var err error
			if opts.Since, opts.Until, err = timeRange(cmd, &since, &until, "run"); err != nil {
				return err
			}
			if parent != "" {
				id, err := parseID(parent, "parent run")
				if err != nil {
					return usageErrorf(cmd, "--parent: %v", err)
				}
				opts.ParentRunID = &id
			}
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			return a.withRunner(cmd.Context(), d, openReadOnly, func(ctx context.Context, r *cloacina.Runner) error {
				if opts.Since, opts.Until, err = atDatabaseTime(ctx, r, &since, &until, opts.Since, opts.Until); err != nil {
					return err
				}
				for _, s := range statuses.values {
					opts.Statuses = append(opts.Statuses, cloacina.PipelineStatus(s))
				}
				if after.id != nil {
					res, err := r.Get(ctx, *after.id)
					if err != nil {
						return runError(*after.id, err)
					}
					opts.After = &cloacina.RunSummary{ID: res.ID, CreatedAt: res.CreatedAt}
				}
				runs, err := r.List(ctx, opts)
				if err != nil {
					return fmt.Errorf("list runs: %w", err)
				}
				// noteOlder tells, on stderr, that the limit left older
				// matching runs out.
				noteOlder := func() error {
					if len(runs) < opts.Limit {
						return nil
					}
					next := *opts
					next.Limit, next.After = 1, runs[len(runs)-1]
					older, err := r.List(ctx, &next)
					if err != nil {
						return fmt.Errorf("list runs: %w", err)
					}
					if len(older) == 0 {
						return nil
					}
					_, err = fmt.Fprintf(a.stderr, "cloacina: %s shown, older ones left out: page on with --after %s, or raise --limit\n",
						plural(len(runs), "run"), runs[len(runs)-1].ID)
					return err
				}
				if asJSON {
					if err := writeJSONLines(a.stdout, runs, func(r *cloacina.RunSummary) any { return newRunSummaryJSON(r) }); err != nil {
						return err
					}
					return noteOlder()
				}
				if len(runs) == 0 {
					_, err := fmt.Fprintln(a.stdout, "no runs")
					return err
				}
				tb := newTable("ID", "WORKFLOW", "STATUS", "CREATED", "DURATION", "PARENT", "ERROR").alignRight(4)
				for _, run := range runs {
					dur := "-"
					if run.CompletedAt != nil {
						dur = formatDuration(run.CompletedAt.Sub(run.CreatedAt))
					}
					parent := "-"
					if run.ParentRunID != nil {
						parent = run.ParentRunID.String()
					}
					tb.add(run.ID.String(), run.Workflow, string(run.Status), formatTime(run.CreatedAt), dur, parent, firstLine(run.Error))
				}
				if err := tb.render(a.stdout); err != nil {
					return err
				}
				return noteOlder()
			})
		},
	}
	cmd.Flags().Var(statuses, "status", "only runs in this status (repeatable, or comma-separated)")
	cmd.Flags().StringVar(&workflow, "workflow", "", "only runs of this workflow")
	cmd.Flags().StringVar(&parent, "parent", "", "only runs started by tasks of this run (its children)")
	cmd.Flags().Var(&limit, "limit", "show at most this many runs")
	cmd.Flags().Var(after, "after", "only runs older than this one (the last ID shown pages on)")
	cmd.Flags().Var(&since, "since", "only runs created at or after this time, or this long ago (90m, 1d, 2026-11-27T05:00:00Z; a time without a zone is UTC)")
	cmd.Flags().Var(&until, "until", "only runs created before this time, or this long ago")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON Lines, one run a line")
	return cmd
}

func (a *app) runsGetCommand() *cobra.Command {
	var (
		taskName string
		asJSON   bool
	)
	cmd := &cobra.Command{
		Use:   "get <run-id>",
		Short: "Show a run and its tasks, or one task with its contexts (--task)",
		Example: `  cloacina runs get 01a21b50-4738-760d-8530-6a5e209b874e
  cloacina runs get 01a21b50-4738-760d-8530-6a5e209b874e --task transform_b   # what it received and produced`,
		Args: exactArgs(1, "one run id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0], "run")
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			if cmd.Flags().Changed("task") && taskName == "" {
				return usageErrorf(cmd, "--task needs a task name, as `cloacina runs get %s` lists them", id)
			}
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			return a.withRunner(cmd.Context(), d, openReadOnly, func(ctx context.Context, r *cloacina.Runner) error {
				res, err := r.Get(ctx, id)
				if err != nil {
					return runError(id, err)
				}
				if taskName != "" {
					return writeTaskOf(ctx, a, r, res, taskName, asJSON)
				}
				if asJSON {
					return json.NewEncoder(a.stdout).Encode(newRunJSON(res))
				}
				var parent *cloacina.ExecutionResult
				if res.ParentRunID != nil {
					// The parent names the task; a parent removed by hand
					// leaves just the ids.
					if parent, err = r.Get(ctx, *res.ParentRunID); err != nil && !errors.Is(err, cloacina.ErrRunNotFound) {
						return runError(*res.ParentRunID, err)
					}
				}
				return writeRun(a, res, parent)
			})
		},
	}
	cmd.Flags().StringVar(&taskName, "task", "", "show this task of the run: its state, the context it received and the one it produced")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the run (or the task) as one JSON object")
	return cmd
}

// taskOf returns the named task of run res, or an error naming its tasks.
func taskOf(res *cloacina.ExecutionResult, name string) (*cloacina.TaskResult, error) {
	if tr := res.Task(name); tr != nil {
		return tr, nil
	}
	names := make([]string, len(res.Tasks))
	for i, t := range res.Tasks {
		names[i] = t.Name
	}
	return nil, fmt.Errorf("run %s has no task %q: its tasks are %s", res.ID, name, strings.Join(names, ", "))
}

// writeTaskOf prints the named task of run res with its contexts.
func writeTaskOf(ctx context.Context, a *app, r *cloacina.Runner, res *cloacina.ExecutionResult, name string, asJSON bool) error {
	tr, err := taskOf(res, name)
	if err != nil {
		return err
	}
	t, err := r.GetTask(ctx, tr.ID)
	if err != nil {
		return fmt.Errorf("task %s: %w", tr.ID, err)
	}
	if asJSON {
		return json.NewEncoder(a.stdout).Encode(newTaskDetailJSON(t))
	}
	fields := newTable()
	fields.add("task", t.Name+" ("+t.ID.String()+")")
	fields.add("run", t.RunID.String()+" ("+t.Workflow+")")
	fields.add("status", string(t.Status))
	fields.add("attempts", fmt.Sprintf("%d of %d", t.Attempts, t.MaxAttempts))
	if t.RunnerID != "" {
		fields.add("runner", t.RunnerID)
	}
	if t.DueAt != nil {
		fields.add("due", formatTime(*t.DueAt))
	}
	if t.Recoveries > 0 {
		fields.add("recoveries", strconv.Itoa(t.Recoveries))
	}
	fields.add("started", formatTimePtr(t.StartedAt))
	fields.add("completed", formatTimePtr(t.CompletedAt))
	if t.StartedAt != nil && t.CompletedAt != nil && t.Status != cloacina.TaskStatusSkipped {
		fields.add("duration", formatDuration(t.Duration))
	}
	if t.Error != "" {
		fields.add("error", firstLine(t.Error))
	}
	fields.add("input", contextText(t.Input))
	fields.add("output", contextText(t.Output))
	return fields.render(a.stdout)
}

// contextText is a context as one line of JSON, or "-" for none.
func contextText(c *cloacina.Context) string {
	if c == nil {
		return "-"
	}
	return c.String()
}

// writeRun prints a run and its tasks; parent, if known, is the run that
// started it.
func writeRun(a *app, res, parent *cloacina.ExecutionResult) error {
	fields := newTable()
	fields.add("run", res.ID.String())
	fields.add("workflow", fmt.Sprintf("%s (version %.12s)", res.Workflow, res.WorkflowVersion))
	if res.ParentRunID != nil {
		fields.add("parent", res.ParentRunID.String())
	}
	if res.ParentTaskID != nil {
		task := res.ParentTaskID.String()
		if parent != nil {
			for _, t := range parent.Tasks {
				if t.ID == *res.ParentTaskID {
					task = t.Name + " (" + task + ")"
				}
			}
		}
		fields.add("parent task", task)
	}
	fields.add("status", string(res.Status))
	fields.add("created", formatTime(res.CreatedAt))
	fields.add("started", formatTimePtr(res.StartedAt))
	fields.add("completed", formatTimePtr(res.CompletedAt))
	if res.CompletedAt != nil {
		fields.add("duration", formatDuration(res.Duration))
	}
	if res.Error != "" {
		fields.add("error", firstLine(res.Error))
	}
	fields.add("input", contextText(res.Input))
	if res.Context != nil {
		fields.add("context", res.Context.String())
	}
	if err := fields.render(a.stdout); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout)
	tasks := newTable("TASK", "STATUS", "ATTEMPTS", "DURATION", "TASK ID", "ERROR").alignRight(2, 3)
	for _, t := range res.Tasks {
		dur := "-"
		if t.CompletedAt != nil && t.StartedAt != nil {
			dur = formatDuration(t.Duration)
		}
		tasks.add(t.Name, string(t.Status), strconv.Itoa(t.Attempts), dur, t.ID.String(), firstLine(t.Error))
	}
	return tasks.render(a.stdout)
}

// runControlCommand builds `runs cancel|pause|resume <run-id>`.
func (a *app) runControlCommand(name, short string, op func(*cloacina.Runner, context.Context, uuid.UUID) error) *cobra.Command {
	return &cobra.Command{
		Use:   name + " <run-id>",
		Short: short,
		Args:  exactArgs(1, "one run id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0], "run")
			if err != nil {
				return usageErrorf(cmd, "%v", err)
			}
			d, err := a.database(cmd)
			if err != nil {
				return err
			}
			return a.withRunner(cmd.Context(), d, openExisting, func(ctx context.Context, r *cloacina.Runner) error {
				if err := op(r, ctx, id); err != nil {
					return runError(id, err)
				}
				res, err := r.Get(ctx, id)
				if err != nil {
					return runError(id, err)
				}
				_, err = fmt.Fprintf(a.stdout, "run %s is %s\n", id, res.Status)
				return err
			})
		},
	}
}

// runError explains a failed run lookup or control operation.
func runError(id uuid.UUID, err error) error {
	switch {
	case errors.Is(err, cloacina.ErrRunNotFound):
		return fmt.Errorf("no run %s in this database: list runs with `cloacina runs list`", id)
	case errors.Is(err, cloacina.ErrRunFinished):
		return fmt.Errorf("run %s already finished: only pending, running and paused runs can be cancelled, paused or resumed (%v)", id, err)
	}
	return fmt.Errorf("run %s: %w", id, err)
}
