package cloacina

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/dag"
)

// Get returns the current state of a run, from any process.
func (r *Runner) Get(ctx context.Context, id uuid.UUID) (*ExecutionResult, error) {
	db, err := r.reader(ctx)
	if err != nil {
		return nil, err
	}
	p, err := db.PipelineGet(ctx, id)
	if err != nil {
		return nil, r.notFound(id, err)
	}
	tasks, err := db.TaskList(ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{id}})
	if err != nil {
		return nil, r.closedErr(err)
	}
	res := &ExecutionResult{ID: p.ID, Workflow: p.WorkflowName, WorkflowVersion: p.WorkflowVersion, Status: p.Status,
		CreatedAt: p.CreatedAt, StartedAt: p.StartedAt, CompletedAt: p.CompletedAt, Error: p.Error,
		ParentRunID: p.ParentPipelineID, ParentTaskID: p.ParentTaskID}
	if p.CompletedAt != nil {
		res.Duration = p.CompletedAt.Sub(p.CreatedAt)
	}
	if res.Input, err = contextFromJSON(p.Input); err != nil {
		return nil, fmt.Errorf("run %s: input %w", id, err)
	}
	if p.Output != nil {
		if res.Context, err = contextFromJSON(p.Output); err != nil {
			return nil, fmt.Errorf("run %s: final %w", id, err)
		}
	}
	res.Tasks = make([]TaskResult, len(tasks))
	for i, t := range tasks {
		res.Tasks[i] = newTaskResult(t)
	}
	return res, nil
}

func newTaskResult(t *driver.Task) TaskResult {
	tr := TaskResult{ID: t.ID, Name: t.Name, Status: t.Status, Attempts: t.Attempt, StartedAt: t.StartedAt,
		CompletedAt: t.CompletedAt, Error: t.Error, Recoveries: t.RecoveryCount, SubStatus: t.SubStatus}
	if t.StartedAt != nil && t.CompletedAt != nil && t.Status != driver.TaskSkipped {
		tr.Duration = t.CompletedAt.Sub(*t.StartedAt)
	}
	return tr
}

// Backlog returns the unfinished work of every workflow that has any, by
// workflow name, from any process: tasks waiting to be claimed and for
// how long, tasks running, and runs not finished. It counts every
// workflow in the database, not only those this runner registered.
func (r *Runner) Backlog(ctx context.Context) ([]Backlog, error) {
	db, err := r.reader(ctx)
	if err != nil {
		return nil, err
	}
	// Due times are the database's clock: a runner that is not started
	// (a read-only one, a dashboard) samples it here, or a clock of its
	// host that runs ahead would count retries not yet due as waiting.
	r.syncClock(ctx, db)
	rows, err := db.BacklogList(ctx, &driver.BacklogListParams{Now: r.now()})
	if err != nil {
		return nil, r.closedErr(err)
	}
	out := make([]Backlog, len(rows))
	for i, b := range rows {
		out[i] = Backlog{Workflow: b.Workflow, Ready: int(b.Ready), Delayed: int(b.Delayed), OldestReadyAt: b.OldestReadyAt,
			Running: int(b.Running), Deferred: int(b.Deferred),
			PendingRuns: int(b.PendingRuns), RunningRuns: int(b.RunningRuns), PausedRuns: int(b.PausedRuns)}
	}
	return out, nil
}

// GetTask returns one task of a run with the contexts it received and
// produced, from any process; an unknown id is ErrTaskNotFound.
func (r *Runner) GetTask(ctx context.Context, id uuid.UUID) (*TaskDetail, error) {
	db, err := r.reader(ctx)
	if err != nil {
		return nil, err
	}
	tasks, err := db.TaskList(ctx, &driver.TaskListParams{IDs: []uuid.UUID{id}, WithContexts: true})
	if err != nil {
		return nil, r.closedErr(err)
	}
	if len(tasks) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrTaskNotFound, id)
	}
	t := tasks[0]
	d := &TaskDetail{TaskResult: newTaskResult(t), RunID: t.PipelineID, Workflow: t.WorkflowName,
		MaxAttempts: t.MaxAttempts}
	switch t.Status {
	case driver.TaskRunning:
		d.RunnerID = t.RunnerID
	case driver.TaskReady:
		d.DueAt = t.AvailableAt
	}
	if t.Input != nil {
		if d.Input, err = contextFromJSON(t.Input); err != nil {
			return nil, fmt.Errorf("task %s: input %w", id, err)
		}
	}
	if t.Output != nil {
		if d.Output, err = contextFromJSON(t.Output); err != nil {
			return nil, fmt.Errorf("task %s: output %w", id, err)
		}
	}
	return d, nil
}

