package cloacina

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// completeLoop records task results in batches: whatever has arrived while
// the previous batch was being written goes into the next transaction.
// Results the database cannot take now are held and tried again, with a
// growing delay, and never dropped while the runner runs; Stop gives them
// until its flush deadline. A batch waits for a run another transaction
// holds at most runLockWait: past it, that run's results are parked (see
// parkedResults) while the batch goes on.
func (r *Runner) completeLoop(svc *services) {
	defer close(svc.completerDone)
	h := &heldResults{}
	p := newParkedResults()
	defer p.stopTimer()
	stopping := false
	write := func(batch []*taskResult, mode completeMode, retried bool) {
		if len(batch) == 0 {
			return
		}
		again, skipped, err := r.flush(svc.flushCtx, batch, mode)
		r.hold(h, again, err, retried)
		p.park(r, skipped)
	}
	// writeDue writes again, without waiting, the parked results that are
	// due, and hands to waiting writes those that have missed enough.
	writeDue := func() {
		for batch := p.due(r, svc, stopping); len(batch) > 0; batch = p.due(r, svc, stopping) {
			write(batch, skipHeld, false)
		}
		p.sweep()
	}
	for !stopping {
		select {
		case first := <-svc.results:
			write(p.admit(r.drain(svc, first)), waitBounded, false)
		case <-h.retry:
			write(p.admit(h.take()), waitBounded, true)
		case <-p.timerC():
		case w := <-p.done:
			p.written(r, w)
		case <-svc.stopCompleter:
			stopping = true
		}
		writeDue()
	}
	// Tasks have all returned (or been handed back): drain, then keep
	// trying what is held until the flush deadline. Parked results are
	// written by transactions that wait now: nothing is left to keep fast.
	for draining := true; draining; {
		select {
		case res := <-svc.results:
			write(p.admit(r.drain(svc, res)), waitBounded, false)
		default:
			draining = false
		}
	}
	writeDue()
	for len(h.results) > 0 || p.pending() {
		select {
		case <-h.retry:
			write(p.admit(h.take()), waitBounded, true)
		case <-p.timerC():
		case w := <-p.done:
			p.written(r, w)
		case <-svc.flushCtx.Done():
			// The waiting writes in flight end with the context.
			for p.inFlight > 0 {
				p.written(r, <-p.done)
			}
			n := len(h.results) + p.count()
			r.logger.Error("stopped with task results not recorded: their tasks are recovered by the dead-runner sweep, or when this runner starts again",
				"results", n)
			svc.unrecorded = fmt.Errorf("cloacina: stopped with %d task results not recorded (their tasks stay Running until their claims are recovered, and run again): %w",
				n, cmp.Or(h.err, p.err, svc.flushCtx.Err()))
			return
		}
		writeDue()
	}
}

// parkedResults are results whose run another transaction held when their
// batch was written (an ExecuteTx left open, a cancel, another runner's
// completion). They are tried again without waiting, a few times, with a
// short growing delay; then a transaction of their own, off the
// completer's path, waits for the run. A run's results keep their order:
// one arriving while earlier ones of its run are parked is parked behind
// them.
//
// A waiting write holds a connection for as long as its run is held, so
// at most maxWaitingWrites are in flight: the results of other held runs
// are meanwhile tried again without waiting, at a delay growing to
// maxParkDelay, and take the next free waiting write. (One waiting write
// per run let as many held runs as the pool had connections take them
// all: the runner's other results, its heartbeat and its API calls then
// waited for the pool as long as the runs were held.)
type parkedResults struct {
	runs     map[uuid.UUID]*parkedRun
	order    []uuid.UUID // parked runs, oldest first
	timer    *time.Timer
	armed    bool
	done     chan waitedWrite
	inFlight int   // waiting writes not yet returned
	err      error // why the last waiting write failed
}

// parkedRun is what is parked of one run.
type parkedRun struct {
	results  []*taskResult
	misses   int       // writes that found the run held
	due      time.Time // when to try them again
	waiting  bool      // a waiting write has earlier results of the run
	failures int       // waiting writes in a row that failed
}

// waitedWrite is what a waiting write could not record.
type waitedWrite struct {
	run   uuid.UUID
	again []*taskResult
	err   error
}

