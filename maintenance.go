package cloacina

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/cloacina-go/cloacina/driver"
)

// leaderLease names the lease whose holder runs maintenance.
const leaderLease = "cloacina_leader"

// errClaimLost cancels a task whose claim another runner now holds.
var errClaimLost = errors.New("claim lost: the task was reset and may run elsewhere")

// register writes this runner's row, with the workflows registered now; a
// runner without one would look dead.
func (r *Runner) register(ctx context.Context) error {
	r.mu.Lock()
	workflows, registered := r.workflowNamesLocked(), r.registered
	r.mu.Unlock()
	host, _ := os.Hostname()
	sent := time.Since(clockEpoch)
	_, err := r.retryTx(ctx, apiTxAttempts, func(ctx context.Context, tx driver.Tx, c *changes) error {
		// The registration is a sample of the database's clock.
		return r.clock.sample(func() (time.Time, error) {
			res, err := tx.RunnerUpsert(ctx, &driver.RunnerUpsertParams{ID: r.id, Name: r.name, Host: host, PID: os.Getpid(),
				Workflows: workflows})
			if err != nil {
				return time.Time{}, err
			}
			return res.HeartbeatAt, nil
		})
	})
	if err != nil {
		return err
	}
	r.noteBeat(sent)
	r.mu.Lock()
	r.rowWritten = registered
	r.mu.Unlock()
	return nil
}

// rowStale reports whether a workflow was registered since the runner's
// row was last written.
func (r *Runner) rowStale() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rowWritten != r.registered
}

// heartbeatLoop keeps the runner alive in the registry, finds claims it
// lost, and — while it holds the leader lease — sweeps for runners that
// died. It does not sweep until it has been healthy (heartbeating without
// error) for a whole RunnerTimeout: right after a restart or a database
// outage every heartbeat looks stale, and resetting then would take work
// away from runners that are alive. That time is measured on the
// monotonic clock, which a step of the wall clock cannot move.
func (r *Runner) heartbeatLoop(svc *services) {
	defer svc.loops.Done()
	ctx := svc.ctx
	healthySince := time.Now()
	leader := false
	setLeader := func(held bool) {
		if held == leader {
			return
		}
		leader = held
		r.isLeader.Store(held)
		r.logger.Info("leadership changed", "leader", held)
		if hook := r.leaderHook.Load(); hook != nil {
			(*hook)(held)
		}
	}
	// A vacant lease is taken at once rather than at the first beat, a
	// HeartbeatInterval away: the runner leads (and its sweep grace
	// starts counting) from its start, and what an idle runner does is
	// the same from its first beat on. A failure here is the first beat's
	// to retry.
	if !r.heartbeatFrozen.Load() {
		if took, err := r.takeLease(ctx); err != nil {
			if ctx.Err() == nil {
				r.logger.Warn("take the vacant leader lease", "error", err)
			}
		} else {
			setLeader(took)
		}
	}
	ticker := time.NewTicker(r.cfg.HeartbeatInterval)
	defer ticker.Stop()
	// The sweep runs beside the heartbeats, one at a time (see below).
	sweepAgain := false
	sweeping := false
	// deadWhileSweeping: a beat removed dead runners while a sweep ran,
	// which may have listed the orphans before those runners expired; a
	// sweep follows at the next beat rather than orphanSweepEvery beats on.
	deadWhileSweeping := false
	sweepFailures := 0
	swept := make(chan error, 1)
	defer func() {
		if sweeping {
			<-swept // ctx has ended, and the sweep with it
		}
	}()
	for beats := 0; ; {
		select {
		case err := <-swept:
			sweeping = false
			sweepAgain = err != nil && ctx.Err() == nil
			if sweepAgain {
				sweepFailures++
				r.logger.Error("sweep for dead runners; trying again at the next heartbeat", "error", err)
			} else {
				sweepFailures = 0
			}
			sweepAgain = sweepAgain || deadWhileSweeping
			deadWhileSweeping = false
			if hook := r.sweepHook.Load(); hook != nil {
				(*hook)(err)
			}
			continue
		case <-ctx.Done():
			return
		case <-svc.rowStale:
			// A workflow registered after Start: list it now rather than
			// at the next beat, which also retries a failure here.
			if !r.heartbeatFrozen.Load() && r.rowStale() {
				if err := r.register(ctx); err != nil && ctx.Err() == nil {
					r.logger.Warn("list newly registered workflows in the runner row", "error", err)
				}
			}
			continue
		case <-ticker.C:
		}
		beats++
		if r.heartbeatFrozen.Load() {
			continue
		}
		canSweep := leader && !healthySince.IsZero() && time.Since(healthySince) >= r.cfg.RunnerTimeout
		held, dead, err := r.beat(ctx, canSweep)
		if err != nil {
			if ctx.Err() == nil {
				r.logger.Warn("heartbeat failed", "error", err)
			}
			healthySince = time.Time{}
			held = false
		} else if healthySince.IsZero() {
			healthySince = time.Now()
		}
		if r.clock.jumped(true) {
			// The database's clock stepped ahead (see beat): every
			// heartbeat stamped before the step looks older than it is.
			// Sweep again only once every live runner has beaten since,
			// as after a restart.
			r.logger.Warn("the database's clock stepped ahead; not sweeping for dead runners for a RunnerTimeout")
			healthySince = time.Now()
			canSweep = false
		}
		setLeader(held)
		if err == nil {
			r.resetStrays(ctx)
		}
		if len(dead) > 0 {
			r.logger.Info("removed dead runners", "runners", dead)
			deadWhileSweeping = deadWhileSweeping || sweeping
		}
		if leader && canSweep && !sweeping && (len(dead) > 0 || sweepAgain || beats%orphanSweepEvery == 0) {
			// The sweep runs beside the heartbeats: a run locked by
			// another transaction (or a write the database keeps refusing
			// as transient) used to hold back the next beat while the
			// sweep waited, and this runner stopped heartbeating until it
			// looked dead itself. It is bounded all the same, so that
			// what it can reset is not held back for long by one run it
			// cannot; what it could not reset is tried again at the next
			// beat, each time with a longer bound, so that a sweep that
			// merely takes long (on a loaded machine) gets through.
			sweeping = true
			bound := sweepBound(r.cfg.RunnerTimeout, sweepFailures)
			go func() {
				sweepCtx, cancel := context.WithTimeout(ctx, bound)
				defer cancel()
				swept <- r.sweep(sweepCtx)
			}()
		}
	}
}

