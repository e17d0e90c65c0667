package cloacina

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// apiTxAttempts bounds the retries of a transaction a caller waits on.
const apiTxAttempts = 8

// maxWaitPoll bounds how long Wait takes to notice a run that another
// process ended.
const maxWaitPoll = 500 * time.Millisecond

// Execution is a handle on a run: one started by ExecuteAsync or
// ExecuteTx, or any run by its id (Runner.Execution).
type Execution struct {
	r  *Runner
	id uuid.UUID
}

// Execution returns a handle on the run with this id, whichever runner or
// process started it: a run id kept from an earlier ExecuteAsync, say, or
// found with List. It reads nothing; Wait and Status return
// ErrRunNotFound when no such run exists. A task re-attaches this way to
// a child run that an earlier attempt of it started (its children are
// the runs List finds with ListOpts.ParentRunID whose ParentTaskID is the
// task's id), rather than start another.
func (r *Runner) Execution(id uuid.UUID) *Execution { return &Execution{r: r, id: id} }

// ID returns the run's id.
func (e *Execution) ID() uuid.UUID { return e.id }

// Wait blocks until the run reaches a terminal status (Completed, Failed
// or Cancelled) and returns its result, or until ctx ends. It works
// whichever runner, in whichever process, executes the tasks. For an
// ExecuteTx run whose transaction rolled back it returns ErrRunNotFound.
//
// Called from a task function with the task's context, Wait waits as
// DeferUntil does: the task gives its concurrency slot back while the run
// is not finished, so that the run's own tasks can take it, and takes a
// slot again before it returns; its sub-status is "deferred" meanwhile,
// recorded as task_deferred (its reason names the run) and task_resumed.
// When the task is cancelled (run cancelled, timeout, claim lost, runner
// stopping), Wait returns the context's error at once, without a slot —
// also when the awaited run was cancelled with the task's own run (a
// cancel cascades to child runs) and Wait reads its end first;
// when only a context the task derived for the wait ends (a deadline of
// its own), Wait returns its error having taken a slot again, since the
// task goes on.
// A run that has ended already is waited for without any of this.
func (e *Execution) Wait(ctx context.Context) (*ExecutionResult, error) {
	return e.r.wait(ctx, e.id)
}

// Status returns the run's current status.
func (e *Execution) Status(ctx context.Context) (PipelineStatus, error) {
	db, err := e.r.reader(ctx)
	if err != nil {
		return "", err
	}
	p, err := db.PipelineGet(ctx, e.id)
	if err != nil {
		return "", e.r.notFound(e.id, err)
	}
	return p.Status, nil
}

// Cancel cancels the run (see Runner.Cancel).
func (e *Execution) Cancel(ctx context.Context) error { return e.r.Cancel(ctx, e.id) }

// Execute starts a run of the named workflow with input (nil means an
// empty context) and blocks until it reaches a terminal status, Cancelled
// included. A run that Failed or was Cancelled is not an error of Execute:
// check the result's Status, or its Err method. Some runner, in this
// process or another, must be started for the run to progress. When ctx
// ends first, Execute returns ctx's error (to errors.Is), wrapped with
// the run's id, and the run goes on without it (ctx bounds the wait, not
// the run): to keep a handle on the run, to wait for it again or cancel
// it, start it with ExecuteAsync and wait with Execution.Wait.
//
// A task function may call Execute, with its own context, to run a child
// workflow and wait for it: while it waits it holds no concurrency slot
// (see Execution.Wait), so parents waiting for children never take every
// slot from the children. The child records the task and its run as its
// parent (ExecutionResult.ParentRunID and ParentTaskID; ListOpts.ParentRunID
// lists a run's children). Cancelling the parent run ends the task's wait
// and cancels the child run, and its own children, with it (see Cancel);
// a task of a run that is cancelled already gets ErrRunFinished, or its
// context's error once the cancel has reached the task's context. Pause and
// Resume are not passed on: a paused parent's children go on. A task may
// also start a child with ExecuteAsync or ExecuteTx and not wait for it:
// the child is linked and cancelled all the same. Stop waits for a waiting
// parent like any running task, and meanwhile still claims the tasks of
// the runs its tasks wait for (of the workflows it runs), so that a lone
// runner can stop without a deadline.
func (r *Runner) Execute(ctx context.Context, workflow string, input *Context) (*ExecutionResult, error) {
	e, err := r.ExecuteAsync(ctx, workflow, input)
	if err != nil {
		return nil, err
	}
	res, err := e.Wait(ctx)
	if err != nil && ctx.Err() != nil {
		// The run is not cancelled (unless by its parent's cancel): its id
		// is all the caller has to find it by.
		return nil, fmt.Errorf("run %s of workflow %q, no longer waited for: %w", e.id, workflow, err)
	}
	return res, err
}