const (
	// parkMisses is how many writes that skip a held run a result sees
	// before a write of its own waits for the run.
	parkMisses = 3
	// firstParkDelay is the delay before a parked result is tried again,
	// doubled at each miss up to maxParkDelay.
	firstParkDelay = 10 * time.Millisecond
	maxParkDelay   = time.Second
	// maxWaitingWrites bounds the waiting writes in flight, each holding
	// a connection while its run is held: as many as a plain FOR UPDATE
	// of the completer's own would hold.
	maxWaitingWrites = 1
)

func newParkedResults() *parkedResults {
	return &parkedResults{runs: map[uuid.UUID]*parkedRun{}, done: make(chan waitedWrite)}
}

// pending reports whether results are parked or being written by a
// waiting write.
func (p *parkedResults) pending() bool { return len(p.runs) > 0 || p.inFlight > 0 }

// count is the number of results parked or in a waiting write.
func (p *parkedResults) count() int {
	n := 0
	for _, pr := range p.runs {
		n += len(pr.results)
	}
	return n
}

// admit returns batch less the results of runs that have results parked,
// which are parked behind those.
func (p *parkedResults) admit(batch []*taskResult) []*taskResult {
	if len(p.runs) == 0 {
		return batch
	}
	return slices.DeleteFunc(batch, func(res *taskResult) bool {
		pr := p.runs[res.task.PipelineID]
		if pr != nil {
			pr.results = append(pr.results, res)
		}
		return pr != nil
	})
}

// park parks the results a write skipped, counting a miss for their runs.
func (p *parkedResults) park(r *Runner, skipped []*taskResult) {
	if len(skipped) == 0 {
		return
	}
	var missed []uuid.UUID
	for _, res := range skipped {
		id := res.task.PipelineID
		pr := p.runs[id]
		if pr == nil {
			pr = &parkedRun{}
			p.runs[id] = pr
			p.order = append(p.order, id)
		}
		if !slices.Contains(missed, id) {
			missed = append(missed, id)
		}
		pr.results = append(pr.results, res)
	}
	now := time.Now()
	for _, id := range missed {
		pr := p.runs[id]
		pr.misses++
		pr.due = now.Add(min(firstParkDelay<<min(pr.misses-1, 16), maxParkDelay))
	}
	r.logger.Debug("task results parked: their run is held by another transaction", "results", len(skipped), "runs", len(missed))
}

// due takes the parked results that are due: those of runs that have
// missed parkMisses times (any, when stopping, due or not, but for those
// whose last waiting write failed, which keep their delay) go to a waiting
// write while fewer than maxWaitingWrites are in flight; the others are
// returned, to be written again without waiting. It arms the timer for
// the next to be due.
func (p *parkedResults) due(r *Runner, svc *services, stopping bool) []*taskResult {
	if len(p.runs) == 0 {
		p.stopTimer()
		return nil
	}
	var batch []*taskResult
	var next time.Time
	now := time.Now()
	for _, id := range slices.Clone(p.order) {
		pr := p.runs[id]
		canWait := p.inFlight < maxWaitingWrites
		switch {
		case pr.waiting || len(pr.results) == 0:
		case canWait && (stopping && pr.failures == 0 || pr.misses >= parkMisses && !pr.due.After(now)):
			p.wait(r, svc, id, pr)
		case pr.due.After(now):
			if next.IsZero() || pr.due.Before(next) {
				next = pr.due
			}
		default:
			// The run stays, with its misses, until sweep.
			batch = append(batch, pr.results...)
			pr.results = nil
		}
	}
	p.stopTimer()
	if !next.IsZero() {
		p.timer = time.NewTimer(next.Sub(now))
		p.armed = true
	}
	return batch
}

// wait hands the run's parked results to a write that waits for the run,
// off the completer's path; results of the run arriving meanwhile are
// parked behind them.
func (p *parkedResults) wait(r *Runner, svc *services, id uuid.UUID, pr *parkedRun) {
	batch := pr.results
	pr.results, pr.waiting = nil, true
	p.inFlight++
	go func() {
		again, _, err := r.flush(svc.flushCtx, batch, waitAll)
		p.done <- waitedWrite{run: id, again: again, err: err}
	}()
}

