package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloacina-go/cloacina"
)

// defaultRunCleanupBatch is the runs one transaction of `runs cleanup`
// deletes, each with its tasks.
const defaultRunCleanupBatch = 500

func (a *app) runsCleanupCommand() *cobra.Command {
	var (
		olderThan ageFlag
		dryRun    bool
		batchSize = countFlag(defaultRunCleanupBatch)
	)
	cmd := &cobra.Command{
		Use:   "cleanup --older-than AGE",
		Short: "Delete finished runs, with their tasks, that ended longer ago than an age",
		Long: `cleanup deletes the runs that finished (completed, failed or cancelled) more
than --older-than ago, with their tasks and contexts, in batches of
--batch-size runs, one transaction each, so it never holds locks for long.
A batch's time grows with its runs' tasks and their events: for workflows of
hundreds of tasks, lower --batch-size so that a batch holds some thousands of
tasks.
AGE is a Go duration that may start with days: 30d, 12h, 1d12h, counted back
from the database's clock, which recorded the runs' times.

Unfinished runs (pending, running or paused) are kept however old, and so is
a cancelled run while a task of it has not returned yet. The records of
schedule ticks skipped (OverlapSkip) before the age go too, with or without
a run to delete; ` + "`cloacina schedules list`" + ` still counts them. The runs' events
stay, still naming their tasks in ` + "`cloacina events list`" + `: the event log has a
retention of its own, and ` + "`cloacina events cleanup`" + ` deletes the events of
deleted runs as those of finished ones. With --dry-run
it only counts what the same command would delete.`,
		Example: `  cloacina runs cleanup --older-than 90d --dry-run
  cloacina runs cleanup --older-than 90d && cloacina events cleanup --older-than 90d`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCleanup(cmd, olderThan, dryRun, "90d", func(ctx context.Context, r *cloacina.Runner, cutoff time.Time) error {
				what := fmt.Sprintf("that ended more than %s ago (before %s)", olderThan.raw, formatTime(cutoff))
				opts := &cloacina.DeleteRunsOpts{BatchSize: int(batchSize)}
				total, err := r.CountRunsBefore(ctx, cutoff, opts)
				if err != nil {
					return fmt.Errorf("count runs: %w", err)
				}
				switch {
				case dryRun:
					_, err = fmt.Fprintf(a.stdout, "would delete %d finished runs %s; nothing deleted (dry run)\n", total, what)
					return err
				case total == 0:
					// Still called: it deletes the records of skipped
					// schedule ticks as old, which pile up behind a
					// long-running run even when no run is old enough.
					if _, err := r.DeleteRunsBefore(ctx, cutoff, opts); err != nil {
						return err
					}
					_, err = fmt.Fprintf(a.stdout, "no finished runs %s to delete\n", what)
					return err
				}
				deleted, err := a.deleteInBatches("runs", total, func(progress func(int64)) (int64, error) {
					opts.Progress = progress
					return r.DeleteRunsBefore(ctx, cutoff, opts)
				})
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(a.stdout, "deleted %d finished runs %s; their events stay until `cloacina events cleanup`\n", deleted, what)
				return err
			})
		},
	}
	cmd.Flags().Var(&olderThan, "older-than", "delete runs that ended longer ago than this age, e.g. 90d or 12h (required)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "count the runs that would be deleted; delete nothing")
	cmd.Flags().Var(&batchSize, "batch-size", "runs deleted per transaction")
	return cmd
}