// ExecuteAsync starts a run and returns at once with a handle to it. The
// run is written in its own transaction, or — when other goroutines start
// runs at the same moment — in one transaction with theirs: the run
// exists when ExecuteAsync returns without an error. A start whose
// commit failed though it went through (its reply lost) returns the
// handle: ExecuteAsync looks the run up before it reports a failure. When
// ctx ends while
// that transaction commits, ExecuteAsync returns ctx's error and the run
// may exist all the same (the commit went through): look it up (List)
// before starting it again if duplicates matter.
func (r *Runner) ExecuteAsync(ctx context.Context, workflow string, input *Context) (*Execution, error) {
	run, err := r.prepareRun(ctx, workflow, input)
	if err != nil {
		return nil, err
	}
	if err := r.starts.start(ctx, r, run); err != nil {
		return nil, fmt.Errorf("start run of workflow %q: %w", workflow, r.closedErr(err))
	}
	return &Execution{r: r, id: run.id}, nil
}

// ExecuteTx starts a run inside a transaction the application owns — a
// pgx.Tx on PostgreSQL, a *sql.Tx on SQLite — so the run exists only if
// that transaction commits. Wait on the handle after committing. On
// PostgreSQL the commit wakes the runners (NOTIFY). On SQLite, which has
// no NOTIFY, this runner (when started) looks for the work at short,
// growing intervals (2 ms doubling to 250 ms) for 5 s, or for its
// PollInterval if that is shorter: a transaction committed within that
// time has its run picked up at the next look, one committed later at
// the next poll.
// Other runners find it by their poll.
//
// The transaction must be on the runner's database: begin it on
// Driver().(*sqlite.Driver).DB(), or another *sql.DB on the same file; on
// Driver().(*postgres.Driver).Pool(), or another connection to the same
// server and database (the run goes to the runner's schema, whatever the
// transaction's search_path). ExecuteTx checks this first, reading in tx
// — on SQLite (one statement), that the transaction's main database file
// is the runner's, by whatever path or link; on PostgreSQL (at most two),
// the server's system identifier and the database's name — and fails with
// ErrWrongDatabase otherwise: for another SQLite file (another tenant's,
// say), another PostgreSQL database or server, or a database that is no
// Cloacina database. The server is told apart by its identifier where both
// the runner's role and the transaction's may call pg_control_system (the
// default); otherwise by the database's name alone, so a database of the
// same name on another server is then not told apart. A refused
// transaction has nothing written in it and stays usable (on PostgreSQL it
// is not aborted). A start that fails later, as its writes are refused or
// ctx ends, leaves nothing of the run in tx either: on SQLite tx stays
// usable, and committing it commits no part of the run; on PostgreSQL the
// failed statement has aborted tx.
//
// Called with a task's context, the run is a child of the task's run, and
// on PostgreSQL the start locks the parent run's row until tx ends (so a
// Cancel racing with the start either sees the child or refuses it). Keep
// such a transaction short: while it is open, the recording of the parent
// run's other results, other starts of its children, and Pause, Resume
// and Cancel of it wait (a runner's completions of other runs wait for it
// at most a fifth of a second, then go on without the parent's results); a second start of a child from the same task before
// tx commits waits for tx, until ctx ends. (On SQLite any open write
// transaction holds the file's write lock, and every writer waits.)
func (r *Runner) ExecuteTx(ctx context.Context, tx any, workflow string, input *Context) (*Execution, error) {
	run, err := r.prepareRun(ctx, workflow, input)
	if err != nil {
		return nil, err
	}
	exec, err := r.drv.UnwrapTx(ctx, tx)
	if err != nil {
		return nil, fmt.Errorf("cloacina: ExecuteTx: %w", err)
	}
	r.syncClock(ctx, exec)
	c := newChanges(r)
	c.now = r.now()
	// Fresh: the whole run goes in one ChangeSetApply, which writes all of
	// it or nothing that tx could commit.
	if err := r.createRuns(ctx, exec, c, []*newRun{run}, true); err != nil {
		return nil, fmt.Errorf("start run of workflow %q: %w", workflow, err)
	}
	// The application commits, so nothing here can wake a claimer after
	// the commit: every runner, this one included, hears of the work by
	// NOTIFY on PostgreSQL (SQLite's wake-ups need our own commit).
	for name := range c.work {
		c.cs.Notify = append(c.cs.Notify, workPayload(name))
	}
	if err := exec.ChangeSetApply(ctx, &c.cs); err != nil {
		return nil, fmt.Errorf("start run of workflow %q: %w", workflow, err)
	}
	if len(c.work) > 0 && r.drv.Name() == "sqlite" {
		r.watchAppCommit()
	}
	return &Execution{r: r, id: run.id}, nil
}