// Runners returns the runners registered on the database (started and
// heartbeating, or dead and not yet swept), oldest first.
func (r *Runner) Runners(ctx context.Context) ([]RunnerInfo, error) {
	db, err := r.reader(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := db.RunnerList(ctx)
	if err != nil {
		return nil, r.closedErr(err)
	}
	lease, err := db.LeaseGet(ctx, &driver.LeaseGetParams{Name: leaderLease})
	if err != nil {
		return nil, r.closedErr(err)
	}
	out := make([]RunnerInfo, len(rows))
	for i, row := range rows {
		out[i] = RunnerInfo{ID: row.ID, Name: row.Name, Host: row.Host, PID: row.PID, Workflows: row.Workflows,
			StartedAt: row.StartedAt, HeartbeatAt: row.HeartbeatAt, Leader: lease != nil && lease.Holder == row.ID}
	}
	return out, nil
}

// IsLeader reports whether this runner currently holds the maintenance
// lease: it is the one sweeping for dead runners.
func (r *Runner) IsLeader() bool { return r.isLeader.Load() }

// ListOpts filters and pages a run listing. A nil *ListOpts lists the 100
// newest runs.
type ListOpts struct {
	// Statuses keeps runs in any of these statuses (one that is not a
	// PipelineStatus constant is refused). Default: all.
	Statuses []PipelineStatus
	// Workflow keeps runs of this workflow. Default: all.
	Workflow string
	// ParentRunID keeps the runs that tasks of this run started: its
	// children, not their descendants. Default: all runs.
	ParentRunID *uuid.UUID
	// Since keeps runs created at or after it, Until those created before
	// it. Default (zero time): no bound.
	Since, Until time.Time
	// Limit bounds the runs returned. Default (0): 100; negative is
	// refused.
	Limit int
	// After continues a listing after this run (the last of the previous
	// page). Default: start from the newest.
	After *RunSummary
}

// List returns runs, newest first.
func (r *Runner) List(ctx context.Context, opts *ListOpts) ([]*RunSummary, error) {
	db, err := r.reader(ctx)
	if err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &ListOpts{}
	}
	if opts.Limit < 0 {
		return nil, fmt.Errorf("cloacina: ListOpts.Limit %d is negative: use 0 for the default (100), or a positive bound", opts.Limit)
	}
	if err := checkKnown("ListOpts.Statuses", opts.Statuses, runStatuses); err != nil {
		return nil, err
	}
	params := &driver.PipelineListParams{Statuses: opts.Statuses, WorkflowName: opts.Workflow, Limit: opts.Limit}
	if params.Limit == 0 {
		params.Limit = 100
	}
	if opts.ParentRunID != nil {
		params.ParentPipelineIDs = []uuid.UUID{*opts.ParentRunID}
	}
	if opts.After != nil {
		params.CreatedBefore = &opts.After.CreatedAt
		params.BeforeID = opts.After.ID
	}
	if !opts.Since.IsZero() && !opts.Until.IsZero() && !opts.Since.Before(opts.Until) {
		return nil, fmt.Errorf("cloacina: ListOpts.Since %s is not before Until %s: no run can match; swap them or leave one zero",
			opts.Since.UTC().Format(time.RFC3339Nano), opts.Until.UTC().Format(time.RFC3339Nano))
	}
	if !opts.Since.IsZero() {
		params.CreatedSince = ptr(ceilMicro(opts.Since))
	}
	if !opts.Until.IsZero() {
		params.CreatedUntil = ptr(ceilMicro(opts.Until))
	}
	ps, err := db.PipelineList(ctx, params)
	if err != nil {
		return nil, r.closedErr(err)
	}
	out := make([]*RunSummary, len(ps))
	for i, p := range ps {
		out[i] = &RunSummary{ID: p.ID, Workflow: p.WorkflowName, WorkflowVersion: p.WorkflowVersion, Status: p.Status,
			CreatedAt: p.CreatedAt, StartedAt: p.StartedAt, CompletedAt: p.CompletedAt, Error: p.Error,
			ParentRunID: p.ParentPipelineID, ParentTaskID: p.ParentTaskID}
	}
	return out, nil
}

