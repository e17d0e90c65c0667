package cloacina

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

type taskScopeKey struct{}

// taskScope is what a running task's context carries about the task, and
// the state of its concurrency slot. A task gives its slot back while its
// goroutines wait (DeferUntil, Execute, Execution.Wait): from the moment the
// first one begins to wait until the last one is done.
type taskScope struct {
	r   *Runner
	svc *services
	rt  *runningTask
	// fnCtx is the context the task function receives (set before it is
	// called): a wait ends without a slot only when it ends, not when a
	// context the task derived for the wait ends (see cutShort).
	fnCtx context.Context

	// mu guards the slot's state; it is never held while blocking.
	mu       sync.Mutex
	holds    bool // the task holds a slot
	waits    int  // goroutines of the task waiting
	returned bool // the task function returned: waits that outlive it take no slot
	// subMu orders the sub-status writes of the task's waits and guards
	// deferred, the sub-status recorded. Lock order: subMu, then mu.
	subMu    sync.Mutex
	deferred bool
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
// task should then return. When ctx is one the task derived for the wait
// (a deadline of its own) and only that ends, DeferUntil returns its
// error having taken a slot again: the task goes on, as when cond failed.
// A panic in cond ends the wait as a failure does, a slot taken again,
// and goes on up. If cond holds at once, nothing is recorded. When
// several goroutines of one task wait at once (in DeferUntil,
// [Runner.Execute] or [Execution.Wait]), the task holds no slot until the
// last of them is done waiting, and that one takes the slot back.
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
	if err := s.beginWait(ctx, ""); err != nil {
		return err
	}
	waiting := true
	defer func() {
		if waiting {
			// cond panicked: the panic goes on up, and a task that
			// recovers from it goes on, as when cond failed.
			s.endWait(s.taskCtx(ctx))
		}
	}()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for !done {
		select {
		case <-ctx.Done():
			waiting = false
			return s.cutShort(ctx)
		case <-ticker.C:
		}
		if done, err = cond(ctx); err != nil {
			break
		}
	}
	// The task goes on, whether cond held or failed.
	waiting = false
	if rerr := s.endWait(s.taskCtx(ctx)); rerr != nil {
		return rerr
	}
	return err
}

// beginWait gives the task's slot back as one of its goroutines begins to
// wait, having recorded the deferred sub-status (task_deferred, with reason
// saying what the task waits for) unless it is recorded already.
func (s *taskScope) beginWait(ctx context.Context, reason string) error {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if !s.deferred {
		if err := s.setSubStatus(ctx, "deferred", EventTaskDeferred, reason); err != nil {
			return err
		}
		s.deferred = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waits++
	if s.holds {
		s.holds = false
		s.svc.releaseSlot()
	}
	return nil
}

// endWait ends a goroutine's wait. The last of the task's waits to end takes
// a slot again, so that no more tasks work at once than
// MaxConcurrentTasks, and records the end of the deferred sub-status
// (task_resumed); when ctx ends first, it returns ctx's error without a
// slot.
func (s *taskScope) endWait(ctx context.Context) error {
	s.mu.Lock()
	s.waits--
	last := s.waits == 0
	s.mu.Unlock()
	if !last {
		return nil
	}
	select {
	case s.svc.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.subMu.Lock()
	defer s.subMu.Unlock()
	s.mu.Lock()
	// Meanwhile another goroutine of the task may have begun a wait, or
	// ended one and taken a slot, or the task may have returned: then this
	// slot is not the task's.
	took := s.waits == 0 && !s.holds && !s.returned
	if took {
		s.holds = true
	} else {
		s.svc.releaseSlot()
	}
	s.mu.Unlock()
	if !took || !s.deferred {
		return nil
	}
	if err := s.setSubStatus(ctx, "", EventTaskResumed, ""); err != nil {
		return err
	}
	s.deferred = false
	return nil
}

// taskCtx is the task function's context, or ctx, a context of the task,
// if the function has none recorded.
func (s *taskScope) taskCtx(ctx context.Context) context.Context {
	if s.fnCtx != nil {
		return s.fnCtx
	}
	return ctx
}

// cutShort ends a wait that the end of ctx, the waiter's context, cut
// short, and returns ctx's error. When the task is cancelled (its
// function's context ended) the task should return, and takes no slot.
// When only ctx ended — a context the task derived to bound its wait —
// the task goes on: it takes a slot again first (task_resumed), as a wait
// that ends does, until the task is cancelled.
func (s *taskScope) cutShort(ctx context.Context) error {
	tctx := s.taskCtx(ctx)
	if tctx.Err() != nil {
		s.mu.Lock()
		s.waits--
		s.mu.Unlock()
		return ctx.Err()
	}
	if err := s.endWait(tctx); err != nil {
		return err
	}
	return ctx.Err()
}

// taskReturned gives back the slot of a task whose function has returned,
// if it holds one; waits it left running in goroutines of its own take
// none afterwards.
func (s *taskScope) taskReturned() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.returned = true
	if s.holds {
		s.holds = false
		s.svc.releaseSlot()
	}
}

// setSubStatus records a sub-status change and its event under the task's
// claim, retrying transient errors until ctx ends, as the task's other
// writes do: a database restart delays a wait's start or end, and does not
// fail a task that waited for days. A lost claim cancels the task. A retry
// first checks whether an earlier attempt committed after all (its commit
// reported lost): the sub-status is then set already, and its event
// recorded, once.
func (s *taskScope) setSubStatus(ctx context.Context, sub string, typ EventType, reason string) error {
	t := s.rt.task
	retry := false
	_, err := s.r.withTx(ctx, 0, func(ctx context.Context, tx driver.Tx, c *changes) error {
		if retry {
			cur, err := tx.TaskList(ctx, &driver.TaskListParams{IDs: []uuid.UUID{t.ID}})
			if err != nil {
				return err
			}
			if len(cur) == 1 && cur[0].SubStatus == sub && fenceOf(cur[0]) == fenceOf(t) && cur[0].Status == driver.TaskRunning {
				return nil
			}
		}
		retry = true
		held, err := tx.TaskSubStatusSet(ctx, &driver.TaskSubStatusParams{Fence: fenceOf(t), SubStatus: sub, Now: c.now})
		if err != nil {
			return err
		}
		if !held {
			return errClaimLost
		}
		c.event(t.PipelineID, &t.ID, typ, &EventData{Attempt: t.Attempt, Reason: reason})
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