// newRun is a run about to be created: its id, workflow and encoded
// input, and the run and task that start it from inside a task (nil
// otherwise).
type newRun struct {
	id         uuid.UUID
	wf         *Workflow
	input      []byte
	parent     *uuid.UUID
	parentTask *uuid.UUID
}

// prepareRun checks and encodes what a new run needs before any write.
// Called with a task's context, it makes the run a child of that task's
// run.
func (r *Runner) prepareRun(ctx context.Context, workflow string, input *Context) (*newRun, error) {
	if err := r.checkOpen(ctx); err != nil {
		return nil, err
	}
	if err := r.checkWritable(fmt.Sprintf("start run of workflow %q", workflow)); err != nil {
		return nil, err
	}
	wf, err := r.workflow(workflow)
	if err != nil {
		return nil, err
	}
	if input == nil {
		input = NewContext()
	}
	raw, err := input.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("start run of workflow %q: encode input: %w", workflow, err)
	}
	run := &newRun{id: newID(), wf: wf, input: raw}
	if s, ok := ctx.Value(taskScopeKey{}).(*taskScope); ok {
		pid, tid := s.rt.task.PipelineID, s.rt.task.ID
		run.parent, run.parentTask = &pid, &tid
	}
	return run, nil
}

// lockParents locks the parent runs of runs, so that a run cancelled
// meanwhile (Cancel locks it too) either sees its new children or refuses
// them: a child of a finished run fails with ErrRunFinished. A parent this
// database does not hold (a task of a runner on another database starting
// a run here) is dropped: the run is started without one.
func lockParents(ctx context.Context, exec driver.Executor, runs []*newRun) error {
	var ids []uuid.UUID
	for _, run := range runs {
		if run.parent != nil && !slices.Contains(ids, *run.parent) {
			ids = append(ids, *run.parent)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	ps, err := exec.PipelineLock(ctx, ids)
	if err != nil {
		return err
	}
	status := make(map[uuid.UUID]driver.PipelineStatus, len(ps))
	for _, p := range ps {
		status[p.ID] = p.Status
	}
	for _, run := range runs {
		if run.parent == nil {
			continue
		}
		st, ok := status[*run.parent]
		switch {
		case !ok:
			run.parent, run.parentTask = nil, nil
		case st.Terminal():
			return fmt.Errorf("parent run %s is %s: %w: a task of a finished run cannot start child runs", *run.parent, st, ErrRunFinished)
		}
	}
	return nil
}

// createRuns writes new runs: each pipeline, every task (roots Ready, or
// Skipped by their trigger rule) in one insert, task_created and
// task_marked_ready events, and outbox rows, leaving the remaining writes
// in c. A run that already exists (a retry after a commit whose outcome
// was unknown) is left as it is.
//
// With fresh, the runs cannot exist yet (their transaction's first
// attempt, or the application's transaction of ExecuteTx): their rows
// join c's change set, which a backend can send together with the commit,
// and an existing run fails the transaction with a conflict, for the
// retry to see. Only such a start may carry a
// c.handoff: a run whose roots find free slots on this runner is created
// Running (pipeline_started) with those roots claimed here.
//
// Child runs lock their parents first (lockParents): one extra statement,
// for starts from inside a task only.
func (r *Runner) createRuns(ctx context.Context, exec driver.Executor, c *changes, runs []*newRun, fresh bool) error {
	if err := lockParents(ctx, exec, runs); err != nil {
		return err
	}
	inserted := make(map[uuid.UUID]bool, len(runs))
	if fresh {
		for _, run := range runs {
			inserted[run.id] = true
		}
	} else {
		params := make([]*driver.PipelineInsertParams, len(runs))
		for i, run := range runs {
			params[i] = newPipeline(run, driver.PipelinePending, c.now)
		}
		ids, err := exec.PipelineInsertMany(ctx, params)
		if err != nil {
			return err
		}
		for _, id := range ids {
			inserted[id] = true
		}
	}
	var inserts []driver.TaskInsert
	for _, run := range runs {
		id, wf := run.id, run.wf
		if !inserted[id] {
			continue
		}
		// Running for a handoff to claim the roots; Pending again if none
		// of them found a slot.
		status := driver.PipelinePending
		if c.handoff != nil {
			status = driver.PipelineRunning
		}
		st := &runState{
			p:     &driver.Pipeline{ID: id, WorkflowName: wf.name, WorkflowVersion: wf.version, Status: status, Input: run.input, CreatedAt: c.now},
			wf:    wf,
			tasks: make(map[string]*driver.Task, len(wf.tasks)),
		}
		tasks := make([]*driver.Task, len(wf.tasks))
		for i, def := range wf.tasks {
			t := &driver.Task{ID: newID(), PipelineID: id, WorkflowName: wf.name, Name: def.Name, Position: i,
				Status: driver.TaskNotStarted, MaxAttempts: def.retry.maxAttempts}
			tasks[i] = t
			st.tasks[def.Name] = t
			c.event(id, &t.ID, EventTaskCreated, &EventData{MaxAttempts: t.MaxAttempts})
		}
		if _, err := st.advance(c); err != nil {
			return err
		}
		if st.p.StartedAt == nil {
			st.p.Status = driver.PipelinePending
		}
		if fresh {
			c.cs.NewPipelines = append(c.cs.NewPipelines, newPipeline(run, st.p.Status, c.now))
		}
		if err := st.finalize(c); err != nil {
			return err
		}
		for i, t := range tasks {
			open := 0
			if t.Status == driver.TaskNotStarted {
				open = openDeps(wf, wf.tasks[i], st.status)
			}
			inserts = append(inserts, driver.TaskInsert{ID: t.ID, PipelineID: id, WorkflowName: wf.name, Name: t.Name, Position: i, Status: t.Status,
				Attempt: t.Attempt, MaxAttempts: t.MaxAttempts, Input: t.Input, Error: t.Error, AvailableAt: t.AvailableAt,
				RunnerID: t.RunnerID, OpenDeps: open, Now: c.now})
		}
	}
	if fresh {
		c.cs.NewTasks = append(c.cs.NewTasks, inserts...)
		return nil
	}
	if len(inserts) == 0 {
		return nil
	}
	return exec.TaskInsertMany(ctx, inserts)
}

func newPipeline(run *newRun, status driver.PipelineStatus, now time.Time) *driver.PipelineInsertParams {
	return &driver.PipelineInsertParams{ID: run.id, WorkflowName: run.wf.name, WorkflowVersion: run.wf.version,
		Status: status, Input: run.input, Now: now, ParentPipelineID: run.parent, ParentTaskID: run.parentTask}
}

// wait blocks until run id is terminal. Called with a task's context (a
// task waiting for a child run), it gives the task's slot back while it
// blocks, as DeferUntil does: when every slot is held by a task waiting
// for a child, the children could never run.
func (r *Runner) wait(ctx context.Context, id uuid.UUID) (*ExecutionResult, error) {
	s, ok := ctx.Value(taskScopeKey{}).(*taskScope)
	if !ok {
		return r.waitRun(ctx, id, nil)
	}
	defer r.await(s, id)()
	waiting := false
	res, err := r.waitRun(ctx, id, func() error {
		if err := s.beginWait(ctx, "waiting for run "+id.String()); err != nil {
			return err
		}
		waiting = true
		return nil
	})
	cascaded := err == nil && res.Status == PipelineCancelled && r.ownRunCancelled(ctx, s)
	if cascaded {
		// The awaited run was cancelled with the task's own run (a cancel
		// cascades to descendants in one transaction), and the wait read
		// its end before the cancel reached the task's context: cancel
		// the task now, as the cancel's wake-up is about to, so that a
		// cascade always ends the wait with the context's error.
		s.rt.cancel(errRunCancelled)
	}
	switch {
	case !waiting:
		// A run found ended at once is returned as it is, but for the
		// cascade above.
		if cascaded && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return res, err
	case ctx.Err() != nil:
		return nil, s.cutShort(ctx)
	}
	if werr := s.endWait(s.taskCtx(ctx)); werr != nil {
		return nil, werr
	}
	return res, err
}

// ownRunCancelled reports whether the run of the task in scope s has been
// cancelled (read from the database; false when it cannot be read).
func (r *Runner) ownRunCancelled(ctx context.Context, s *taskScope) bool {
	db, err := r.reader(ctx)
	if err != nil {
		return false
	}
	p, err := db.PipelineGet(ctx, s.rt.task.PipelineID)
	return err == nil && p.Status == PipelineCancelled
}

// waitRun blocks until run id is terminal: woken at once when this runner
// ends it, and polling (quickly at first, then every PollInterval) for
// runs ended elsewhere. It calls block, unless nil, before it first
// blocks. Close ends it with ErrRunnerClosed, unless ctx is a task's of
// this runner.
func (r *Runner) waitRun(ctx context.Context, id uuid.UUID, block func() error) (*ExecutionResult, error) {
	ch := r.subscribeRun(id)
	defer r.unsubscribeRun(id, ch)
	closing := r.done
	if r.ownTask(ctx) {
		closing = nil // Close drains it, as Stop does (see checkOpen)
	}
	interval := 20 * time.Millisecond
	for {
		db, err := r.reader(ctx)
		if err != nil {
			return nil, err
		}
		p, err := db.PipelineGet(ctx, id)
		switch {
		case errors.Is(err, driver.ErrTransient):
			// The database is briefly unreachable: keep waiting.
			r.logger.Debug("wait for run: transient error", "run_id", id, "error", err)
		case err != nil:
			return nil, r.notFound(id, err)
		case p.Status.Terminal():
			res, err := r.Get(ctx, id)
			if errors.Is(err, driver.ErrTransient) {
				break
			}
			return res, err
		}
		if block != nil {
			if err := block(); err != nil {
				return nil, err
			}
			block = nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch:
		case <-closing:
		case <-time.After(interval):
			interval = min(interval*2, r.cfg.PollInterval, maxWaitPoll)
		}
	}
}

// notFound maps a failed read of run id: ErrRunNotFound, or (closedErr)
// ErrRunnerClosed.
func (r *Runner) notFound(id uuid.UUID, err error) error {
	if errors.Is(err, driver.ErrNotFound) {
		return fmt.Errorf("%w: %s", ErrRunNotFound, id)
	}
	return r.closedErr(err)
}

func (r *Runner) subscribeRun(id uuid.UUID) chan struct{} {
	ch := make(chan struct{}, 1)
	r.waitMu.Lock()
	defer r.waitMu.Unlock()
	if r.waiters[id] == nil {
		r.waiters[id] = map[chan struct{}]struct{}{}
	}
	r.waiters[id][ch] = struct{}{}
	return ch
}

func (r *Runner) unsubscribeRun(id uuid.UUID, ch chan struct{}) {
	r.waitMu.Lock()
	defer r.waitMu.Unlock()
	delete(r.waiters[id], ch)
	if len(r.waiters[id]) == 0 {
		delete(r.waiters, id)
	}
}

// signalRun wakes the waiters of a run that changed status.
func (r *Runner) signalRun(id uuid.UUID) {
	r.waitMu.Lock()
	defer r.waitMu.Unlock()
	for ch := range r.waiters[id] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