// written takes back what a waiting write could not record, ahead of the
// run's results parked since: they are written again, waiting, after a
// delay that grows as held results' does (firstHoldDelay doubled at each
// failure in a row, up to maxHoldDelay; kept while stopping, so that a
// refusal is not retried in a tight loop for the whole flush time), and
// the refusal is logged as the completer's own are. When it recorded
// everything, the run's later results, if any, are due at once, to be
// written without waiting: the run is likely free now.
func (p *parkedResults) written(r *Runner, w waitedWrite) {
	p.inFlight--
	pr := p.runs[w.run]
	pr.waiting = false
	switch {
	case len(w.again) > 0:
		if !errors.Is(w.err, context.Canceled) || p.err == nil {
			p.err = w.err // a write cut short by Stop keeps the reason before it
		}
		pr.failures++
		delay := min(firstHoldDelay<<min(pr.failures-1, 16), maxHoldDelay)
		pr.results = append(w.again, pr.results...)
		pr.misses, pr.due = parkMisses, time.Now().Add(delay)
		if !errors.Is(w.err, context.Canceled) {
			r.logger.Error("record task results: the database refused the write of a run another transaction held; trying again",
				"run_id", w.run, "results", len(w.again), "retry_in", delay, "error", w.err)
		}
	case len(pr.results) == 0:
		p.remove(w.run)
	default:
		pr.misses, pr.due, pr.failures = 0, time.Now(), 0
	}
}

// sweep forgets the runs that have nothing parked any more.
func (p *parkedResults) sweep() {
	for _, id := range slices.Clone(p.order) {
		if pr := p.runs[id]; len(pr.results) == 0 && !pr.waiting {
			p.remove(id)
		}
	}
}

func (p *parkedResults) remove(id uuid.UUID) {
	delete(p.runs, id)
	p.order = slices.DeleteFunc(p.order, func(o uuid.UUID) bool { return o == id })
}

// timerC fires when parked results are due; nil when none is armed.
func (p *parkedResults) timerC() <-chan time.Time {
	if !p.armed {
		return nil
	}
	return p.timer.C
}

func (p *parkedResults) stopTimer() {
	if p.armed {
		p.timer.Stop()
		p.armed = false
	}
}

// heldResults are results the database could not take yet.
type heldResults struct {
	results []*taskResult
	delay   time.Duration
	retry   <-chan time.Time // fires when they are due again; nil when none are held
	err     error            // why the last of them could not be recorded
}

func (h *heldResults) take() []*taskResult {
	batch := h.results
	h.results, h.retry = nil, nil
	return batch
}

const (
	firstHoldDelay = 100 * time.Millisecond
	maxHoldDelay   = 5 * time.Second
)

// hold keeps the results a flush could not record (again, failing with
// err) for a later try, growing the delay when a retry of held results
// (retried) failed again.
func (r *Runner) hold(h *heldResults, again []*taskResult, err error, retried bool) {
	if len(again) == 0 {
		if retried {
			h.delay = 0
		}
		return
	}
	h.results = append(h.results, again...)
	if !errors.Is(err, context.Canceled) || h.err == nil {
		h.err = err
	}
	if retried || h.delay == 0 {
		h.delay = min(max(2*h.delay, firstHoldDelay), maxHoldDelay)
	}
	if h.retry == nil {
		h.retry = time.After(h.delay)
	}
	if errors.Is(err, context.Canceled) {
		return // stopping: completeLoop reports what is left
	}
	r.logger.Error("record task results: the database refused the write; trying again", "results", len(again),
		"held", len(h.results), "retry_in", h.delay, "error", err)
}

func (r *Runner) drain(svc *services, first *taskResult) []*taskResult {
	batch := []*taskResult{first}
	for len(batch) < completionBatch {
		select {
		case res := <-svc.results:
			batch = append(batch, res)
		default:
			return batch
		}
	}
	return batch
}

// completeMode is how a completion treats runs that other transactions
// hold (an ExecuteTx left open that starts a child of the run, a cancel,
// another runner's completion of the same run).
type completeMode int

