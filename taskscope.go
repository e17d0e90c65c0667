package cloacina

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

type taskScopeKey struct{}

// taskScope is what a running task's context carries about the task.
type taskScope struct {
	r   *Runner
	svc *services
	rt  *runningTask
}

// TaskInfo identifies the task attempt a task function is running.
type TaskInfo struct {
	RunID         uuid.UUID
	TaskID        uuid.UUID
	Workflow      string
	Task          string
	Attempt       int
	MaxAttempts   int
	RecoveryCount int
	RunnerID      string
}

// TaskInfoFrom returns the identity of the task whose context ctx is (or
// derives from), and false outside a task.
func TaskInfoFrom(ctx context.Context) (TaskInfo, bool) {
	s, ok := ctx.Value(taskScopeKey{}).(*taskScope)
	if !ok {
		return TaskInfo{}, false
	}
	t := s.rt.task
	return TaskInfo{RunID: t.PipelineID, TaskID: t.ID, Workflow: t.WorkflowName, Task: t.Name, Attempt: t.Attempt,
		MaxAttempts: t.MaxAttempts, RecoveryCount: t.RecoveryCount, RunnerID: t.RunnerID}, true
}

// ErrNotInTask is returned by DeferUntil called outside a task function.
var ErrNotInTask = errors.New("not called from a task: pass the context the task function received")

// DeferUntil waits, from inside a task, until cond reports true, polling it
// every interval. While it waits the task gives its concurrency slot back,
// so a runner can wait on many external conditions (a file arriving, an
// approval) without blocking other work; it takes a slot again before it
// returns. The task's sub-status is "deferred" meanwhile, and the waits are
// recorded as task_deferred and task_resumed events. It returns nil when
// cond held, or cond's error if it failed, having taken a slot again
// either way; or the context's error, without a slot, when the task is
// cancelled (run cancelled, timeout, claim lost, runner stopping): the
// task should then return.
// If cond holds at once, nothing is recorded.
func DeferUntil(ctx context.Context, interval time.Duration, cond func(context.Context) (bool, error)) error {
	s, ok := ctx.Value(taskScopeKey{}).(*taskScope)
	if !ok {
		return fmt.Errorf("cloacina: DeferUntil: %w", ErrNotInTask)
	}
	if interval <= 0 {
		return fmt.Errorf("cloacina: DeferUntil: interval %s must be positive", interval)
	}
	done, err := cond(ctx)
	if err != nil || done {
		return err
	}
	if err := s.setSubStatus(ctx, "deferred", EventTaskDeferred); err != nil {
		return err
	}
	s.rt.holdsSlot.Store(false)
	s.svc.releaseSlot()

	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for !done {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
		if done, err = cond(ctx); err != nil {
			break
		}
	}
	// The task goes on, whether cond held or failed: it takes a slot
	// first, so that no more tasks work at once than MaxConcurrentTasks.
	select {
	case s.svc.slots <- struct{}{}:
		s.rt.holdsSlot.Store(true)
	case <-ctx.Done():
		return ctx.Err()
	}
	if rerr := s.setSubStatus(ctx, "", EventTaskResumed); rerr != nil {
		return rerr
	}
	return err
}

// setSubStatus records a sub-status change and its event under the task's
// claim. A lost claim cancels the task.
func (s *taskScope) setSubStatus(ctx context.Context, sub string, typ EventType) error {
	t := s.rt.task
	_, err := s.r.withTx(ctx, apiTxAttempts, func(ctx context.Context, tx driver.Tx, c *changes) error {
		held, err := tx.TaskSubStatusSet(ctx, &driver.TaskSubStatusParams{Fence: fenceOf(t), SubStatus: sub, Now: c.now})
		if err != nil {
			return err
		}
		if !held {
			return errClaimLost
		}
		c.event(t.PipelineID, &t.ID, typ, &EventData{Attempt: t.Attempt})
		return nil
	})
	if errors.Is(err, errClaimLost) {
		s.rt.cancel(errClaimLost)
	}
	if err != nil {
		return fmt.Errorf("cloacina: record %s: %w", typ, err)
	}
	return nil
}
