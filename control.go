package cloacina

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

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
//
// Cancel cancels the run's unfinished descendants with it, in the same
// transaction: the runs its tasks started (see Execute), the runs theirs
// started, and so on. Each ends Cancelled as if cancelled on its own, its
// reason naming the cancelled run above it: "parent run <id> cancelled"
// ("ancestor run <id> cancelled" under a parent that had finished).
// Descendants that finished already are left as they are, and so is the
// run's own parent: cancelling a child does not touch the run that
// started it. A run started from a task of a cancelled run fails with
// ErrRunFinished, so no child escapes a cancel that races with its start.
// A child started while Cancel locks the tree, which another transaction
// then holds, makes Cancel begin again; if that keeps happening (an
// application transaction that started a grandchild with ExecuteTx and
// stays open, say), Cancel gives up after a few attempts with an error
// naming the run and the children, having cancelled nothing: call it
// again.
func (r *Runner) Cancel(ctx context.Context, id uuid.UUID) error {
	return r.apiTx(ctx, func(ctx context.Context, tx driver.Tx, c *changes) error {
		tree, err := lockTree(ctx, tx, id)
		if err != nil {
			return err
		}
		root := tree.locked[id]
		switch root.Status {
		case driver.PipelineCancelled:
			return nil
		case driver.PipelineCompleted, driver.PipelineFailed:
			return fmt.Errorf("cancel run %s: %w (%s)", id, ErrRunFinished, root.Status)
		}
		cancel := []*driver.Pipeline{root}
		reasons := map[uuid.UUID]string{id: "cancelled on request"}
		for _, d := range tree.order {
			p, ok := tree.locked[d]
			if !ok || p.Status.Terminal() {
				continue
			}
			cancel = append(cancel, p)
			reasons[d] = tree.reason(d)
		}
		// Removing the outbox rows first means no runner can claim a task
		// of these runs any more; the task list read next is then final.
		ids := make([]uuid.UUID, len(cancel))
		for i, p := range cancel {
			ids[i] = p.ID
			if _, err := tx.OutboxDelete(ctx, &driver.OutboxDeleteParams{PipelineID: p.ID}); err != nil {
				return err
			}
		}
		tasks, err := tx.TaskList(ctx, &driver.TaskListParams{PipelineIDs: ids})
		if err != nil {
			return err
		}
		byRun := map[uuid.UUID][]*driver.Task{}
		for _, t := range tasks {
			byRun[t.PipelineID] = append(byRun[t.PipelineID], t)
		}
		for _, p := range cancel {
			reason := reasons[p.ID]
			c.skipUnstarted(p.ID, byRun[p.ID], "run cancelled")
			c.cs.Pipelines = append(c.cs.Pipelines, driver.PipelineUpdate{ID: p.ID, FromStatus: p.Status, Status: driver.PipelineCancelled,
				Error: reason, CompletedAt: ptr(c.now), Now: c.now})
			c.event(p.ID, nil, EventPipelineCancelled, &EventData{Reason: reason, DurationMS: ms(c.now.Sub(p.CreatedAt))})
			c.cs.Notify = append(c.cs.Notify, cancelPayload(p.ID))
			c.cancelled = append(c.cancelled, p.ID)
			c.finished = append(c.finished, p.ID)
		}
		return nil
	})
}

// runTree is a run and its descendants, as Cancel reads them.
type runTree struct {
	root uuid.UUID
	// runs holds every run of the tree, finished ones included, as last
	// read; parent maps each descendant to the run that started it.
	runs   map[uuid.UUID]*driver.Pipeline
	parent map[uuid.UUID]uuid.UUID
	// order lists the descendants level by level, as last read.
	order []uuid.UUID
	// locked holds the runs locked: the root and its unfinished
	// descendants, as the locks returned them.
	locked map[uuid.UUID]*driver.Pipeline
}

// maxParentsPerList bounds the runs one listing of children names, well
// below SQLite's limit on bound parameters.
const maxParentsPerList = 500