const (
	// waitBounded waits for each run at most runLockWait; past it, the
	// transaction rolls back and the batch is written again with
	// skipHeld. The common case pays nothing for it: the bound travels
	// with BEGIN.
	waitBounded completeMode = iota
	// skipHeld first locks the runs no other transaction holds, without
	// waiting, and leaves the results of the others out, returned as
	// skipped, for a later write (see parkedResults).
	skipHeld
	// waitAll waits for every run as long as it takes: the recovery
	// paths, and a parked run's own write, off the completer's path.
	waitAll
)

// runLockWait bounds how long a completion batch waits for one run that
// another transaction holds before it leaves that run's results for
// later. A completion of the same run by another runner holds it for a
// few milliseconds, and is waited for; a longer hold (an ExecuteTx left
// open, a cancel of a large tree, a loaded server) costs the batch's other
// results this much, once.
const runLockWait = 200 * time.Millisecond

// errRunHeld ends a transaction of waitBounded whose run lock waited past
// runLockWait. It is not transient, so that withTx does not retry the
// same wait: complete writes the batch again with skipHeld.
var errRunHeld = errors.New("a run of the batch is held by another transaction")

// flush writes a batch of results in one transaction; complete retries
// transient failures itself. A batch that fails for another reason is
// split, so one bad result cannot hold back the others, and flush returns
// the results that could not be recorded now, with the error, for the
// caller to try again: a write error never discards a result. Unless mode
// is waitAll, it may leave out the results of runs other transactions
// hold: it returns them as skipped (see complete).
func (r *Runner) flush(ctx context.Context, batch []*taskResult, mode completeMode) (again, skipped []*taskResult, err error) {
	lost, skipped, err := r.complete(ctx, batch, mode)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return batch, nil, err
	case len(batch) > 1:
		mid := len(batch) / 2
		a, skipA, errA := r.flush(ctx, batch[:mid], mode)
		b, skipB, errB := r.flush(ctx, batch[mid:], mode)
		return append(a, b...), append(skipA, skipB...), cmp.Or(errA, errB)
	case errors.Is(err, driver.ErrNotFound):
		// The run is gone (its schema dropped, say): nothing to record.
		r.logger.Warn("task result dropped: its run no longer exists", "task_id", batch[0].task.ID, "task", batch[0].task.Name,
			"run_id", batch[0].task.PipelineID, "error", err)
		return nil, nil, nil
	case errors.Is(err, driver.ErrValueRejected):
		// The outcome itself cannot be stored (an output the database
		// refuses, say): record the attempt as failed, with the reason,
		// rather than leave the task Running forever.
		res := *batch[0]
		what := "output"
		if res.err != nil {
			what = "error"
		}
		res.output = nil
		res.err = Permanent(fmt.Errorf("could not record the task's %s: %w", what, err))
		if lost, skipped, err = r.complete(ctx, []*taskResult{&res}, mode); err != nil {
			return []*taskResult{&res}, nil, err
		}
	default:
		return batch, nil, err
	}
	for _, res := range lost {
		r.logger.Warn("task result not recorded: the claim is no longer held (the task was reset, or an earlier try of this write committed)",
			"task_id", res.task.ID, "task", res.task.Name, "run_id", res.task.PipelineID, "attempt", res.task.Attempt)
	}
	return nil, skipped, nil
}

// complete records a batch of results and everything they cause, in one
// transaction: fenced task transitions and their events, retries, the
// readiness of downstream tasks, and the end of runs. It returns the
// results whose claim had been lost (recorded nowhere), and, unless mode
// is waitAll, those left out because another transaction held their run
// (skipped, for a later write).
func (r *Runner) complete(ctx context.Context, batch []*taskResult, mode completeMode) (lost, skipped []*taskResult, err error) {
	lost, skipped, err = r.completeOnce(ctx, batch, mode)
	if errors.Is(err, errRunHeld) {
		r.logger.Debug("a run held by another transaction: writing the batch without it", "results", len(batch))
		lost, skipped, err = r.completeOnce(ctx, batch, skipHeld)
	}
	return lost, skipped, err
}