// sweepBound bounds a sweep that follows failures consecutive failed
// ones: a RunnerTimeout, doubled after each failure up to 16 of them.
func sweepBound(timeout time.Duration, failures int) time.Duration {
	return timeout << min(failures, 4)
}

// takeLease takes the next term of the leader lease if it is vacant. It
// runs outside the heartbeat's transaction: a new term left uncommitted
// by a runner that froze would hold back every other taker.
func (r *Runner) takeLease(ctx context.Context) (bool, error) {
	took, err := r.drv.LeaseTakeover(ctx, &driver.LeaseTakeoverParams{Name: leaderLease, Holder: r.id, TTL: r.cfg.RunnerTimeout})
	if err != nil {
		return false, err
	}
	if took.Taken {
		r.logger.Info("took the leader lease", "term", took.Term)
	}
	return took.Taken, nil
}

// beat records one heartbeat — one transaction however many tasks run,
// which also renews this runner's term of the leader lease if it holds it
// and, when sweep is set and the lease held, removes the rows of runners
// whose heartbeat expired — then takes the lease over if it is vacant,
// re-registers if the runner had been declared dead, and cancels the
// tasks whose claims it no longer holds. It reports whether this runner
// leads, and the dead runners it removed; their Running tasks are then
// orphans for the sweep to reset.
func (r *Runner) beat(ctx context.Context, sweep bool) (leader bool, dead []string, err error) {
	var alive, vacant bool
	var renewing time.Time
	var margin time.Duration
	sent := time.Since(clockEpoch)
	_, err = r.retryTx(ctx, 1, func(ctx context.Context, tx driver.Tx, c *changes) error {
		// The heartbeat is a sample of the database's clock, at no extra
		// statement.
		err := r.clock.sample(func() (time.Time, error) {
			beat, err := tx.RunnerHeartbeat(ctx, &driver.RunnerHeartbeatParams{ID: r.id})
			if err != nil {
				return time.Time{}, err
			}
			alive = beat.Alive
			return beat.Now, nil
		})
		if err != nil {
			return err
		}
		renewing = time.Now()
		lease, err := tx.LeaseRenew(ctx, &driver.LeaseRenewParams{Name: leaderLease, Holder: r.id, TTL: r.cfg.RunnerTimeout})
		if err != nil {
			return err
		}
		leader, vacant, margin = lease.Held, lease.Vacant, lease.Margin
		if hook := r.beatHook.Load(); hook != nil {
			(*hook)()
		}
		// A step ahead of the database's clock, seen by this heartbeat's
		// reading, makes the runners that beat before it look dead.
		if !leader || !sweep || r.clock.jumped(false) {
			return nil
		}
		dead, err = tx.RunnerDeleteExpired(ctx, &driver.RunnerDeleteExpiredParams{Timeout: r.cfg.RunnerTimeout})
		return err
	})
	if err != nil {
		return false, nil, err
	}
	if alive {
		r.noteBeat(sent)
	}
	if took := time.Since(renewing); leader && took >= margin {
		// The renewal committed after the term it renewed would have
		// ended (the process froze inside the transaction, say): another
		// runner may have taken the next term meanwhile, which the renewal
		// could not see. Lead again only once a renewal commits in time.
		r.logger.Warn("the lease renewal committed after the term it renewed had run out; not leading until one is on time",
			"took", took, "term_left", margin)
		leader = false
	}
	if vacant {
		took, err := r.takeLease(ctx)
		if err != nil {
			return false, dead, err
		}
		leader = leader || took
	}
	if !alive || r.rowStale() {
		if !alive {
			r.logger.Warn("this runner was declared dead (heartbeat expired); registering again")
		}
		if err := r.register(ctx); err != nil {
			return leader, dead, err
		}
	}
	running := r.runningTasks()
	if len(running) == 0 || r.heartbeatFrozen.Load() {
		return leader, dead, nil
	}
	fences := make([]driver.Fence, len(running))
	for i, rt := range running {
		fences[i] = fenceOf(rt.task)
	}
	lost := map[string]bool{}
	for part := range slices.Chunk(fences, maxIDsPerRead) {
		res, err := r.drv.Reader().TaskFenceCheck(ctx, &driver.TaskFenceCheckParams{Fences: part})
		if err != nil {
			return leader, dead, err
		}
		for _, id := range res.Lost {
			lost[id.String()] = true
		}
	}
	for _, rt := range running {
		if lost[rt.task.ID.String()] {
			r.logger.Warn("claim lost; cancelling the task here", "task_id", rt.task.ID, "task", rt.task.Name, "run_id", rt.task.PipelineID)
			rt.cancel(errClaimLost)
		}
	}
	return leader, dead, nil
}