// EventQuery selects execution events. Zero fields do not filter.
type EventQuery struct {
	// RunID keeps the events of one run.
	RunID *uuid.UUID
	// TaskID keeps the events of one task execution.
	TaskID *uuid.UUID
	// Types keeps events of these types (one that is not an EventType
	// constant is refused).
	Types []EventType
	// AfterSeq follows the log after the event with this sequence number:
	// pass the SequenceNum of the last event of each read as the next
	// AfterSeq and no event is skipped or repeated. On PostgreSQL a number
	// is taken at insert, not at commit, so following returns events in
	// commit order (an event can come after one numbered higher), and only
	// those of transactions older than every transaction still open. If
	// retention deleted that event, PostgreSQL follows from the oldest
	// event again: events can repeat, none is skipped.
	AfterSeq int64
	// Follow follows the log from its start when AfterSeq is 0. Start a
	// follower with Follow, not from a plain listing or RecentEvents: on
	// PostgreSQL those are in sequence order and can leave the events of a
	// transaction still open behind their last number. With Newest and
	// Limit 1 it returns the newest event a follower can have seen: its
	// SequenceNum follows from now.
	Follow bool
	// Since keeps events created at or after it, and Until those created
	// before it (the database's clock, see Runner). They select by time
	// but do not change the order, which stays that of sequence numbers
	// (or of following). The zero time does not filter. A narrow window is
	// quick to read anywhere in the log; a wide one read from its far end
	// (Until long ago with Newest, Since long ago without) walks every
	// event in between.
	Since, Until time.Time
	// BeforeSeq keeps the events numbered below it, to page back through
	// the log: with Newest and Limit, pass the SequenceNum of the last
	// (oldest) event of a page as the next BeforeSeq. Zero does not bound;
	// negative is refused. It pages in sequence order, so it does not
	// combine with AfterSeq or Follow, which follow in commit order. On
	// PostgreSQL an event that commits after a page was read but is
	// numbered within it (a number is taken at insert, not at commit) is
	// in no page: to see every event, follow the log.
	BeforeSeq int64
	// Newest returns the most recent events first.
	Newest bool
	// Limit bounds the events returned; 0 means all; negative is refused.
	Limit int
}

// Events returns execution events in sequence order (newest first with
// Newest), or in following order with AfterSeq or Follow.
func (r *Runner) Events(ctx context.Context, q *EventQuery) ([]*Event, error) {
	evs, err := r.listEvents(ctx, q, 0)
	if err != nil {
		return nil, err
	}
	out := make([]*Event, len(evs))
	for i, e := range evs {
		out[i] = eventFromDriver(e)
	}
	return out, nil
}

// listEvents is Events with the backend's events, which carry their place
// in following order; afterTx is that of the event q.AfterSeq names, or 0
// (see driver.EventListParams.AfterTx).
func (r *Runner) listEvents(ctx context.Context, q *EventQuery, afterTx int64) ([]*driver.Event, error) {
	db, err := r.reader(ctx)
	if err != nil {
		return nil, err
	}
	if q == nil {
		q = &EventQuery{}
	}
	after := q.AfterSeq
	if after < 0 {
		return nil, fmt.Errorf("cloacina: EventQuery.AfterSeq %d: sequence numbers are positive (use Follow to follow from the start)", after)
	}
	if q.Limit < 0 {
		return nil, fmt.Errorf("cloacina: EventQuery.Limit %d is negative: use 0 for all events, or a positive bound", q.Limit)
	}
	switch {
	case q.BeforeSeq < 0:
		return nil, fmt.Errorf("cloacina: EventQuery.BeforeSeq %d is negative: pass the SequenceNum of the oldest event read so far, or 0 for no bound", q.BeforeSeq)
	case q.BeforeSeq > 0 && (after != 0 || q.Follow):
		return nil, errors.New("cloacina: EventQuery.BeforeSeq pages back in sequence order, and AfterSeq and Follow follow the log in commit order: leave out BeforeSeq to follow, or AfterSeq and Follow to page back")
	}
	if err := checkKnown("EventQuery.Types", q.Types, driver.EventTypes); err != nil {
		return nil, err
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		return nil, fmt.Errorf("cloacina: EventQuery.Since %s is not before Until %s: no event can match; swap them or leave one zero",
			q.Since.UTC().Format(time.RFC3339Nano), q.Until.UTC().Format(time.RFC3339Nano))
	}
	if q.Follow && after == 0 {
		after = -1 // the driver's "follow from the start"
	}
	params := &driver.EventListParams{PipelineID: q.RunID, TaskID: q.TaskID, Types: q.Types,
		AfterSeq: after, BeforeSeq: q.BeforeSeq, Newest: q.Newest, Limit: q.Limit}
	if after > 0 {
		params.AfterTx = afterTx
	}
	if !q.Since.IsZero() {
		params.CreatedFrom = ptr(ceilMicro(q.Since))
	}
	if !q.Until.IsZero() {
		params.CreatedBefore = ptr(ceilMicro(q.Until))
	}
	evs, err := db.EventList(ctx, params)
	if err != nil {
		return nil, r.closedErr(err)
	}
	return evs, nil
}