// runsOf returns the runs of batch's tasks, in id order (the order in
// which runs are locked), each once.
func runsOf(batch []*taskResult) []uuid.UUID {
	pids := make([]uuid.UUID, 0, len(batch))
	for _, res := range batch {
		pids = append(pids, res.task.PipelineID)
	}
	slices.SortFunc(pids, func(a, b uuid.UUID) int { return bytes.Compare(a[:], b[:]) })
	return slices.Compact(pids)
}

func (r *Runner) completeOnce(ctx context.Context, all []*taskResult, mode completeMode) (lost, skipped []*taskResult, err error) {
	// A task has one result per claim; a second one in the batch (a task
	// that ran twice under one claim) is fenced out like a lost claim. So
	// is the result of an earlier claim of a task whose later claim's
	// result is in the batch too (the earlier one's write committed but
	// was reported lost, and it came back with the next attempt's): the
	// later claim exists only because the earlier one ended. Keeping the
	// first of the two instead dropped the live one, and the task stayed
	// Running under a live runner for good.
	kept := make(map[uuid.UUID]int, len(all))
	var dups []*taskResult
	for i, res := range all {
		j, ok := kept[res.task.ID]
		switch {
		case !ok:
			kept[res.task.ID] = i
		case laterClaim(res.task, all[j].task):
			dups = append(dups, all[j])
			kept[res.task.ID] = i
		default:
			dups = append(dups, res)
		}
	}
	if len(dups) > 0 {
		in := make([]*taskResult, 0, len(kept))
		for i, res := range all {
			if kept[res.task.ID] == i {
				in = append(in, res)
			}
		}
		all = in
	}
	var claims attemptClaims
	_, err = r.withTx(ctx, 0, func(ctx context.Context, tx driver.Tx, c *changes) error {
		defer r.offerHandoff(c, &claims)()
		lost, skipped = append([]*taskResult(nil), dups...), nil
		batch := all
		pids := runsOf(batch)
		switch mode {
		case waitBounded:
			tx.LimitLockWait(runLockWait)
		case skipHeld:
			// The runs held elsewhere (or gone: the write that waits
			// finds out) leave the batch; those locked here are locked
			// again below, which does not wait.
			locked, err := tx.PipelineLockSkipLocked(ctx, pids)
			if err != nil {
				return err
			}
			held := make(map[uuid.UUID]bool, len(locked))
			for _, p := range locked {
				held[p.ID] = true
			}
			batch = slices.DeleteFunc(slices.Clone(batch), func(res *taskResult) bool {
				if !held[res.task.PipelineID] {
					skipped = append(skipped, res)
					return true
				}
				return false
			})
			if len(batch) == 0 {
				return nil
			}
			pids = runsOf(batch)
		}
		// The run locks below wait at most runLockWait with waitBounded.
		heldElsewhere := func(err error) error {
			if mode == waitBounded && errors.Is(err, driver.ErrLockWait) {
				return fmt.Errorf("%w: %v", errRunHeld, err)
			}
			return err
		}
		// Each result ends its task, and often its run.
		c.expectEvents(2 * len(batch))
		finishes := make([]driver.TaskFinish, len(batch))
		kinds := make([]finishKind, len(batch))
		var byID map[uuid.UUID]*driver.Pipeline
		index := func(pipes []*driver.Pipeline) error {
			byID = make(map[uuid.UUID]*driver.Pipeline, len(pipes))
			for _, p := range pipes {
				byID[p.ID] = p
			}
			for _, res := range batch {
				if byID[res.task.PipelineID] == nil {
					return fmt.Errorf("run %s of task %s: %w", res.task.PipelineID, res.task.ID, driver.ErrNotFound)
				}
			}
			return nil
		}
		var finished *driver.TaskFinishResult
		if allCompleted(batch) {
			// A task that returned without error completes whatever its
			// run's state: lock the runs, finish the tasks and read back
			// their runs' tasks in one call (one round trip on PostgreSQL).
			for i, res := range batch {
				finishes[i], kinds[i] = r.finishFor(res, nil, c.now)
			}
			// Runs of a workflow decided narrowly are not read back
			// whole (see advanceFrom).
			list := pids
			if narrow := r.narrowRuns(batch); narrow != nil {
				list = slices.DeleteFunc(slices.Clone(pids), func(id uuid.UUID) bool { return narrow[id] })
			}
			var err error
			finished, err = tx.TaskFinishMany(ctx, &driver.TaskFinishParams{Finishes: finishes, ListPipelineIDs: list, LockPipelineIDs: pids,
				ListStatusOnly: true})
			if err != nil {
				return heldElsewhere(err)
			}
			if err := index(finished.Pipelines); err != nil {
				return err
			}
		} else {
			pipes, err := tx.PipelineLock(ctx, pids)
			if err != nil {
				return heldElsewhere(err)
			}
			if err := index(pipes); err != nil {
				return err
			}
			for i, res := range batch {
				finishes[i], kinds[i] = r.finishFor(res, byID[res.task.PipelineID], c.now)
			}
			// Read back, in the same round trip, the tasks of every run
			// where a task ends: their readiness and the run's end are
			// decided on them.
			var list []uuid.UUID
			narrow := r.narrowRuns(batch)
			for i, f := range finishes {
				if p := byID[batch[i].task.PipelineID]; f.Status.Terminal() && !p.Status.Terminal() && !slices.Contains(list, p.ID) &&
					!narrow[p.ID] {
					list = append(list, p.ID)
				}
			}
			finished, err = tx.TaskFinishMany(ctx, &driver.TaskFinishParams{Finishes: finishes, ListPipelineIDs: list, ListStatusOnly: true})
			if err != nil {
				return heldElsewhere(err)
			}
		}
		held := make(map[uuid.UUID]bool, len(finished.Finished))
		for _, id := range finished.Finished {
			held[id] = true
		}
		advance := map[uuid.UUID]bool{}
		for i, res := range batch {
			if !held[res.task.ID] {
				lost = append(lost, res)
				continue
			}
			f := &finishes[i]
			p := byID[res.task.PipelineID]
			r.recordFinish(c, res, f, kinds[i], p)
			if f.Status.Terminal() && !p.Status.Terminal() {
				advance[p.ID] = true
			}
		}
		if len(advance) == 0 {
			return nil
		}
		ids := make([]uuid.UUID, 0, len(advance))
		for _, id := range pids {
			if advance[id] {
				ids = append(ids, id)
			}
		}
		states := make(map[uuid.UUID]*runState, len(ids))
		narrow := make(map[uuid.UUID]bool, len(ids))
		ended := map[uuid.UUID][]string{}
		runs := make([]runState, len(ids))
		// The runs' tasks come by status alone: their contexts, which grow
		// with a run, are read only where a decision merges them (see
		// runState.need), but for those of the tasks finished here, which
		// are in memory.
		load := func(ids []uuid.UUID) ([]*driver.Task, error) {
			return tx.TaskList(ctx, &driver.TaskListParams{IDs: ids, WithContexts: true})
		}
		listed := make(map[uuid.UUID]bool, len(finished.Tasks))
		for _, t := range finished.Tasks {
			listed[t.PipelineID] = true
		}
		for i, id := range ids {
			p := byID[id]
			wf, err := r.workflow(p.WorkflowName)
			if err != nil {
				return err
			}
			runs[i] = runState{p: p, wf: wf, tasks: make(map[string]*driver.Task, len(wf.tasks)),
				unloaded: make(map[string]bool, len(wf.tasks)), load: load}
			runs[i].list = func(names []string) ([]*driver.Task, error) {
				return tx.TaskList(ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{id}, Names: names})
			}
			narrow[id] = wf.narrow() && p.WorkflowVersion == wf.version
			if !narrow[id] && !listed[id] {
				// Not read back with the results: a run of a narrowly
				// decided workflow that another version of it started.
				all, err := runs[i].list(nil)
				if err != nil {
					return err
				}
				finished.Tasks = append(finished.Tasks, all...)
			}
			states[id] = &runs[i]
		}
		for _, t := range finished.Tasks {
			if st := states[t.PipelineID]; st != nil && st.tasks[t.Name] == nil {
				st.tasks[t.Name] = t
				st.unloaded[t.Name] = true
			}
		}
		for i, res := range batch {
			st := states[res.task.PipelineID]
			if st == nil || !held[res.task.ID] {
				continue
			}
			if narrow[st.p.ID] && st.tasks[res.task.Name] == nil {
				// The task as this result leaves it.
				t := *res.task
				f := &finishes[i]
				t.Status, t.Attempt, t.Error, t.RecoveryCount = f.Status, f.Attempt, f.Error, f.RecoveryCount
				t.Output, t.Input = nil, nil
				st.tasks[t.Name] = &t
				st.unloaded[t.Name] = true
				if f.Status.Terminal() {
					ended[st.p.ID] = append(ended[st.p.ID], t.Name)
				}
			}
			// A result of the recovery path comes from a listing without
			// contexts: that task's are read when needed.
			if t := st.tasks[res.task.Name]; t != nil && t.ID == res.task.ID && res.task.Input != nil {
				t.Input = res.task.Input
				if finishes[i].Status == driver.TaskCompleted {
					t.Output = finishes[i].Output
				}
				st.loaded(t.Name)
			}
		}
		for _, id := range ids {
			st := states[id]
			if narrow[id] {
				changed, leafEnded, err := st.advanceFrom(c, ended[id])
				if err != nil {
					return fmt.Errorf("run %s: %w", id, err)
				}
				taskUpdates(c, changed)
				if leafEnded {
					if err := st.endFrom(c, &r.leafHints); err != nil {
						return fmt.Errorf("run %s: %w", id, err)
					}
				}
				continue
			}
			if why := st.shapeMismatch(); why != "" {
				if err := st.abort(ctx, tx, c, why); err != nil {
					return err
				}
				continue
			}
			changed, err := st.advance(c)
			if err != nil {
				return fmt.Errorf("run %s: %w", id, err)
			}
			taskUpdates(c, changed)
			if err := st.finalize(c); err != nil {
				return fmt.Errorf("run %s: %w", id, err)
			}
		}
		return nil
	})
	r.runHandoffs(ctx, &claims, err)
	return lost, skipped, err
}