// noteBeat records that a heartbeat (or registration) sent at sent, since
// clockEpoch, committed.
func (r *Runner) noteBeat(sent time.Duration) {
	r.beatMu.Lock()
	defer r.beatMu.Unlock()
	prev := r.beatSent.Load()
	if prev > int64(sent) {
		return
	}
	if prev != 0 && sent-time.Duration(prev-1) >= r.cfg.RunnerTimeout/2 {
		// Stored first: a reader that sees the new beatSent sees the gap.
		r.gapEnded.Store(int64(sent) + 1)
	}
	r.beatSent.Store(int64(sent) + 1)
}

// claimInDoubt reports whether this runner may have been declared dead,
// and a claim it took at claimed (since clockEpoch, before the claiming
// transaction began) reset, by now: no heartbeat it sent within the last
// half RunnerTimeout committed, or two committed heartbeats since the
// claim were that far apart. Other runners declare it dead a
// RunnerTimeout after its last heartbeat by the database's clock; half of
// it leaves margin for the time between this check and what it guards.
// At the defaults (a heartbeat every 5s, RunnerTimeout 30s) a healthy
// runner is never in doubt; with a RunnerTimeout near two heartbeats, a
// beat late by a fraction of its interval puts the tasks begun meanwhile
// in doubt, which costs each of them one read.
func (r *Runner) claimInDoubt(claimed time.Duration) bool {
	sent := r.beatSent.Load() // before gapEnded: see noteBeat
	gap := r.gapEnded.Load()
	return sent == 0 || time.Since(clockEpoch)-time.Duration(sent-1) >= r.cfg.RunnerTimeout/2 ||
		(gap != 0 && time.Duration(gap-1) > claimed)
}