// lockTree locks run id and its unfinished descendants. Locks are taken in
// one PipelineLock call, in id order like every other locker of several
// runs, after an unlocked read of the tree: taking the root first and its
// descendants after could deadlock with a completion holding a
// descendant and waiting for the root. A child started between that read
// and the locks is found by reading the tree again once they are held
// (its start locked its parent before ours, so it has committed) and
// locked too: in order when its id comes after every id locked, else
// without waiting (see below);
// after that no run of the tree can gain a child, since a start locks the
// parent and then refuses a cancelled one (lockParents).
func lockTree(ctx context.Context, tx driver.Tx, id uuid.UUID) (*runTree, error) {
	// A finished root stays finished: an unlocked read tells it.
	root, err := tx.PipelineGet(ctx, id)
	if errors.Is(err, driver.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrRunNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	tree := &runTree{root: id, runs: map[uuid.UUID]*driver.Pipeline{id: root}, parent: map[uuid.UUID]uuid.UUID{},
		locked: map[uuid.UUID]*driver.Pipeline{}}
	if root.Status.Terminal() {
		tree.locked[id] = root
		return tree, nil
	}
	asked := map[uuid.UUID]bool{}
	for {
		if err := tree.read(ctx, tx); err != nil {
			return nil, err
		}
		var ids []uuid.UUID
		for rid, p := range tree.runs {
			if !asked[rid] && (rid == id || !p.Status.Terminal()) {
				ids = append(ids, rid)
				asked[rid] = true
			}
		}
		if len(ids) == 0 {
			return tree, nil
		}
		// A child found now whose id comes before one locked would be
		// locked out of id order, and could close a deadlock with a
		// completion or a start locking both in order: it is locked
		// without waiting (a lock that never waits closes no deadlock),
		// and when another transaction holds it, Cancel begins again
		// (the error is transient). The rest are locked in order.
		var early, later []uuid.UUID
		for _, rid := range ids {
			if tree.before(rid) {
				early = append(early, rid)
			} else {
				later = append(later, rid)
			}
		}
		ps, err := tx.PipelineLockNoWait(ctx, early)
		if err != nil {
			return nil, fmt.Errorf("cancel run %s: child runs %v, started meanwhile, are held by another transaction: %w", id, early, err)
		}
		rest, err := tx.PipelineLock(ctx, later)
		if err != nil {
			return nil, err
		}
		ps = append(ps, rest...)
		for _, p := range ps {
			tree.locked[p.ID], tree.runs[p.ID] = p, p
		}
		if _, ok := tree.locked[id]; !ok {
			return nil, fmt.Errorf("%w: %s", ErrRunNotFound, id)
		}
	}
}

// before reports whether id comes before a run the tree has locked, in
// the order in which runs are locked.
func (t *runTree) before(id uuid.UUID) bool {
	for lid := range t.locked {
		if bytes.Compare(id[:], lid[:]) < 0 {
			return true
		}
	}
	return false
}

// read (re)reads the descendants of the tree's root, level by level.
func (t *runTree) read(ctx context.Context, tx driver.Tx) error {
	seen := map[uuid.UUID]bool{t.root: true}
	level := []uuid.UUID{t.root}
	t.order = t.order[:0]
	for len(level) > 0 {
		var next []uuid.UUID
		for part := range slices.Chunk(level, maxParentsPerList) {
			children, err := tx.PipelineList(ctx, &driver.PipelineListParams{ParentPipelineIDs: part})
			if err != nil {
				return err
			}
			for _, p := range children {
				if seen[p.ID] {
					continue // a cycle, written by hand: each run once
				}
				seen[p.ID] = true
				if _, ok := t.locked[p.ID]; !ok {
					t.runs[p.ID] = p
				}
				t.parent[p.ID] = *p.ParentPipelineID
				t.order = append(t.order, p.ID)
				next = append(next, p.ID)
			}
		}
		level = next
	}
	return nil
}

// reason is why a descendant is cancelled: its nearest ancestor that is
// cancelled now (unfinished until this cancel) or was already, the root
// at the latest.
func (t *runTree) reason(id uuid.UUID) string {
	parent := t.parent[id]
	for a := parent; ; a = t.parent[a] {
		if p := t.runs[a]; a == t.root || p.Status == driver.PipelineCancelled || !p.Status.Terminal() {
			if a == parent {
				return fmt.Sprintf("parent run %s cancelled", a)
			}
			return fmt.Sprintf("ancestor run %s cancelled", a)
		}
	}
}

// Pause stops new tasks of a run from being claimed: its queued tasks stay
// Ready but leave the outbox; running tasks finish, and tasks they make
// ready wait too. A paused run still ends when its running tasks leave
// nothing to wait for (the last ones complete, or fail and their
// dependants are skipped): it becomes Completed or Failed, and Resume is
// then ErrRunFinished. Pausing a paused run does nothing; pausing a
// finished run is ErrRunFinished. Unlike Cancel, Pause acts on this run alone: runs its
// tasks started go on (pause them too if they should wait), and its
// running tasks may still start children.
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
// original due time) and lets the run continue. A run paused as its
// first task was claimed becomes Running, its start recorded now
// (pipeline_started) if it was not yet. Resuming a run that is not
// paused does nothing; resuming a finished run is ErrRunFinished. Like
// Pause, it acts on this run alone, not on its children.
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
		var startedAt *time.Time
		if p.StartedAt == nil {
			to = driver.PipelinePending
			for _, t := range tasks {
				if t.StartedAt != nil {
					// A task was claimed, and the deferred start of the run
					// did not happen (see startClaimedRuns): it starts now.
					to, startedAt = driver.PipelineRunning, ptr(c.now)
					break
				}
			}
		}
		c.cs.Pipelines = append(c.cs.Pipelines, driver.PipelineUpdate{ID: id, FromStatus: p.Status, Status: to, StartedAt: startedAt, Now: c.now})
		c.event(id, nil, EventPipelineResumed, &EventData{OutboxRows: &n})
		if startedAt != nil {
			c.runStarted(id, p.WorkflowName, p.WorkflowVersion)
		}
		return nil
	})
}
