package cloacina

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// DeleteRunsOpts tunes DeleteRunsBefore and CountRunsBefore. A nil
// *DeleteRunsOpts means defaults.
type DeleteRunsOpts struct {
	// BatchSize is how many runs one transaction deletes (each with its
	// tasks), so retention never holds locks for long. Default: 500. A
	// batch's time grows with its runs' tasks and their events, which it
	// names: on SQLite, where it holds the one write lock, 50 runs of a
	// 1,000-task workflow (50,000 task rows, 250,000 task events) took
	// 1.3 s on a 2-core machine, which every runner waits for; for wide
	// workflows choose BatchSize so that a batch holds some thousands of
	// tasks.
	BatchSize int
	// Progress, if set, is called after each batch with the total deleted
	// so far.
	Progress func(deleted int64)
}

// batchSize is the batch size o asks for, or the default.
func (o *DeleteRunsOpts) batchSize() (int, error) {
	switch {
	case o == nil || o.BatchSize == 0:
		return 500, nil
	case o.BatchSize < 0:
		return 0, errors.New("cloacina: DeleteRunsOpts.BatchSize must be positive (or 0 for the default, 500)")
	}
	return o.BatchSize, nil
}

// CountRunsBefore counts the runs DeleteRunsBefore would delete with the
// same cutoff, so a dry run reports what the real one deletes. A bad
// opts.BatchSize fails it as it fails the deletion.
func (r *Runner) CountRunsBefore(ctx context.Context, cutoff time.Time, opts *DeleteRunsOpts) (int64, error) {
	if _, err := opts.batchSize(); err != nil {
		return 0, err
	}
	db, err := r.reader(ctx)
	if err != nil {
		return 0, err
	}
	n, err := db.PipelineCountFinished(ctx, &driver.PipelineCountParams{Before: ceilMicro(cutoff)})
	return n, r.closedErr(err)
}

// DeleteRunsBefore deletes the runs that finished (Completed, Failed or
// Cancelled) before cutoff, with their tasks and their contexts, one batch
// per transaction, and returns how many it deleted. Unfinished runs
// (Pending, Running or Paused) are kept however old, and so is a Cancelled
// run while a task of it has not returned yet (its outcome is still to be
// recorded). A run's events are not deleted with it: they are the audit
// log, with a retention of their own, and DeleteEventsBefore deletes the
// events of runs whose row is gone as those of finished runs. They still
// name their task ([Event.TaskName]): the batch that deletes a run's tasks
// first copies each task's name into the run's events. The record of
// the schedule tick that started a run goes with it, and the records of
// ticks skipped (OverlapSkip) before cutoff go too; a schedule's Fired and
// Skipped counts stay. A child run is not deleted with its parent; it keeps
// its parent's id. If ctx ends midway, the batches already deleted stay
// deleted. A batch whose commit was reported failed is counted if it
// committed all the same (its reply lost), and deleted again if not.
func (r *Runner) DeleteRunsBefore(ctx context.Context, cutoff time.Time, opts *DeleteRunsOpts) (int64, error) {
	batch, err := opts.batchSize()
	if err != nil {
		return 0, err
	}
	cutoff = ceilMicro(cutoff) // see ceilMicro: "before" a finer cutoff
	var progress func(int64)
	if opts != nil {
		progress = opts.Progress
	}
	var total int64
	// Until a batch finds nothing: on PostgreSQL a batch skips the runs
	// other transactions hold, so a short batch does not mean the end.
	for {
		var n int
		var tried []uuid.UUID // what an attempt deleted before its commit failed
		err := r.apiTx(ctx, func(ctx context.Context, tx driver.Tx, c *changes) error {
			if len(tried) > 0 {
				// A failed commit may have committed all the same (its
				// reply lost): its runs are then gone, and the batch is
				// counted, not replaced by the next one.
				left, err := tx.PipelineList(ctx, &driver.PipelineListParams{IDs: tried, Limit: 1})
				if err != nil {
					return err
				}
				if len(left) == 0 {
					n = len(tried)
					return nil
				}
			}
			ids, err := tx.PipelineDeleteFinished(ctx, &driver.PipelineDeleteParams{Before: cutoff, Limit: batch})
			if err != nil {
				return err
			}
			n, tried = len(ids), ids
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("delete runs: %w", err)
		}
		if n == 0 {
			break
		}
		total += int64(n)
		if progress != nil {
			progress(total)
		}
	}
	for {
		var n int
		err := r.apiTx(ctx, func(ctx context.Context, tx driver.Tx, c *changes) error {
			var err error
			n, err = tx.ScheduleTickDeleteSkipped(ctx, &driver.ScheduleTickDeleteParams{Before: cutoff, Limit: batch})
			return err
		})
		if err != nil {
			return total, fmt.Errorf("delete the records of skipped schedule ticks: %w", err)
		}
		if n == 0 {
			return total, nil
		}
	}
}
