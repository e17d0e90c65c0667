package cloacina

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/cloacina-go/cloacina/driver"
)

// taskResult is the outcome of one attempt, handed to the completer.
type taskResult struct {
	task     *driver.Task
	output   json.RawMessage // on success
	err      error
	cause    error // why the task's context was cancelled, if it was
	started  time.Time
	finished time.Time
	// recovery is set, with the reason, when the result comes from the
	// sweep: the task's runner died and the task did not finish.
	recovery string
	// overCap marks a recovery decided at claim: the task was reset more
	// often than MaxRecoveries by a leader that could not abandon it (see
	// execute), so it is abandoned without counting another recovery.
	overCap bool
}

// execute runs one claimed task, claimed by a transaction that began at
// claimed (since clockEpoch), and returns its result, in res, plus a
// channel closed when the task function has returned: with a timeout the
// result can be known (and recorded) before a function that ignores its
// context gives up.
func (r *Runner) execute(ctx context.Context, t *driver.Task, claimed time.Duration, res *taskResult) (*taskResult, <-chan struct{}) {
	*res = taskResult{task: t, started: r.now()}
	finish := func(err error) (*taskResult, <-chan struct{}) {
		res.err = err
		res.finished = r.now()
		res.cause = context.Cause(ctx)
		return res, returned
	}
	wf, err := r.workflow(t.WorkflowName)
	if err != nil {
		return finish(Permanent(err))
	}
	def := wf.byName[t.Name]
	if def == nil {
		return finish(Permanent(fmt.Errorf("task %q is not part of workflow %q as registered in this runner (version %.12s): the workflow changed shape under the same name",
			t.Name, t.WorkflowName, wf.version)))
	}
	if t.RecoveryCount > r.cfg.MaxRecoveries {
		// Abandoning decides downstream readiness, which needs the
		// workflow, so a leader that does not run it resets the task past
		// the cap instead: the first runner that does run it abandons it
		// here, rather than run a task that keeps killing its runners.
		res.recovery = fmt.Sprintf("runner %s claimed it past MaxRecoveries (%d)", r.id, r.cfg.MaxRecoveries)
		res.overCap = true
		return finish(errors.New(res.recovery))
	}
	tc, err := contextFromJSON(t.Input)
	if err != nil {
		return finish(Permanent(fmt.Errorf("task %q: %w", t.Name, err)))
	}
	if err := r.claimHeld(ctx, t, claimed); err != nil {
		return finish(err)
	}
	timeout := def.Timeout
	if timeout == 0 {
		timeout = r.cfg.TaskTimeout
	}
	scope, _ := ctx.Value(taskScopeKey{}).(*taskScope)
	if timeout <= 0 {
		if scope != nil {
			scope.fnCtx = ctx
		}
		err := callTask(ctx, def.Run, tc)
		if err == nil {
			res.output, err = tc.MarshalJSON()
		}
		return finish(err)
	}

	tctx, cancel := context.WithTimeoutCause(ctx, timeout, errTimeout)
	if scope != nil {
		scope.fnCtx = tctx
	}
	done := make(chan struct{})
	fnErr := errTaskExited // unless callTask returns
	go func() {
		defer close(done)
		defer cancel()
		fnErr = callTask(tctx, def.Run, tc)
	}()
	timedOut := func() error {
		return fmt.Errorf("task %q: %w after %s", t.Name, ErrTaskTimeout, timeout)
	}
	select {
	case <-done:
	case <-tctx.Done():
		wait := timeoutGrace
		if !errors.Is(context.Cause(tctx), errTimeout) {
			// Cancelled for another reason (the run cancelled, the runner
			// stopping): the function's own error tells, unless it is
			// still running when its timeout would have ended it.
			deadline, _ := tctx.Deadline()
			wait = time.Until(deadline) + timeoutGrace
		}
		select {
		case <-done:
		case <-time.After(wait):
			// The function ignores its context: record the timeout now and
			// keep the slot until it returns.
			res.err = timedOut()
			res.finished = r.now()
			return res, done
		}
	}
	err = fnErr
	switch {
	case err != nil && errors.Is(context.Cause(tctx), errTimeout):
		err = fmt.Errorf("%w: %w", timedOut(), err)
	case err == nil && errors.Is(context.Cause(tctx), errTimeout):
		// It ran past its timeout, whatever it returned: the attempt
		// fails as it would had it ignored its context.
		err = timedOut()
	}
	if err == nil {
		res.output, err = tc.MarshalJSON()
	}
	res.err = err
	res.finished = r.now()
	res.cause = context.Cause(ctx)
	return res, done
}

// returned is the closed channel execute returns for a function that has
// returned already.
var returned = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// callTask runs a task function, turning a panic into an error, and an
// error the engine could not read (one whose Error method panics, as a
// nil pointer of an error type can) into one it can.
func callTask(ctx context.Context, fn TaskFunc, tc *Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("task panicked: %v\n%s", p, debug.Stack())
		}
	}()
	return readableError(fn(ctx, tc))
}

// readableError returns err, or a plain error in its place when asking
// it what the completer asks (outside the task's recover) panics: its
// text, and its chain as IsPermanent and IsTransient walk it (a nil
// pointer of an error type does that, through Error or Unwrap).
func readableError(err error) (out error) {
	if err == nil {
		return nil
	}
	text := ""
	defer func() {
		if p := recover(); p != nil {
			if text == "" {
				out = fmt.Errorf("the task returned a %T whose Error method panicked (%v): return a nil error for success, or an error value that can describe itself", err, p)
			} else {
				out = fmt.Errorf("%s (the task returned a %T whose error chain panicked when walked: %v)", text, err, p)
			}
		}
	}()
	text = err.Error()
	IsPermanent(err)
	IsTransient(err)
	return err
}

// errTaskExited is the attempt's error when the task function ended its
// goroutine without returning (runtime.Goexit, as testing's FailNow, Fatal
// and SkipNow do).
var errTaskExited = errors.New("the task function exited without returning (runtime.Goexit, as t.FailNow, t.Fatal and require do): return an error instead")
