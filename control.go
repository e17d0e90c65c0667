package cloacina

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// lockRun locks one run for a control operation.
func lockRun(ctx context.Context, tx driver.Tx, id uuid.UUID) (*driver.Pipeline, error) {
	ps, err := tx.PipelineLock(ctx, []uuid.UUID{id})
	if err != nil {
		return nil, err
	}
	if len(ps) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrRunNotFound, id)
	}
	return ps[0], nil
}

// Cancel cancels a run, from any process: queued tasks are removed and
// marked Skipped, the run becomes Cancelled (Execute and Wait return), and
// the contexts of its running tasks are cancelled wherever they run; their
// outcome is still recorded when they return. Cancelling a cancelled run
// does nothing; cancelling a completed or failed run is ErrRunFinished.
func (r *Runner) Cancel(ctx context.Context, id uuid.UUID) error {
	return r.apiTx(ctx, func(ctx context.Context, tx driver.Tx, c *changes) error {
		p, err := lockRun(ctx, tx, id)
		if err != nil {
			return err
		}
		switch p.Status {
		case driver.PipelineCancelled:
			return nil
		case driver.PipelineCompleted, driver.PipelineFailed:
			return fmt.Errorf("cancel run %s: %w (%s)", id, ErrRunFinished, p.Status)
		}
		// Removing the outbox rows first means no runner can claim a task
		// of this run any more; the task list read next is then final.
		if _, err := tx.OutboxDelete(ctx, &driver.OutboxDeleteParams{PipelineID: id}); err != nil {
			return err
		}
		tasks, err := tx.TaskList(ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{id}})
		if err != nil {
			return err
		}
		c.skipUnstarted(id, tasks, "run cancelled")
		c.cs.Pipelines = append(c.cs.Pipelines, driver.PipelineUpdate{ID: id, FromStatus: p.Status, Status: driver.PipelineCancelled,
			Error: "cancelled on request", CompletedAt: ptr(c.now), Now: c.now})
		c.event(id, nil, EventPipelineCancelled, &EventData{Reason: "cancelled on request", DurationMS: ms(c.now.Sub(p.CreatedAt))})
		c.cs.Notify = append(c.cs.Notify, cancelPayload(id))
		c.cancelled = append(c.cancelled, id)
		c.finished = append(c.finished, id)
		return nil
	})
}

// Pause stops new tasks of a run from being claimed: its queued tasks stay
// Ready but leave the outbox; running tasks finish, and tasks they make
// ready wait too. Pausing a paused run does nothing; pausing a finished run
// is ErrRunFinished.
func (r *Runner) Pause(ctx context.Context, id uuid.UUID) error {
	return r.apiTx(ctx, func(ctx context.Context, tx driver.Tx, c *changes) error {
		p, err := lockRun(ctx, tx, id)
		if err != nil {
			return err
		}
		switch {
		case p.Status == driver.PipelinePaused:
			return nil
		case p.Status.Terminal():
			return fmt.Errorf("pause run %s: %w (%s)", id, ErrRunFinished, p.Status)
		}
		n, err := tx.OutboxDelete(ctx, &driver.OutboxDeleteParams{PipelineID: id})
		if err != nil {
			return err
		}
		c.cs.Pipelines = append(c.cs.Pipelines, driver.PipelineUpdate{ID: id, FromStatus: p.Status, Status: driver.PipelinePaused, Now: c.now})
		c.event(id, nil, EventPipelinePaused, &EventData{OutboxRows: &n})
		return nil
	})
}

// Resume puts a paused run's Ready tasks back in the outbox (each at its
// original due time) and lets the run continue. Resuming a run that is not
// paused does nothing; resuming a finished run is ErrRunFinished.
func (r *Runner) Resume(ctx context.Context, id uuid.UUID) error {
	return r.apiTx(ctx, func(ctx context.Context, tx driver.Tx, c *changes) error {
		p, err := lockRun(ctx, tx, id)
		if err != nil {
			return err
		}
		switch {
		case p.Status.Terminal():
			return fmt.Errorf("resume run %s: %w (%s)", id, ErrRunFinished, p.Status)
		case p.Status != driver.PipelinePaused:
			return nil
		}
		tasks, err := tx.TaskList(ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{id}})
		if err != nil {
			return err
		}
		n := 0
		for _, t := range tasks {
			if t.Status != driver.TaskReady {
				continue
			}
			at := c.now
			if t.AvailableAt != nil && t.AvailableAt.After(at) {
				at = *t.AvailableAt
			}
			c.enqueue(t, at)
			n++
		}
		to := driver.PipelineRunning
		if p.StartedAt == nil {
			to = driver.PipelinePending
		}
		c.cs.Pipelines = append(c.cs.Pipelines, driver.PipelineUpdate{ID: id, FromStatus: p.Status, Status: to, Now: c.now})
		c.event(id, nil, EventPipelineResumed, &EventData{OutboxRows: &n})
		return nil
	})
}