// claimHeld is checked just before a claimed task's function is called.
// A task whose context ended already (its run was cancelled, its claim
// found lost, the runner stopping past its grace) is not called: it ends
// with the context's error, as a function that heeds its context would.
// A runner whose claim is in doubt — it stalled, or lost the database,
// for longer than its heartbeats allow since it claimed — reads whether
// it still holds the claim, and does not call a task whose claim another
// runner took (it could be running elsewhere, or its run be over). While
// the database cannot answer, the task waits (retrying the read, as an
// uncertain claim does; a heartbeat that finds the claim lost, or the
// runner stopping past its grace, ends the wait): running it then would
// most likely run it twice. Once called, a function whose claim is lost
// is cancelled at the next heartbeat, and its completion is fenced out.
func (r *Runner) claimHeld(ctx context.Context, t *driver.Task, claimed time.Duration) error {
	notBegun := func() error {
		err := ctx.Err()
		if cause := context.Cause(ctx); cause != err {
			return fmt.Errorf("not begun: %w (%w)", cause, err)
		}
		return fmt.Errorf("not begun: %w", err)
	}
	if ctx.Err() != nil {
		return notBegun()
	}
	if !r.claimInDoubt(claimed) {
		return nil
	}
	held, err := r.verifyClaims(ctx, []*driver.Task{t})
	switch {
	case err != nil:
		return notBegun()
	case len(held) == 0:
		r.logger.Warn("claim lost before the task began (heartbeats were late since it was taken); not running it",
			"task_id", t.ID, "task", t.Name, "run_id", t.PipelineID)
		return errClaimLost
	}
	return nil
}

// maxIDsPerRead bounds the tasks or runs one read of every running task
// (or its run) names. Tasks that wait (DeferUntil, a child run) hold no
// slot, so a runner may run far more tasks than MaxConcurrentTasks: more
// than SQLite binds values in one statement.
const maxIDsPerRead = 1024

func fenceOf(t *driver.Task) driver.Fence {
	return driver.Fence{TaskID: t.ID, RunnerID: t.RunnerID, Attempt: t.Attempt, RecoveryCount: t.RecoveryCount}
}

// sweep resets the Running tasks of runners whose heartbeat expired or
// whose row is gone (or abandons them past MaxRecoveries). Expiry is
// judged by the database's clock, like the heartbeats themselves: this
// runner's clock, however far it is off, plays no part. The transitions
// are fenced on the dead runner's claim, so a runner that was only slow
// loses nothing it has not already lost.
//
// A step of the database's clock ahead while the sweep runs, after the
// heartbeat before it, would make its listing take live runners for dead
// (see heartbeatLoop): the sweep reads the clock once its listing found
// orphans, and resets nothing if that reading, or any other since the
// sweep began, found the clock stepped.
func (r *Runner) sweep(ctx context.Context) error {
	jumps := r.clock.jumps.Load()
	steady := func(ctx context.Context) (bool, error) {
		if err := r.clock.sample(func() (time.Time, error) { return r.drv.Reader().ClockRead(ctx) }); err != nil {
			return false, err
		}
		if r.clock.jumps.Load() != jumps {
			r.logger.Warn("the database's clock stepped ahead while sweeping for dead runners; resetting nothing until every live runner has beaten since")
			return false, nil
		}
		return true, nil
	}
	return r.recoverClaims(ctx, &driver.TaskListOrphanedParams{Timeout: r.cfg.RunnerTimeout}, steady, func(t *driver.Task) string {
		return fmt.Sprintf("runner %s stopped heartbeating", t.RunnerID)
	})
}

// recoverOwn resets (or abandons) the Running tasks claimed under this
// runner's id before it started: an earlier process with the same
// RunnerID that crashed, or a Stop that could not record its last
// results. Nothing runs them — this runner has not started a task yet —
// and the sweep never would, because the id heartbeats again.
func (r *Runner) recoverOwn(ctx context.Context) error {
	return r.recoverClaims(ctx, &driver.TaskListOrphanedParams{RunnerID: r.id}, nil, func(*driver.Task) string {
		return fmt.Sprintf("runner %s restarted without finishing the task", r.id)
	})
}