// laterClaim reports whether a is a later claim of its task than b: a
// retry claims the next attempt, a reset the same attempt with one more
// recovery.
func laterClaim(a, b *driver.Task) bool {
	return a.Attempt > b.Attempt || a.Attempt == b.Attempt && a.RecoveryCount > b.RecoveryCount
}

// allCompleted reports whether every result in batch completes its task:
// a completion does not depend on the state of the task's run.
func allCompleted(batch []*taskResult) bool {
	for _, res := range batch {
		if res.err != nil || res.recovery != "" {
			return false
		}
	}
	return true
}

// finishKind is what a result does to its task.
type finishKind int

const (
	finishCompleted finishKind = iota
	finishFailed
	finishRetry     // Ready again, next attempt, at the retry due time
	finishHandBack  // Ready again, same attempt: the runner stopped under it
	finishReset     // Ready again, same attempt, recovery count +1: its runner died
	finishAbandoned // Failed: its runner died once too often
)

// finishFor decides the transition a result causes; p, the task's run
// as locked, may be nil for a result that completes the task.
func (r *Runner) finishFor(res *taskResult, p *driver.Pipeline, now time.Time) (driver.TaskFinish, finishKind) {
	t := res.task
	f := driver.TaskFinish{
		Fence:         fenceOf(t),
		Attempt:       t.Attempt,
		RecoveryCount: t.RecoveryCount,
		Now:           now,
	}
	ready := func(at time.Time) {
		f.Status = driver.TaskReady
		f.AvailableAt = ptr(at)
	}
	var plan *retryPlan
	if wf, err := r.workflow(t.WorkflowName); err == nil {
		if def := wf.byName[t.Name]; def != nil {
			plan = def.retry
		}
	}
	switch {
	case res.recovery != "":
		if !res.overCap {
			f.RecoveryCount = t.RecoveryCount + 1
		}
		switch {
		case p.Status == driver.PipelineCancelled:
			f.Status, f.Error = driver.TaskFailed, res.recovery+"; the run was cancelled"
			return f, finishAbandoned
		case f.RecoveryCount > r.cfg.MaxRecoveries && plan != nil:
			// Abandoning decides downstream readiness, which needs the
			// workflow; a runner that does not know it resets instead and
			// leaves the decision to the next runner that claims the task
			// (execute).
			f.Status = driver.TaskFailed
			f.Error = fmt.Sprintf("abandoned after %d recoveries: %s", t.RecoveryCount, res.recovery)
			return f, finishAbandoned
		}
		ready(now)
		return f, finishReset
	case res.err == nil:
		f.Status = driver.TaskCompleted
		f.Output = res.output
		return f, finishCompleted
	}
	f.Error = storableText(res.err.Error())
	switch {
	case p.Status == driver.PipelineCancelled:
		f.Status = driver.TaskFailed
		return f, finishFailed
	case errors.Is(res.cause, errShutdown):
		ready(now)
		f.Error = ""
		return f, finishHandBack
	case plan != nil && plan.shouldRetryWithin(res.err, t.Attempt, budget(t, plan)):
		f.Attempt = t.Attempt + 1
		ready(now.Add(plan.delay(t.Attempt)))
		return f, finishRetry
	}
	f.Status = driver.TaskFailed
	return f, finishFailed
}

