package cloacina

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// maxStartBatch bounds how many runs one start transaction writes.
const maxStartBatch = 100

// startQueue writes the runs that goroutines start at the same moment in
// one transaction (group commit). A transaction costs the database far
// more than the rows in it, so under load this is most of the cost of
// starting a run; a lone start is written on its own, as before.
//
// The caller that finds no transaction in progress leads: it writes the
// queue (its own run included) and, if more runs arrived meanwhile, hands
// the lead to the first of them. A caller that gives up while its run is
// still queued leaves at once; one whose transaction is under way waits
// for its outcome. No goroutine outlives the calls.
type startQueue struct {
	mu      sync.Mutex
	pending []*startReq
	busy    bool // a leader is writing
}

type startReq struct {
	ctx  context.Context
	run  *newRun
	done chan error    // the outcome of this run's transaction
	lead chan struct{} // this caller is to write the next batch
}

// start writes run, alone or with the runs started concurrently, and
// returns once its transaction has committed or failed.
func (q *startQueue) start(ctx context.Context, r *Runner, run *newRun) error {
	req := &startReq{ctx: ctx, run: run, done: make(chan error, 1), lead: make(chan struct{}, 1)}
	q.mu.Lock()
	q.pending = append(q.pending, req)
	lead := !q.busy
	q.busy = true
	queued := len(q.pending)
	q.mu.Unlock()
	if hook := r.startHook.Load(); hook != nil {
		(*hook)(queued)
	}
	if lead {
		q.writeNext(r)
	}
	cancelled := ctx.Done()
	for {
		select {
		case err := <-req.done:
			return err
		case <-req.lead:
			q.writeNext(r)
		case <-cancelled:
			if q.withdraw(req) {
				return ctx.Err()
			}
			// Its transaction is under way: wait for the outcome.
			cancelled = nil
		}
	}
}

// withdraw takes req out of the queue if no transaction has taken it yet,
// passing on the lead if it had been handed to req.
func (q *startQueue) withdraw(req *startReq) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	i := slices.Index(q.pending, req)
	if i < 0 {
		return false
	}
	q.pending = slices.Delete(q.pending, i, i+1)
	select {
	case <-req.lead:
		if len(q.pending) == 0 {
			q.busy = false
		} else {
			q.pending[0].lead <- struct{}{}
		}
	default:
	}
	return true
}

// writeNext writes the first batch of the queue (which holds the caller's
// own run) and passes the lead on.
func (q *startQueue) writeNext(r *Runner) {
	q.mu.Lock()
	n := min(len(q.pending), maxStartBatch)
	batch := slices.Clone(q.pending[:n])
	// The queue's array keeps no request it has handed on: one would hold
	// its caller's context and its run's input until later starts refilled
	// the array (after a burst, as many as the burst).
	clear(q.pending[:n])
	q.pending = q.pending[n:]
	if len(q.pending) == 0 {
		q.pending = nil
	}
	q.mu.Unlock()

	// A run whose caller has given up before its transaction began is not
	// written.
	live := batch[:0:0]
	for _, req := range batch {
		if err := req.ctx.Err(); err != nil {
			req.done <- err
			continue
		}
		live = append(live, req)
	}
	if len(live) > 0 {
		r.writeStarts(live)
	}

	q.mu.Lock()
	if len(q.pending) == 0 {
		q.busy = false
	} else {
		q.pending[0].lead <- struct{}{}
	}
	q.mu.Unlock()
}

// writeStarts creates the batch's runs in one transaction and tells each
// caller the outcome. A failure that retrying does not cure splits the
// batch, so one run the database refuses cannot fail the others.
func (r *Runner) writeStarts(batch []*startReq) {
	ctx, cancel := batchContext(batch)
	defer cancel()
	runs := make([]*newRun, len(batch))
	for i, req := range batch {
		runs[i] = req.run
	}
	var claims attemptClaims
	attempt := 0
	_, err := r.withTx(ctx, apiTxAttempts, func(ctx context.Context, tx driver.Tx, c *changes) error {
		attempt++
		fresh := attempt == 1
		if !fresh {
			// A retry may find its runs written already: it inserts what
			// is missing and claims nothing.
			claims.retry()
			return r.createRuns(ctx, tx, c, runs, false)
		}
		defer r.offerHandoff(c, &claims)()
		return r.createRuns(ctx, tx, c, runs, true)
	})
	r.runHandoffs(ctx, &claims, err)
	// Transient failures were retried already; splitting would only
	// multiply the wait.
	if err != nil && len(batch) > 1 && ctx.Err() == nil && !errors.Is(err, driver.ErrTransient) {
		mid := len(batch) / 2
		r.writeStarts(batch[:mid])
		r.writeStarts(batch[mid:])
		return
	}
	if err != nil && ctx.Err() == nil && r.startWritten(ctx, runs[0].id) {
		// An attempt's commit went through though it was reported failed
		// (the reply to COMMIT lost), and no later attempt could confirm
		// it: the runs exist, all of them (each attempt writes the whole
		// batch), and a caller told otherwise would start them again.
		err = nil
	}
	for _, req := range batch {
		if err != nil && req.ctx.Err() != nil {
			req.done <- req.ctx.Err()
			continue
		}
		req.done <- err
	}
}

// startWritten reports whether the run id was written, by a start
// transaction that then failed: once its failed commit has returned, the
// outcome is final (see the driver's Commit), and the run exists only if
// it committed.
func (r *Runner) startWritten(ctx context.Context, id uuid.UUID) bool {
	_, err := r.drv.Reader().PipelineGet(ctx, id)
	return err == nil
}

// batchContext is cancelled when every caller in the batch has given up:
// while one still waits, the transaction goes on (and the others, if it
// commits, have their runs after all — as when a reply is lost).
func batchContext(batch []*startReq) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(batch[0].ctx))
	var waiting atomic.Int64
	waiting.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, req := range batch {
		stops[i] = context.AfterFunc(req.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}