// RunEvents returns every event of one run, in sequence order.
func (r *Runner) RunEvents(ctx context.Context, runID uuid.UUID) ([]*Event, error) {
	return r.Events(ctx, &EventQuery{RunID: &runID})
}

// TaskEvents returns every event of one task execution, in sequence order.
func (r *Runner) TaskEvents(ctx context.Context, taskID uuid.UUID) ([]*Event, error) {
	return r.Events(ctx, &EventQuery{TaskID: &taskID})
}

// RecentEvents returns the n most recent events, newest first.
func (r *Runner) RecentEvents(ctx context.Context, n int) ([]*Event, error) {
	if n <= 0 {
		return nil, errors.New("cloacina: RecentEvents needs n > 0")
	}
	return r.Events(ctx, &EventQuery{Newest: true, Limit: n})
}

// CountRunEvents counts the events of one run.
func (r *Runner) CountRunEvents(ctx context.Context, runID uuid.UUID) (int64, error) {
	return r.countEvents(ctx, &driver.EventCountParams{PipelineID: &runID})
}

// CountEventsBefore counts the events DeleteEventsBefore would delete with
// the same cutoff and opts, so a dry run reports what the real one
// deletes: by default the events created before cutoff of finished runs
// (Completed, Failed, or Cancelled with no task still running, or whose
// row is gone), with
// opts.IncludeUnfinishedRuns every event created before cutoff. Of opts,
// only IncludeUnfinishedRuns changes the count; a bad BatchSize fails it
// as it fails the deletion. A nil *DeleteEventsOpts means defaults.
func (r *Runner) CountEventsBefore(ctx context.Context, cutoff time.Time, opts *DeleteEventsOpts) (int64, error) {
	if _, err := opts.batchSize(); err != nil {
		return 0, err
	}
	cutoff = ceilMicro(cutoff)
	return r.countEvents(ctx, &driver.EventCountParams{Before: &cutoff, ExcludeUnfinishedRuns: !opts.includeUnfinished()})
}

func (r *Runner) countEvents(ctx context.Context, params *driver.EventCountParams) (int64, error) {
	db, err := r.reader(ctx)
	if err != nil {
		return 0, err
	}
	n, err := db.EventCount(ctx, params)
	return n, r.closedErr(err)
}

// DeleteEventsOpts tunes DeleteEventsBefore and CountEventsBefore. A nil
// *DeleteEventsOpts means defaults.
type DeleteEventsOpts struct {
	// BatchSize is how many events one transaction deletes, so retention
	// never holds locks for long. Default: 1000.
	BatchSize int
	// IncludeUnfinishedRuns deletes by age alone: the old events of runs
	// still Pending, Running or Paused (or Cancelled with a task that has
	// not returned) go too, and Replay of what is left
	// no longer describes those runs from their start. Default: false, such
	// runs keep every event until they finish.
	IncludeUnfinishedRuns bool
	// Progress, if set, is called after each batch with the total deleted
	// so far.
	Progress func(deleted int64)
}

// batchSize is the batch size o asks for, or the default.
func (o *DeleteEventsOpts) batchSize() (int, error) {
	switch {
	case o == nil || o.BatchSize == 0:
		return 1000, nil
	case o.BatchSize < 0:
		return 0, errors.New("cloacina: DeleteEventsOpts.BatchSize must be positive (or 0 for the default, 1000)")
	}
	return o.BatchSize, nil
}

func (o *DeleteEventsOpts) includeUnfinished() bool { return o != nil && o.IncludeUnfinishedRuns }