// budget is task t's attempt budget: the MaxAttempts recorded when its
// run was created (what its events, GetTask and TaskInfo report), even
// when this runner's version of the workflow has another; plan's for a
// task without one.
func budget(t *driver.Task, plan *retryPlan) int {
	if t.MaxAttempts > 0 {
		return t.MaxAttempts
	}
	return plan.maxAttempts
}

// recordFinish emits the event (and outbox row) of a transition whose
// fence held.
func (r *Runner) recordFinish(c *changes, res *taskResult, f *driver.TaskFinish, kind finishKind, p *driver.Pipeline) {
	t := res.task
	var duration *int64
	if !res.started.IsZero() {
		duration = ms(res.finished.Sub(res.started))
	}
	switch kind {
	case finishCompleted:
		c.event(p.ID, &t.ID, EventTaskCompleted, &EventData{Attempt: t.Attempt, DurationMS: duration})
	case finishFailed:
		c.event(p.ID, &t.ID, EventTaskFailed, &EventData{Attempt: t.Attempt, MaxAttempts: t.MaxAttempts, Error: f.Error, DurationMS: duration})
	case finishRetry:
		c.event(p.ID, &t.ID, EventTaskRetryScheduled, &EventData{Attempt: t.Attempt, MaxAttempts: t.MaxAttempts, NextAttempt: f.Attempt,
			Error: f.Error, RetryAt: f.AvailableAt, DelayMS: ms(f.AvailableAt.Sub(c.now))})
	case finishHandBack:
		c.event(p.ID, &t.ID, EventTaskReset, &EventData{Attempt: t.Attempt, Reason: errShutdown.Error(), RecoveryCount: f.RecoveryCount})
	case finishReset:
		c.event(p.ID, &t.ID, EventTaskReset, &EventData{Attempt: t.Attempt, Reason: res.recovery, RecoveryCount: f.RecoveryCount})
	case finishAbandoned:
		c.event(p.ID, &t.ID, EventTaskAbandoned, &EventData{Attempt: t.Attempt, Reason: res.recovery, Error: f.Error, RecoveryCount: f.RecoveryCount})
	}
	if f.Status == driver.TaskReady && (p.Status == driver.PipelinePending || p.Status == driver.PipelineRunning) {
		next := *t
		next.Attempt = f.Attempt
		c.enqueue(&next, *f.AvailableAt)
	}
}

// narrowRuns returns the runs of batch's tasks whose workflow is decided
// narrowly (see advanceFrom), so that their tasks need not be read back
// with the results; nil when there is none, as for every batch of small
// workflows. A run that another version of the workflow started is read
// whole later. Each workflow is looked up once.
func (r *Runner) narrowRuns(batch []*taskResult) map[uuid.UUID]bool {
	var narrow map[uuid.UUID]bool
	seen := map[string]bool{}
	for _, res := range batch {
		name := res.task.WorkflowName
		is, ok := seen[name]
		if !ok {
			wf, err := r.workflow(name)
			is = err == nil && wf.narrow()
			seen[name] = is
		}
		if is {
			if narrow == nil {
				narrow = map[uuid.UUID]bool{}
			}
			narrow[res.task.PipelineID] = true
		}
	}
	return narrow
}
