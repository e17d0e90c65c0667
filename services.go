package cloacina

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// verifyTimeout bounds the check of claims whose transaction was
// interrupted by its caller.
const verifyTimeout = 10 * time.Second

// Causes of a task context's cancellation. A task function reads them
// with context.Cause: its timeout is ErrTaskTimeout to errors.Is.
var (
	errRunCancelled = errors.New("run cancelled")
	errShutdown     = errors.New("runner stopped before the task returned")
	errTimeout      = fmt.Errorf("%w", ErrTaskTimeout)
)

// services are the background loops of a started runner: the claimer, the
// completer, the wake-up listener and the cancellation watcher. They live
// from Start to Stop.
type services struct {
	// claimCtx ends the claimer: Stop cancels it first.
	claimCtx    context.Context
	claimCancel context.CancelFunc
	claimerDone chan struct{}
	// ctx ends the heartbeat, the wake-up listener and the cancellation
	// watcher. Stop cancels it only once every task has returned and its
	// result is recorded: while tasks finish, their runner must stay alive
	// (or the sweep would hand its tasks to another runner as they run) and
	// must still hear of their runs' cancellation.
	ctx    context.Context
	cancel context.CancelFunc
	// workCtx is the parent of every task context; it is cancelled when
	// Stop's deadline passes.
	workCtx    context.Context
	workCancel context.CancelCauseFunc
	// flushCtx bounds the completer's retries while stopping.
	flushCtx    context.Context
	flushCancel context.CancelFunc

	wake chan struct{}
	due  chan time.Time
	// scheduleWake asks the schedule loop for a pass now.
	scheduleWake chan struct{}
	// rowStale asks the heartbeat loop to write the runner's row now: a
	// workflow was registered.
	rowStale  chan struct{}
	slots     chan struct{}
	slotFreed chan struct{}
	results   chan *taskResult
	// preheld counts slots taken for work that committed transactions
	// left for this runner's claimer (see addWakeups); its next round
	// claims with them.
	preheld atomic.Int64
	// watchUntil (since clockEpoch) ends a spell of quick polls for work
	// an application's transaction may commit (see watchAppCommit).
	watchUntil atomic.Int64

	loops sync.WaitGroup
	// tasks counts task goroutines; a slot taken for a handoff counts
	// from the moment it is taken, so Stop cannot miss the task.
	tasks sync.WaitGroup
	// handoffMu orders takeSlot with the start of Stop: once stopping is
	// set no handoff takes a slot.
	handoffMu sync.Mutex
	stopping  bool
	// draining is set by Stop: the claimer then claims only tasks of the
	// runs that this runner's tasks wait for (awaited), so that a task
	// waiting for a child run can finish.
	draining      atomic.Bool
	claimMu       sync.Mutex // held by a claim round
	awaitMu       sync.Mutex
	awaited       map[uuid.UUID]int // run id → tasks of this runner waiting for it
	stopCompleter chan struct{}
	completerDone chan struct{}
	// unrecorded is set by the completer, before completerDone closes,
	// when it stopped with task results it could not record.
	unrecorded error
}

type runningTask struct {
	task     *driver.Task
	cancel   context.CancelCauseFunc
	reported atomic.Bool // the task's result has been handed to the completer
	// scope (which holds the slot's state) and result live with the
	// running task: one allocation for the three.
	scope  taskScope
	result taskResult
}