// DeleteEventsBefore deletes old events, the first recorded first, one
// batch per transaction, and returns how many it deleted. It keeps every
// event of a run that is not finished (Pending, Running or Paused, or
// Cancelled with a task that has not returned yet), however old, so Replay of such a run still rebuilds the status of each
// of its tasks; it deletes the events created before cutoff of runs that
// are Completed, Failed or Cancelled, and of runs whose row no longer
// exists. With opts.IncludeUnfinishedRuns it deletes by age alone, runs
// still going included. CountEventsBefore with the same cutoff and opts
// counts what it would delete. If ctx ends midway, the batches already
// deleted stay deleted. A batch whose commit was reported failed is
// counted if it committed all the same (its reply lost), and deleted
// again if not. Each batch costs about the same however many old
// events there are, and however many of them are kept: a pass walks the
// events once, in the order they were recorded, each batch starting where
// the one before ended, up to the newest event created before cutoff when
// the pass began. Events recorded after that are left for the next pass,
// as are the old events of a run that finishes during the pass which the
// pass had already walked past. Events' times follow the database's clock
// whichever runner recorded them (see Runner), so one cutoff suits them
// all.
func (r *Runner) DeleteEventsBefore(ctx context.Context, cutoff time.Time, opts *DeleteEventsOpts) (int64, error) {
	batch, err := opts.batchSize()
	if err != nil {
		return 0, err
	}
	cutoff = ceilMicro(cutoff) // see ceilMicro: "before" a finer cutoff
	params := &driver.EventDeleteParams{Before: cutoff, Limit: batch, ExcludeUnfinishedRuns: !opts.includeUnfinished()}
	var progress func(int64)
	if opts != nil {
		progress = opts.Progress
	}
	var total int64
	for {
		var n, last int64
		// tried is what an attempt of this batch deleted before its
		// commit failed; redo says this attempt deleted it again.
		var tried *driver.EventDeleteResult
		redo := false
		err := r.apiTx(ctx, func(ctx context.Context, tx driver.Tx, c *changes) error {
			redo = false
			if params.UpTo == 0 {
				// The pass ends at the newest event older than cutoff
				// now: each batch then walks events in sequence order
				// and stops there, not at the end of the table.
				newest, err := tx.EventLastBefore(ctx, cutoff)
				if err != nil || newest == 0 {
					return err
				}
				params.UpTo = newest
			}
			p := params
			if tried != nil {
				// A failed commit may have committed all the same (its
				// reply lost): the events of that attempt's range are
				// then gone, and the batch is counted, not replaced by
				// the next one. Otherwise this deletes them again.
				again := *params
				again.UpTo = tried.Last
				p, redo = &again, true
			}
			res, err := tx.EventDelete(ctx, p)
			if err != nil {
				return err
			}
			if redo && res.Deleted == 0 {
				n, last = tried.Deleted, tried.Last
				return nil
			}
			n, last = res.Deleted, res.Last
			if n > 0 {
				tried = res
			}
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("delete events: %w", err)
		}
		if last > 0 {
			// The next batch starts after this one (once it committed).
			params.After = last
		}
		total += n
		if progress != nil && n > 0 {
			progress(total)
		}
		// A batch deleted again stops at the range it had deleted, so a
		// short one is not the end of the pass.
		if n < int64(batch) && !redo {
			return total, nil
		}
	}
}

// runStatuses lists every run status.
var runStatuses = []PipelineStatus{PipelinePending, PipelineRunning, PipelinePaused, PipelineCompleted, PipelineFailed,
	PipelineCancelled}

// checkKnown refuses a filter value that is none of known (a typo would
// match nothing, silently), naming the closest one or all of them.
func checkKnown[T ~string](field string, values, known []T) error {
	for _, v := range values {
		if slices.Contains(known, v) {
			continue
		}
		names := make([]string, len(known))
		for i, k := range known {
			names[i] = string(k)
		}
		if c := dag.Closest(string(v), names); c != "" {
			return fmt.Errorf("cloacina: %s has %q, which is none of them: did you mean %q?", field, v, c)
		}
		return fmt.Errorf("cloacina: %s has %q, which is none of them: use one of %s", field, v, strings.Join(names, ", "))
	}
	return nil
}

// ceilMicro rounds t up to a whole microsecond. Both backends store times
// to the microsecond, and cut a finer bound down: a bound rounded up
// selects the same stored times as the bound itself, from ("at or after")
// and until ("before") alike.
func ceilMicro(t time.Time) time.Time {
	if c := t.Truncate(time.Microsecond); !c.Equal(t) {
		return c.Add(time.Microsecond)
	}
	return t
}