// recoverClaims resets the tasks the listing finds, a batch at a time,
// each fenced on its claim as listed. steady, unless nil, is asked after
// each listing that found tasks whether they may be reset; when it says
// no, recoverClaims resets nothing more.
func (r *Runner) recoverClaims(ctx context.Context, list *driver.TaskListOrphanedParams,
	steady func(context.Context) (bool, error), reason func(*driver.Task) string) error {
	list.Limit = completionBatch
	for {
		orphans, err := r.drv.Reader().TaskListOrphaned(ctx, list)
		if err != nil {
			return err
		}
		if len(orphans) == 0 {
			return nil
		}
		if steady != nil {
			if ok, err := steady(ctx); !ok {
				return err
			}
		}
		batch := make([]*taskResult, len(orphans))
		for i, t := range orphans {
			why := reason(t)
			batch[i] = &taskResult{task: t, recovery: why, err: errors.New(why)}
		}
		lost, _, err := r.complete(ctx, batch, waitAll)
		if err != nil {
			return err
		}
		r.logger.Info("recovered tasks", "tasks", len(orphans)-len(lost), "reason", reason(orphans[0]))
		if len(orphans) < completionBatch || len(lost) == len(orphans) {
			return nil
		}
	}
}

// maintenanceBound bounds a write the heartbeat loop makes between two
// beats (a reset of strays), so that the next beat is never later than
// half a RunnerTimeout: RunnerTimeout/2 less a heartbeat interval, which
// is positive since RunnerTimeout exceeds two of them, and at least one
// interval. (The sweep, which this bounded too, runs beside the beats:
// under a loaded machine it kept running out of this bound.)
func (r *Runner) maintenanceBound() time.Duration {
	return max(r.cfg.HeartbeatInterval, r.cfg.RunnerTimeout/2-r.cfg.HeartbeatInterval)
}

// resetStrays resets the claims this runner may hold without running them
// (see Runner.strays): Ready again, recovery count +1, each fenced on its
// claim, so one that never committed changes nothing. It is bounded (see
// maintenanceBound), and what it cannot record waits for the next beat.
func (r *Runner) resetStrays(ctx context.Context) {
	r.runningMu.Lock()
	strays := r.strays
	r.strays = nil
	r.runningMu.Unlock()
	if len(strays) == 0 {
		return
	}
	why := fmt.Sprintf("runner %s could not confirm its claim after a failed commit", r.id)
	batch := make([]*taskResult, len(strays))
	for i, t := range strays {
		batch[i] = &taskResult{task: t, recovery: why, err: errors.New(why)}
	}
	ctx, cancel := context.WithTimeout(ctx, r.maintenanceBound())
	defer cancel()
	lost, _, err := r.complete(ctx, batch, waitAll)
	if err != nil {
		r.runningMu.Lock()
		r.strays = append(r.strays, strays...)
		r.runningMu.Unlock()
		if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			r.logger.Warn("reset claims not verified after a failed commit; trying again at the next heartbeat",
				"tasks", len(strays), "error", err)
		}
		return
	}
	r.logger.Info("reset claims not verified after a failed commit", "tasks", len(strays)-len(lost), "not_held", len(lost))
}

// deregister removes this runner's row and gives up leadership, conditional
// on this runner holding them.
func (r *Runner) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := r.withTx(ctx, apiTxAttempts, func(ctx context.Context, tx driver.Tx, c *changes) error {
		if err := tx.LeaseRelease(ctx, &driver.LeaseReleaseParams{Name: leaderLease, Holder: r.id}); err != nil {
			return err
		}
		return tx.RunnerDelete(ctx, &driver.RunnerDeleteParams{ID: r.id})
	})
	if err != nil {
		r.logger.Warn("deregister runner", "error", err)
	}
	// The heartbeat loop has ended: the change is told here, as it told
	// the others (the lease, if its release failed, runs out by itself).
	if r.isLeader.Swap(false) {
		r.logger.Info("leadership changed", "leader", false)
		if hook := r.leaderHook.Load(); hook != nil {
			(*hook)(false)
		}
	}
}