// Start starts executing tasks of the registered workflows in the
// background: claiming ready tasks, running them and recording their
// results. ctx's values (not its cancellation) are inherited by task
// contexts; call Stop to stop. Before it claims anything, Start resets the
// tasks an earlier process left Running under the same Config.RunnerID
// (task_reset), which no other runner would recover while this id
// heartbeats.
func (r *Runner) Start(ctx context.Context) error {
	r.lifecycleMu.Lock()
	defer r.lifecycleMu.Unlock()
	r.mu.Lock()
	closed, started := r.isClosed(), r.started
	r.mu.Unlock()
	if closed {
		return ErrRunnerClosed
	}
	if started {
		return ErrRunnerStarted
	}
	if err := r.checkWritable("start runner"); err != nil {
		return err
	}
	base := context.WithoutCancel(ctx)
	svc := &services{
		wake:          make(chan struct{}, 1),
		scheduleWake:  make(chan struct{}, 1),
		due:           make(chan time.Time, 16),
		rowStale:      make(chan struct{}, 1),
		slots:         make(chan struct{}, r.cfg.MaxConcurrentTasks),
		slotFreed:     make(chan struct{}, 1),
		results:       make(chan *taskResult, r.cfg.MaxConcurrentTasks),
		stopCompleter: make(chan struct{}),
		completerDone: make(chan struct{}),
		awaited:       map[uuid.UUID]int{},
	}
	svc.claimCtx, svc.claimCancel = context.WithCancel(base)
	svc.claimerDone = make(chan struct{})
	svc.ctx, svc.cancel = context.WithCancel(base)
	svc.workCtx, svc.workCancel = context.WithCancelCause(base)
	svc.flushCtx, svc.flushCancel = context.WithCancel(base)
	// Register before the first claim: a claim by a runner without a row
	// would look like a dead runner's. Then hand back what an earlier
	// process with this id left claimed, before this one claims anything.
	if err := r.register(ctx); err != nil {
		return fmt.Errorf("cloacina: register runner: %w", err)
	}
	if err := r.recoverOwn(ctx); err != nil {
		r.deregister()
		return fmt.Errorf("cloacina: start runner: reset the claims left under runner id %s: %w", r.id, err)
	}
	if err := r.syncSchedules(ctx); err != nil {
		r.deregister()
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.isClosed() {
		r.deregister()
		return ErrRunnerClosed
	}
	r.svc.Store(svc)
	r.started = true
	if r.rowWritten != r.registered {
		// Registered while the row was being written above.
		svc.rowStale <- struct{}{}
	}

	svc.loops.Add(3)
	go r.claimLoop(svc)
	go r.listenLoop(svc)
	go r.watchLoop(svc)
	go r.heartbeatLoop(svc)
	go r.completeLoop(svc)
	if len(r.schedules) > 0 {
		svc.loops.Add(1)
		go r.scheduleLoop(svc)
	}
	r.logger.Info("runner started", "runner_name", r.name, "backend", r.drv.Name(), "workflows", len(r.workflows),
		"max_concurrent_tasks", r.cfg.MaxConcurrentTasks)
	return nil
}

// Stop stops claiming, waits for running tasks to finish and their results
// to be recorded, and stops the background loops. Until then the runner
// stays what it was for its tasks: it heartbeats, so no other runner takes
// them over as they finish, and it cancels those whose run is cancelled
// meanwhile, from any process. It claims no new work then, but for the
// tasks of the child runs that its running tasks wait for (Execute or
// Execution.Wait called with a task's context), which could otherwise
// wait for a runner that never comes. When ctx ends first, the
// remaining tasks' contexts are cancelled; tasks that still have not
// returned a moment later are handed back (reset to Ready, task_reset) for
// another runner, and Stop returns context.Cause(ctx) (ctx.Err() unless
// ctx was cancelled with a cause). A Close that comes meanwhile bounds
// Stop by its own wait, as if ctx ended then, and Stop returns
// context.DeadlineExceeded. Results are given 10 s more to be recorded
// once every task has returned or been handed back; those the database
// still refuses then are given up (their tasks stay Running until their
// claims are recovered, and run again), and Stop's error says how many
// (joined with ctx's, if any). The runner can be started again afterwards.
//
// A task of this runner that calls Stop (with its context, or any context
// from the goroutine running the task function: see Close for how that is
// told, and its limits) cannot wait for the stop,
// which waits for the task: Stop then begins stopping in the background
// and returns nil at once. The task should return: its result is recorded
// as any other's, and the stop ends as described above, ctx's deadline
// bounding it but not ctx's cancellation (a task's context is cancelled
// as it returns). Its outcome is logged; a later Stop, or Close, waits
// for it. A goroutine the task started that calls Stop with a context of
// its own is an ordinary caller: Stop waits for the task.
func (r *Runner) Stop(ctx context.Context) error {
	if svc := r.callingTask(ctx); svc != nil {
		ctx, cancel := detachContext(ctx)
		go func() {
			defer cancel()
			if err := r.stopServices(ctx, svc); err != nil {
				r.logger.Warn("stop called from a task", "error", err)
			}
		}()
		return nil
	}
	return r.stop(ctx)
}

// detachContext returns ctx with its values and deadline, but not its
// cancellation.
func detachContext(ctx context.Context) (context.Context, context.CancelFunc) {
	detached := context.WithoutCancel(ctx)
	if deadline, ok := ctx.Deadline(); ok {
		return context.WithDeadline(detached, deadline)
	}
	return context.WithCancel(detached)
}

func (r *Runner) stop(ctx context.Context) error { return r.stopServices(ctx, nil) }

// stopServices stops the runner (see Stop) if it runs the services want,
// or any services when want is nil: a stop asked for by a task ends the
// services that ran the task, and no later Start's.
func (r *Runner) stopServices(ctx context.Context, want *services) error {
	ctx, release := r.boundByClose(ctx)
	defer release()
	r.lifecycleMu.Lock()
	defer r.lifecycleMu.Unlock()
	r.mu.Lock()
	svc := r.svc.Load()
	if !r.started || svc == nil || (want != nil && svc != want) {
		r.mu.Unlock()
		return nil
	}
	r.mu.Unlock()

	svc.handoffMu.Lock()
	svc.stopping = true
	svc.handoffMu.Unlock()
	// After a claim round in progress (see claimRound); one that retries
	// past ctx (the database is unreachable, say) is ended, so that Stop
	// keeps its deadline.
	locked := make(chan struct{})
	go func() { svc.claimMu.Lock(); close(locked) }()
	var stopErr error
	select {
	case <-locked:
	case <-ctx.Done():
		// The deadline passed while a round held on: Stop says so, even
		// when no task is left to wait for.
		stopErr = context.Cause(ctx)
		svc.claimCancel()
		<-locked
	}
	svc.draining.Store(true)
	svc.claimMu.Unlock()
	r.wakeClaimer()

	tasksDone := make(chan struct{})
	go func() { svc.tasks.Wait(); close(tasksDone) }()
	// flushed ends the completer's time to record the last results; it
	// starts once every task has returned or been handed back.
	var flushed <-chan time.Time
	select {
	case <-tasksDone:
		svc.claimCancel()
		<-svc.claimerDone
	case <-ctx.Done():
		stopErr = context.Cause(ctx)
		svc.claimCancel()
		<-svc.claimerDone
		svc.workCancel(errShutdown)
		select {
		case <-tasksDone:
		case <-time.After(stopGrace):
			// Tasks that ignore their context: hand their claims back now;
			// whatever they return later is dropped (and would be fenced out).
			flushed = time.After(r.flushWait)
			for _, rt := range r.runningTasks() {
				if rt.reported.CompareAndSwap(false, true) {
					res := &taskResult{task: rt.task, err: errShutdown, cause: errShutdown, finished: r.now()}
					select {
					case svc.results <- res:
					case <-flushed:
						// The completer is still retrying earlier results
						// (the database is unreachable): it gives them up,
						// and so takes this one at once.
						svc.flushCancel()
						svc.results <- res
					}
				}
			}
		}
	}
	close(svc.stopCompleter)
	if flushed == nil {
		flushed = time.After(r.flushWait)
	}
	select {
	case <-svc.completerDone:
	case <-flushed:
		// The database is unreachable; give up recording the last results.
		// Their claims are recovered by the dead-runner sweep, or by this
		// runner when it starts again (recoverOwn).
		svc.flushCancel()
		<-svc.completerDone
	}
	stopErr = errors.Join(stopErr, svc.unrecorded)
	svc.cancel()
	svc.loops.Wait()
	svc.workCancel(errShutdown)
	svc.flushCancel()
	r.deregister()

	r.mu.Lock()
	r.started = false
	r.svc.Store(nil)
	r.mu.Unlock()
	r.logger.Info("runner stopped")
	return stopErr
}

func (r *Runner) services() *services { return r.svc.Load() }

func (r *Runner) wakeClaimer() {
	if svc := r.services(); svc != nil {
		select {
		case svc.wake <- struct{}{}:
		default:
		}
	}
}

// appCommitWatch bounds the quick polls after an ExecuteTx on SQLite
// (see watchAppCommit); the regular poll takes over after it.
const appCommitWatch = 5 * time.Second

// watchAppCommit makes the claimer look for work at short, growing
// intervals for a while (appCommitWatch, or PollInterval if shorter):
// ExecuteTx on SQLite wrote work in a transaction the application
// commits, whose commit nothing here can hook, and SQLite sends no
// NOTIFY. Each look is one read; work found is claimed at once.
func (r *Runner) watchAppCommit() {
	svc := r.services()
	if svc == nil {
		return
	}
	svc.watchUntil.Store(int64(time.Since(clockEpoch) + min(appCommitWatch, r.cfg.PollInterval)))
	r.scheduleWake(r.now().Add(firstAppCommitPoll))
}

// firstAppCommitPoll is the first interval of a watch (watchAppCommit);
// each next one doubles, up to maxAppCommitPoll.
const (
	firstAppCommitPoll = 2 * time.Millisecond
	maxAppCommitPoll   = 250 * time.Millisecond
)

func (r *Runner) scheduleWake(at time.Time) {
	if svc := r.services(); svc != nil {
		select {
		case svc.due <- at:
		default: // the poll finds it
		}
	}
}

// claimLoop claims ready tasks whenever a slot is free and work may
// exist: after a wake-up, after a full batch, and after a poll that found
// claimable rows.
func (r *Runner) claimLoop(svc *services) {
	defer close(svc.claimerDone)
	ctx := svc.claimCtx
	timer := time.NewTimer(r.cfg.PollInterval)
	defer timer.Stop()
	// pollAt is when the timer fires, on the monotonic clock: a due time
	// compared with it is turned into a wait first, so that a step of the
	// runner's clock between the two readings cannot make a due retry
	// look later than the poll.
	pollAt := time.Now().Add(r.cfg.PollInterval)
	pending := true
	failures := 0
	watchPoll := time.Duration(0) // the interval of a watch's next look (watchAppCommit)
	// woken is set while the round a wake-up asked for is pending.
	woken := false
	for {
		n, got, err := r.claimRound(ctx, svc, pending)
		if n > 0 {
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				failures++
				r.logger.Error("claim tasks", "error", err, "consecutive_failures", failures)
				select {
				case <-ctx.Done():
					return
				case <-time.After(min(time.Duration(failures)*100*time.Millisecond, r.cfg.PollInterval)):
				}
				continue
			}
			failures = 0
			if woken && got == 0 {
				// Woken for work and found none claimable: another runner
				// took it, or it is due a moment from now by this runner's
				// estimate of the database's clock, which may lag the
				// enqueuer's by up to a second (see Runner). Poll now, so
				// that such work is claimed when it falls due rather than
				// a PollInterval later.
				pollAt = time.Now()
				timer.Reset(0)
			}
			woken = false
			pending = got >= n
			if pending {
				continue
			}
		}
		if hook := r.idleHook.Load(); hook != nil {
			(*hook)(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-svc.wake:
			pending, woken = true, true
		case <-svc.slotFreed:
		case at := <-svc.due:
			watchPoll = 0 // a watch (watchAppCommit) begun now starts over
			// A wait read off a clock stepped since the last sample would
			// be off by the step: sample first (see Runner.syncClock), and
			// poll in a PollInterval at most all the same.
			r.syncClock(ctx, r.drv.Reader())
			wait := min(max(at.Sub(r.now()), 0), r.cfg.PollInterval)
			if until := time.Now().Add(wait); until.Before(pollAt) {
				pollAt = until
				timer.Reset(wait)
			}
		case <-timer.C:
			r.syncClock(ctx, r.drv.Reader())
			now := r.now()
			wait := r.cfg.PollInterval
			if svc.draining.Load() {
				// Few runs, briefly: claim rather than peek.
				pending = true
			} else if !pending {
				res, err := r.drv.Reader().OutboxPeek(ctx, &driver.OutboxPeekParams{Workflows: r.workflowNames(), Now: now})
				switch {
				case err != nil && ctx.Err() == nil:
					r.logger.Warn("poll for work", "error", err)
					pending = true
				case err == nil:
					pending = res.Claimable
					if res.NextAvailableAt != nil {
						wait = min(wait, max(res.NextAvailableAt.Sub(now), 0))
					}
				}
			}
			if !pending && time.Since(clockEpoch) < time.Duration(svc.watchUntil.Load()) {
				watchPoll = min(max(2*watchPoll, firstAppCommitPoll), maxAppCommitPoll)
				wait = min(wait, watchPoll)
			} else {
				watchPoll = 0
			}
			pollAt = time.Now().Add(wait)
			timer.Reset(wait)
		}
	}
}

// claimRound, when work may be pending, reserves up to ClaimBatchSize
// free slots, claims as many tasks and starts them; it returns the slots it
// reserved and the tasks it claimed. Slots are taken before the claim: a
// completion claiming what it makes ready takes them too, and a task
// claimed here must not wait for one (it would sit Running, unstarted,
// under this runner). While Stop drains the runner it claims only tasks of
// the runs that this runner's tasks wait for. A round holds claimMu
// throughout, and Stop sets draining under it: every task a round claimed
// before is counted in svc.tasks when Stop begins to wait for them.
func (r *Runner) claimRound(ctx context.Context, svc *services, pending bool) (n, got int, err error) {
	svc.claimMu.Lock()
	defer svc.claimMu.Unlock()
	if !pending || r.claimsPaused.Load() {
		return 0, 0, nil
	}
	pre := int(svc.preheld.Swap(0))
	if n = pre + svc.reserveSlots(r.cfg.ClaimBatchSize-pre); n == 0 {
		return 0, 0, nil
	}
	var runs []uuid.UUID
	if svc.draining.Load() {
		if pre > 0 {
			// Work committed as Stop began, counted on these slots (see
			// addWakeups), which a draining round does not claim (it
			// claims at most the tasks of runs its tasks wait for):
			// others must hear of it.
			defer r.wakeOthers(ctx, r.workflowNames())
		}
		if runs = svc.beginDrainClaim(); runs == nil {
			for range n {
				<-svc.slots
			}
			return 0, 0, nil
		}
		defer svc.tasks.Done() // beginDrainClaim's
	}
	claimed := time.Since(clockEpoch)
	tasks, err := r.claim(ctx, n, runs)
	for i := len(tasks); i < n; i++ {
		<-svc.slots
	}
	if err != nil {
		return n, 0, err
	}
	for _, t := range tasks { // at most n: see claim
		svc.tasks.Add(1)
		go r.runTask(svc, t, claimed)
	}
	return n, len(tasks), nil
}

// claim takes up to n ready tasks in one transaction: the outbox rows are
// deleted, the tasks flipped to Running under this runner, their runs
// started, and task_claimed/task_started recorded. It returns at most n
// tasks: a retry claims no more than the earlier attempts left, since
// their claims may have committed (settle keeps those that did).
func (r *Runner) claim(ctx context.Context, n int, runs []uuid.UUID) ([]*driver.Task, error) {
	workflows := r.workflowNames()
	if len(workflows) == 0 {
		return nil, nil
	}
	var claims attemptClaims
	var unstarted []uuid.UUID
	maybeHeld := map[uuid.UUID]bool{}
	_, err := r.withTx(ctx, 0, func(ctx context.Context, tx driver.Tx, c *changes) error {
		claims.retry()
		unstarted = nil
		for _, t := range claims.uncertain {
			maybeHeld[t.ID] = true
		}
		limit := n - len(maybeHeld)
		if limit <= 0 {
			return nil
		}
		res, err := tx.TaskClaim(ctx, &driver.TaskClaimParams{RunnerID: r.id, Workflows: workflows, RunIDs: runs, Limit: limit, Now: c.now})
		if err != nil || len(res.Tasks) == 0 {
			return err
		}
		unstarted = res.Unstarted
		tasks := res.Tasks
		c.expectEvents(len(res.Started) + 2*len(tasks))
		workflowOf := make(map[uuid.UUID]string, len(tasks))
		for _, t := range tasks {
			workflowOf[t.PipelineID] = t.WorkflowName
		}
		// The version the run was started with, not this runner's: they
		// differ while a changed workflow rolls out.
		for i, pid := range res.Started {
			version := ""
			if i < len(res.StartedVersions) {
				version = res.StartedVersions[i]
			}
			c.runStarted(pid, workflowOf[pid], version)
		}
		for _, t := range tasks {
			c.claimed(t.PipelineID, t)
		}
		claims.claimed = tasks
		return nil
	})
	claimed, _ := r.settle(ctx, &claims, err)
	if err != nil && len(claimed) == 0 {
		return nil, err
	}
	if err == nil && len(unstarted) > 0 {
		r.startClaimedRuns(ctx, unstarted)
	}
	return claimed, nil
}

// startClaimedRuns starts runs whose tasks a claim took while another
// transaction held the run (see driver.TaskClaimResult.Unstarted), before
// those tasks run: waiting for that transaction inside the claim could
// deadlock with it. A run the other transaction paused is started and
// stays Paused; one it cancelled is left as it is; one that fails to start
// here is still started (late) when it ends.
func (r *Runner) startClaimedRuns(ctx context.Context, ids []uuid.UUID) {
	_, err := r.withTx(ctx, apiTxAttempts, func(ctx context.Context, tx driver.Tx, c *changes) error {
		runs, err := tx.PipelineLock(ctx, ids)
		if err != nil {
			return err
		}
		for _, p := range runs {
			if p.StartedAt != nil {
				continue
			}
			switch p.Status {
			case driver.PipelinePending:
				c.cs.Pipelines = append(c.cs.Pipelines, driver.PipelineUpdate{ID: p.ID, FromStatus: driver.PipelinePending,
					Status: driver.PipelineRunning, StartedAt: ptr(c.now), Now: c.now})
			case driver.PipelinePaused:
				// Paused between the claim's commit and this transaction
				// (the claim skipped the run because Pause held it): the
				// task runs all the same, so the run has started, and it
				// stays Paused; Resume makes it Running.
				c.cs.Pipelines = append(c.cs.Pipelines, driver.PipelineUpdate{ID: p.ID, FromStatus: driver.PipelinePaused,
					Status: driver.PipelinePaused, StartedAt: ptr(c.now), Now: c.now})
			default:
				continue
			}
			c.runStarted(p.ID, p.WorkflowName, p.WorkflowVersion)
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		r.logger.Warn("start runs of claimed tasks", "runs", len(ids), "error", err)
	}
}

// attemptClaims follows the tasks one transaction claims over its
// attempts: those of an attempt whose commit failed may have been claimed
// after all (the commit reached the server, the reply did not).
type attemptClaims struct {
	claimed   []*driver.Task // by the current attempt
	uncertain []*driver.Task // by earlier attempts, which failed
	svc       *services      // whose slots a handoff's claims hold
	// began is when the first attempt began, since clockEpoch (see
	// claimInDoubt); zero until then.
	began time.Duration
}

// retry begins an attempt.
func (a *attemptClaims) retry() {
	if a.began == 0 {
		a.began = time.Since(clockEpoch)
	}
	a.uncertain = append(a.uncertain, a.claimed...)
	a.claimed = nil
}

// settle returns the tasks this runner holds once the transaction ended
// with err, and the claims it does not hold: those that did not commit,
// and a task's extra claims when several attempts claimed it.
func (r *Runner) settle(ctx context.Context, a *attemptClaims, err error) (held, dropped []*driver.Task) {
	if err != nil {
		a.retry()
	}
	held = a.claimed
	// A retry can claim again a task whose earlier attempt rolled back; its
	// claim looks the same either way, so only verify the others.
	have := make(map[uuid.UUID]bool, len(held))
	for _, t := range held {
		have[t.ID] = true
	}
	uncertain := slices.DeleteFunc(a.uncertain, func(t *driver.Task) bool {
		seen := have[t.ID]
		have[t.ID] = true
		if seen {
			dropped = append(dropped, t)
		}
		return seen
	})
	if len(uncertain) == 0 {
		return held, dropped
	}
	if ctx.Err() != nil {
		// The transaction was interrupted by its caller (Stop, say), maybe
		// after its commit reached the server: find out all the same, or
		// the claims would stay with this runner, which may start again
		// under the same id.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), verifyTimeout)
		defer cancel()
	}
	for _, t := range uncertain {
		t.RunnerID = r.id // what a claim that committed wrote
	}
	verified, verr := r.verifyClaims(ctx, uncertain)
	if verr != nil {
		// They are not run (the claims may not have committed), and may
		// stay Running under this runner: the heartbeat loop resets them,
		// fenced on the claims, once the database lets it; if the runner
		// stops first, its row goes and the leader's sweep resets them.
		r.logger.Error("could not verify claims after a failed commit; resetting them at the next heartbeat",
			"tasks", len(uncertain), "error", verr)
		r.runningMu.Lock()
		r.strays = append(r.strays, uncertain...)
		r.runningMu.Unlock()
	}
	kept := make(map[uuid.UUID]bool, len(verified))
	for _, t := range verified {
		kept[t.ID] = true
	}
	for _, t := range uncertain {
		if !kept[t.ID] {
			dropped = append(dropped, t)
		}
	}
	return append(held, verified...), dropped
}

// verifyClaims returns the tasks whose claim this runner holds (claims
// that committed despite an error, or claims in doubt: see claimHeld),
// retrying the read while it fails transiently, until ctx ends. It only
// reads the tasks, which running tasks' heartbeats read too.
func (r *Runner) verifyClaims(ctx context.Context, tasks []*driver.Task) ([]*driver.Task, error) {
	fences := make([]driver.Fence, len(tasks))
	for i, t := range tasks {
		fences[i] = fenceOf(t)
	}
	backoff := 50 * time.Millisecond
	for {
		res, err := r.drv.Reader().TaskFenceCheck(ctx, &driver.TaskFenceCheckParams{Fences: fences})
		if err == nil {
			lost := map[string]bool{}
			for _, id := range res.Lost {
				lost[id.String()] = true
			}
			var held []*driver.Task
			for _, t := range tasks {
				if !lost[t.ID.String()] {
					held = append(held, t)
				}
			}
			return held, nil
		}
		if !errors.Is(err, driver.ErrTransient) {
			// The read itself is refused (the schema is gone, access was
			// revoked): asking again would wait out ctx for nothing.
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// runTask runs a task claimed by a transaction that began at claimed
// (since clockEpoch), in its own goroutine.
func (r *Runner) runTask(svc *services, t *driver.Task, claimed time.Duration) {
	defer svc.tasks.Done()
	if hook := r.beginHook.Load(); hook != nil {
		(*hook)(t)
	}
	ctx, cancel := context.WithCancelCause(svc.workCtx)
	defer cancel(nil)
	rt := &runningTask{task: t, cancel: cancel}
	rt.scope = taskScope{r: r, svc: svc, rt: rt, holds: true}
	defer rt.scope.taskReturned()
	ctx = context.WithValue(ctx, taskScopeKey{}, &rt.scope)
	r.runningMu.Lock()
	r.running[t.ID] = rt
	if at, ok := r.cancelledRuns[t.PipelineID]; ok && time.Since(at) <= cancelledRunMemory {
		cancel(errRunCancelled)
	}
	r.runningMu.Unlock()
	defer func() {
		r.runningMu.Lock()
		// A later attempt of the task (this one timed out and was retried
		// while its function ran on) may have taken the entry: leave it.
		if r.running[t.ID] == rt {
			delete(r.running, t.ID)
		}
		r.runningMu.Unlock()
	}()

	// A task function that ends this goroutine (runtime.Goexit) skips the
	// rest: its attempt fails instead, before the slot is given back.
	returned := false
	defer func() {
		if !returned && rt.reported.CompareAndSwap(false, true) {
			res := &rt.result
			res.err, res.finished, res.cause = errTaskExited, r.now(), context.Cause(ctx)
			select {
			case svc.results <- res:
			case <-svc.completerDone:
			}
		}
	}()
	res, fnDone := r.execute(ctx, t, claimed, &rt.result)
	returned = true
	if rt.reported.CompareAndSwap(false, true) {
		select {
		case svc.results <- res:
		case <-svc.completerDone:
		}
	}
	// The slot stays taken until the function has really returned, even
	// when its timeout was recorded earlier.
	<-fnDone
}

// offerHandoff begins an attempt of a transaction that may claim the tasks
// it makes ready for this runner (when it is started and claiming); the
// returned function records what the attempt claimed.
func (r *Runner) offerHandoff(c *changes, claims *attemptClaims) func() {
	claims.retry()
	svc := r.services()
	if svc == nil || r.claimsPaused.Load() {
		return func() {}
	}
	claims.svc = svc
	c.handoff = &handoff{take: svc.takeSlot}
	return func() { claims.claimed = c.handoff.tasks }
}

// runHandoffs runs the tasks a transaction claimed for this runner, once it
// ended with err, and gives back the slots of the claims it does not hold.
func (r *Runner) runHandoffs(ctx context.Context, claims *attemptClaims, err error) {
	if len(claims.claimed) == 0 && len(claims.uncertain) == 0 {
		return
	}
	svc := claims.svc
	held, dropped := r.settle(ctx, claims, err)
	for range dropped {
		svc.dropSlot()
	}
	for _, t := range held {
		go r.runTask(svc, t, claims.began)
	}
}

// reserveSlots takes up to max free slots without waiting and returns how
// many it took.
func (svc *services) reserveSlots(max int) int {
	n := 0
	for n < max {
		select {
		case svc.slots <- struct{}{}:
			n++
		default:
			return n
		}
	}
	return n
}

// takeSlot takes a free slot, and a place among the running tasks, for a
// task a completion hands to this runner; it never waits.
func (svc *services) takeSlot() bool {
	svc.handoffMu.Lock()
	defer svc.handoffMu.Unlock()
	if svc.stopping {
		return false
	}
	select {
	case svc.slots <- struct{}{}:
		svc.tasks.Add(1)
		return true
	default:
		return false
	}
}

// await records that task s waits for run id, until the returned function
// is called: while Stop drains the runner, the claimer takes the tasks of
// awaited runs (see beginDrainClaim). The record counts as a task of the
// runner, so Stop also waits for a wait that a task left running in a
// goroutine of its own (it ends with the task's context); a wait begun
// after its task returned is not recorded.
func (r *Runner) await(s *taskScope, id uuid.UUID) (done func()) {
	svc := s.svc
	s.mu.Lock()
	if s.returned {
		s.mu.Unlock()
		return func() {}
	}
	// The task still counts (it stops counting after it is marked
	// returned), so the count is not zero.
	svc.tasks.Add(1)
	s.mu.Unlock()
	svc.awaitMu.Lock()
	svc.awaited[id]++
	svc.awaitMu.Unlock()
	if svc.draining.Load() {
		r.wakeClaimer()
	}
	return func() {
		svc.awaitMu.Lock()
		if svc.awaited[id]--; svc.awaited[id] == 0 {
			delete(svc.awaited, id)
		}
		svc.awaitMu.Unlock()
		svc.tasks.Done()
	}
}

// beginDrainClaim returns the runs that tasks of this runner wait for, or
// nil when none does. Unless nil, the claim about to take their tasks
// counts as a task until the caller's svc.tasks.Done: Stop, which waits
// for the tasks, cannot miss the ones it claims. (Each record of await
// counts as a task until it is removed, so the count is not zero here.)
func (svc *services) beginDrainClaim() []uuid.UUID {
	svc.awaitMu.Lock()
	defer svc.awaitMu.Unlock()
	if len(svc.awaited) == 0 {
		return nil
	}
	runs := make([]uuid.UUID, 0, len(svc.awaited))
	for id := range svc.awaited {
		runs = append(runs, id)
	}
	svc.tasks.Add(1)
	return runs
}

// dropSlot gives back what takeSlot took, for a task that is not run.
func (svc *services) dropSlot() {
	svc.tasks.Done()
	svc.releaseSlot()
}

func (svc *services) releaseSlot() { svc.releaseSlots(1) }

// releaseSlots gives back n slots taken without a task.
func (svc *services) releaseSlots(n int) {
	for range n {
		<-svc.slots
	}
	if n > 0 {
		select {
		case svc.slotFreed <- struct{}{}:
		default:
		}
	}
}

func (r *Runner) runningTasks() []*runningTask {
	r.runningMu.Lock()
	defer r.runningMu.Unlock()
	out := make([]*runningTask, 0, len(r.running))
	for _, rt := range r.running {
		out = append(out, rt)
	}
	return out
}

// cancelledRunMemory is how long a runner remembers a cancelled run for
// tasks that start late; the watch loop covers anything later.
const cancelledRunMemory = time.Minute

// minCancelledPrune is the fewest remembered cancelled runs at which
// cancelLocal looks for expired ones.
const minCancelledPrune = 256

// cancelLocal cancels the contexts of this runner's tasks of a cancelled
// run. A task claimed before the cancel committed may not be running yet
// (its goroutine starts after the claim's commit): the run is remembered,
// under the same lock as the running tasks, and runTask cancels such a
// task as it registers.
func (r *Runner) cancelLocal(pipelineID uuid.UUID) {
	now := time.Now()
	r.runningMu.Lock()
	defer r.runningMu.Unlock()
	if len(r.cancelledRuns) >= r.cancelledPruneAt {
		r.pruneCancelledLocked(now)
	}
	r.cancelledRuns[pipelineID] = now
	for _, rt := range r.running {
		if rt.task.PipelineID == pipelineID {
			rt.cancel(errRunCancelled)
		}
	}
}

// pruneCancelled forgets the cancelled runs remembered for longer than
// cancelledRunMemory. The watch loop calls it every PollInterval, so that
// a burst of cancels is forgotten a minute later even when no cancel
// follows it.
func (r *Runner) pruneCancelled() {
	now := time.Now()
	r.runningMu.Lock()
	defer r.runningMu.Unlock()
	r.pruneCancelledLocked(now)
}

// pruneCancelledLocked drops the expired cancelled runs; the caller holds
// runningMu. The next prune by cancelLocal waits until the map has
// doubled, so that a burst of cancels costs a scan per doubling rather
// than one per cancel; a map that lost most of its entries is copied,
// since a map keeps the storage of its largest size.
func (r *Runner) pruneCancelledLocked(now time.Time) {
	before := len(r.cancelledRuns)
	if before == 0 {
		return
	}
	for id, at := range r.cancelledRuns {
		if now.Sub(at) > cancelledRunMemory {
			delete(r.cancelledRuns, id)
		}
	}
	if n := len(r.cancelledRuns); n < before/2 {
		kept := make(map[uuid.UUID]time.Time, n)
		for id, at := range r.cancelledRuns {
			kept[id] = at
		}
		r.cancelledRuns = kept
	}
	r.cancelledPruneAt = max(minCancelledPrune, 2*len(r.cancelledRuns))
}

// listenLoop receives wake-ups (work for a workflow, a cancelled run),
// resubscribing with backoff when the subscription fails.
func (r *Runner) listenLoop(svc *services) {
	defer svc.loops.Done()
	ctx := svc.ctx
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		sub, err := r.drv.Listen(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.logger.Warn("subscribe to wake-ups; polling meanwhile", "error", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 10*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		// Wake-ups sent while unsubscribed were missed: look now.
		r.wakeClaimer()
		for {
			payload, err := sub.Wait(ctx)
			if err != nil {
				if ctx.Err() == nil {
					r.logger.Warn("wake-up subscription lost; resubscribing", "error", err)
				}
				break
			}
			r.handleWake(ctx, payload)
		}
		sub.Close()
	}
}

func (r *Runner) handleWake(ctx context.Context, payload string) {
	kind, arg, _ := strings.Cut(payload, ":")
	switch kind {
	case "work":
		if _, err := r.workflow(arg); err == nil {
			r.wakeClaimer()
		}
	case "cancel":
		// A wake-up is a hint, not a fact: whoever knows the channel can
		// send one (a role that may only read the schema can read its
		// name). Only a run the database has cancelled is cancelled here;
		// should the read fail, the watch loop looks again.
		id, err := uuid.Parse(arg)
		if err != nil {
			return
		}
		p, err := r.drv.Reader().PipelineGet(ctx, id)
		switch {
		case err == nil && p.Status == driver.PipelineCancelled:
			r.cancelLocal(id)
		case err != nil && !errors.Is(err, driver.ErrNotFound) && ctx.Err() == nil:
			r.logger.Warn("check a cancel wake-up against the database", "run_id", id, "error", err)
		}
	}
}

// watchLoop finds runs cancelled by other processes whose tasks run here,
// for wake-ups that were missed or that the backend cannot deliver.
func (r *Runner) watchLoop(svc *services) {
	defer svc.loops.Done()
	ticker := time.NewTicker(r.cfg.PollInterval)
	defer ticker.Stop()
	for {
		select {
		case <-svc.ctx.Done():
			return
		case <-ticker.C:
		}
		r.pruneCancelled()
		if err := r.cancelCancelledRuns(svc.ctx); err != nil && svc.ctx.Err() == nil {
			r.logger.Warn("check for cancelled runs", "error", err)
		}
	}
}

// cancelCancelledRuns cancels this runner's tasks of the runs that are
// cancelled in the database, reading them in parts (see maxIDsPerRead).
func (r *Runner) cancelCancelledRuns(ctx context.Context) error {
	running := r.runningTasks()
	seen := map[uuid.UUID]bool{}
	var ids []uuid.UUID
	for _, rt := range running {
		if !seen[rt.task.PipelineID] {
			seen[rt.task.PipelineID] = true
			ids = append(ids, rt.task.PipelineID)
		}
	}
	for part := range slices.Chunk(ids, maxIDsPerRead) {
		cancelled, err := r.drv.Reader().PipelineList(ctx, &driver.PipelineListParams{IDs: part,
			Statuses: []driver.PipelineStatus{driver.PipelineCancelled}})
		if err != nil {
			return err
		}
		for _, p := range cancelled {
			r.cancelLocal(p.ID)
		}
	}
	return nil
}
