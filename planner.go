package cloacina

import (
	"container/heap"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/internal/jsonx"
)

// changes accumulates the writes of one transaction: the engine decides,
// then hands the whole set to the backend at once.
type changes struct {
	cs         driver.ChangeSet
	now        time.Time
	worker     string
	runnerName string
	// finished lists runs that reached a terminal status in this change.
	finished []uuid.UUID
	// cancelled lists runs cancelled in this change.
	cancelled []uuid.UUID
	// work counts, per workflow, the outbox rows claimable at once.
	work map[string]int
	// held counts the free slots of heldBy that addWakeups took for the
	// work this runner will claim itself once the transaction commits (no
	// NOTIFY for it): the claimer's next round uses them, and they are
	// given back should the transaction fail.
	held   int
	heldBy *services
	// nextDue is the earliest due time of a retry scheduled for later.
	nextDue *time.Time
	// handoff, when set, lets this transaction claim for this runner the
	// tasks it makes ready.
	handoff *handoff
	// eventData holds the encoded data of the change set's events.
	eventData []byte
}

// handoff is a transaction's claim on the tasks it makes ready: a runner
// with a free slot takes a newly ready task of a running run in the same
// transaction (task_marked_ready, task_claimed and task_started together),
// so the first step of a run it starts and the next step of a chain it
// advances wait for no claim transaction and no wake-up. The task never
// gets an outbox row; everything else is as if it had been claimed from
// one.
type handoff struct {
	take  func() bool // takes a free slot for one task; false when there is none
	tasks []*driver.Task
}

// claim records t, just made ready, as claimed by this runner; the first
// claim of a run starts it.
func (c *changes) claim(p *driver.Pipeline, t *driver.Task) {
	if p.StartedAt == nil {
		c.runStarted(p.ID, p.WorkflowName, p.WorkflowVersion)
		p.StartedAt = ptr(c.now)
	}
	t.Status = driver.TaskRunning
	t.RunnerID = c.worker
	t.StartedAt = ptr(c.now)
	c.claimed(p.ID, t)
	c.handoff.tasks = append(c.handoff.tasks, t)
}

// runStarted records the start of run pid: pipeline_started.
func (c *changes) runStarted(pid uuid.UUID, workflow, version string) {
	c.event(pid, nil, EventPipelineStarted, &EventData{Workflow: workflow, WorkflowVersion: version})
}

// claimed records the claim of task t of run pid by this runner, whether
// from the outbox or handed off: task_claimed, then task_started.
func (c *changes) claimed(pid uuid.UUID, t *driver.Task) {
	c.event(pid, &t.ID, EventTaskClaimed, &EventData{Attempt: t.Attempt, RunnerName: c.runnerName})
	c.event(pid, &t.ID, EventTaskStarted, &EventData{Attempt: t.Attempt})
}

// newChanges begins the change set of one transaction; the caller sets its
// time (now) once it holds the database (see tryTx).
func newChanges(r *Runner) *changes {
	return &changes{worker: r.id, runnerName: r.name}
}

// expectEvents makes room for n more events, so that a transaction of
// many tasks does not grow its event list (and their data) step by step.
func (c *changes) expectEvents(n int) {
	c.cs.Events = slices.Grow(c.cs.Events, n)
	c.eventData = slices.Grow(c.eventData, n*eventDataSize)
}

// eventDataSize is about the size of an event's encoded data (an attempt
// and a duration, or a runner name).
const eventDataSize = 32

func (c *changes) event(pid uuid.UUID, tid *uuid.UUID, typ EventType, data *EventData) {
	var raw json.RawMessage
	if data != nil {
		// The change set's event data share one buffer: each event's data is
		// a full slice of it, never written again (a buffer that grows
		// leaves the earlier data where they were).
		start := len(c.eventData)
		b, err := data.appendJSON(c.eventData)
		if err != nil {
			panic(fmt.Sprintf("cloacina: encode event data: %v", err)) // EventData holds only plain values
		}
		c.eventData = b
		raw = b[start:len(b):len(b)]
	}
	c.cs.Events = append(c.cs.Events, driver.EventInsert{ID: newID(), PipelineID: pid, TaskID: tid, Type: typ,
		Data: raw, WorkerID: c.worker, CreatedAt: c.now})
}

func (c *changes) enqueue(t *driver.Task, at time.Time) {
	if at.After(c.now) && (c.nextDue == nil || at.Before(*c.nextDue)) {
		c.nextDue = ptr(at)
	}
	c.cs.Outbox = append(c.cs.Outbox, driver.OutboxInsert{TaskID: t.ID, Attempt: t.Attempt, WorkflowName: t.WorkflowName,
		AvailableAt: at, Now: c.now})
	if at.After(c.now) {
		return // not claimable yet: a wake-up now would find nothing
	}
	if c.work == nil {
		c.work = map[string]int{}
	}
	c.work[t.WorkflowName]++
}

func newID() uuid.UUID { return uuid.Must(uuid.NewV7()) }

func ptr[T any](v T) *T { return &v }

// runState is one run and all of its tasks, read under the run's lock.
type runState struct {
	p     *driver.Pipeline
	wf    *Workflow
	tasks map[string]*driver.Task
	// unloaded names the tasks read without their contexts, and load
	// reads contexts by task id: a completion reads its run's tasks by
	// status alone, and the contexts of the few it merges (the
	// dependencies of a task it decides, the leaves when the run ends)
	// when it needs them. A nil unloaded means every context is here.
	unloaded map[string]bool
	load     func(ids []uuid.UUID) ([]*driver.Task, error)
	// list reads the run's tasks of the given names (all of them for
	// nil) without their contexts, for a run decided narrowly.
	list func(names []string) ([]*driver.Task, error)
}

// need makes sure the contexts of the named tasks are here, reading
// those that are not in one statement.
func (s *runState) need(names []string) error {
	if len(s.unloaded) == 0 {
		return nil
	}
	var ids []uuid.UUID
	for _, name := range names {
		if t := s.tasks[name]; t != nil && s.unloaded[name] {
			ids = append(ids, t.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	read, err := s.load(ids)
	if err != nil {
		return fmt.Errorf("read task contexts: %w", err)
	}
	for _, r := range read {
		if t := s.tasks[r.Name]; t != nil && t.ID == r.ID {
			t.Input, t.Output = r.Input, r.Output
			delete(s.unloaded, r.Name)
		}
	}
	for _, name := range names {
		if s.unloaded[name] {
			return fmt.Errorf("read task contexts: task %q was not found", name)
		}
	}
	return nil
}

// loaded records that t's contexts are here (set in memory).
func (s *runState) loaded(name string) {
	delete(s.unloaded, name)
}

// shapeMismatch says how the run's tasks differ from the workflow as this
// runner registered it (the same name, changed since the run started), or
// returns "" when every task of each is in the other.
func (s *runState) shapeMismatch() string {
	var missing, extra []string
	for _, def := range s.wf.tasks {
		if s.tasks[def.Name] == nil {
			missing = append(missing, def.Name)
		}
	}
	for name := range s.tasks {
		if s.wf.byName[name] == nil {
			extra = append(extra, name)
		}
	}
	if len(missing) == 0 && len(extra) == 0 {
		return ""
	}
	slices.Sort(extra)
	var diff []string // only what differs: an empty list read as noise
	if len(extra) > 0 {
		diff = append(diff, fmt.Sprintf("without the run's tasks %q", extra))
	}
	if len(missing) > 0 {
		diff = append(diff, fmt.Sprintf("with tasks %q the run lacks", missing))
	}
	return fmt.Sprintf("workflow %q changed under its name since this run started (run: version %.12s; this runner: version %.12s, "+
		"%s): the run cannot go on; let runners of the run's version finish such runs, or give a changed workflow a new name",
		s.wf.name, s.p.WorkflowVersion, s.wf.version, strings.Join(diff, ", "))
}

// abort fails a run that cannot go on: its unfinished tasks end (Ready and
// NotStarted ones Skipped, Running ones Failed, their runners told by the
// run's cancel wake-up), its queued tasks leave the outbox, and the run
// fails with reason.
func (s *runState) abort(ctx context.Context, tx driver.Tx, c *changes, reason string) error {
	if _, err := tx.OutboxDelete(ctx, &driver.OutboxDeleteParams{PipelineID: s.p.ID}); err != nil {
		return err
	}
	tasks := make([]*driver.Task, 0, len(s.tasks))
	for _, t := range s.tasks {
		tasks = append(tasks, t)
	}
	slices.SortFunc(tasks, func(a, b *driver.Task) int { return a.Position - b.Position })
	c.skipUnstarted(s.p.ID, tasks, reason)
	for _, t := range tasks {
		if t.Status == driver.TaskRunning {
			c.cs.Tasks = append(c.cs.Tasks, driver.TaskUpdate{ID: t.ID, FromStatus: t.Status, Status: driver.TaskFailed,
				Attempt: t.Attempt, Error: reason, Now: c.now})
			c.event(s.p.ID, &t.ID, EventTaskFailed, &EventData{Attempt: t.Attempt, MaxAttempts: t.MaxAttempts, Error: reason})
		}
	}
	s.startIfNot(c)
	c.cs.Pipelines = append(c.cs.Pipelines, driver.PipelineUpdate{ID: s.p.ID, FromStatus: s.p.Status, Status: driver.PipelineFailed,
		Error: reason, StartedAt: s.p.StartedAt, CompletedAt: ptr(c.now), Now: c.now})
	c.event(s.p.ID, nil, EventPipelineFailed, &EventData{Error: reason, DurationMS: ms(c.now.Sub(s.p.CreatedAt))})
	s.p.Status = driver.PipelineFailed
	c.cs.Notify = append(c.cs.Notify, cancelPayload(s.p.ID))
	c.cancelled = append(c.cancelled, s.p.ID)
	c.finished = append(c.finished, s.p.ID)
	return nil
}

// startIfNot records the start of a run that ends before any task of it
// was claimed (every task skipped by trigger rules, say): a run starts
// before it ends.
func (s *runState) startIfNot(c *changes) {
	if s.p.StartedAt == nil {
		c.runStarted(s.p.ID, s.p.WorkflowName, s.p.WorkflowVersion)
		s.p.StartedAt = ptr(c.now)
	}
}

// skipUnstarted skips, with reason, the tasks of run pid that have not
// started (NotStarted or Ready) when the run ends early.
func (c *changes) skipUnstarted(pid uuid.UUID, tasks []*driver.Task, reason string) {
	for _, t := range tasks {
		if t.Status != driver.TaskNotStarted && t.Status != driver.TaskReady {
			continue
		}
		c.cs.Tasks = append(c.cs.Tasks, driver.TaskUpdate{ID: t.ID, FromStatus: t.Status, Status: driver.TaskSkipped,
			Attempt: t.Attempt, Error: reason, Now: c.now})
		c.event(pid, &t.ID, EventTaskSkipped, &EventData{Reason: reason})
	}
}

func (s *runState) status(name string) driver.TaskStatus {
	if t := s.tasks[name]; t != nil {
		return t.Status
	}
	return ""
}

// effectiveOutput is what a task passes downstream: its output when it
// Completed, else the context it received, so data flows through failed
// and skipped tasks unchanged.
func effectiveOutput(t *driver.Task) json.RawMessage {
	if t.Status == driver.TaskCompleted && t.Output != nil {
		return t.Output
	}
	return t.Input
}

// inputFor merges the effective outputs of def's dependencies in declared
// order; a root task receives the run's input.
func (s *runState) inputFor(def *taskDef) (json.RawMessage, error) {
	if len(def.deps) == 0 {
		return s.p.Input, nil
	}
	if len(s.unloaded) > 0 {
		names := make([]string, len(def.deps))
		for i, d := range def.deps {
			names[i] = d.Name
		}
		if err := s.need(names); err != nil {
			return nil, err
		}
	}
	parts := make([]json.RawMessage, 0, len(def.deps))
	for _, d := range def.deps {
		parts = append(parts, effectiveOutput(s.tasks[d.Name]))
	}
	return mergeContexts(parts)
}

// advance decides every NotStarted task whose dependencies have all ended:
// Ready (with an outbox row unless the run is paused; claimed at once when
// c has a handoff with a free slot) or Skipped, in
// topological order so skips cascade in one pass. It mutates the tasks in
// s and returns those it changed.
func (s *runState) advance(c *changes) ([]*driver.Task, error) {
	var changed []*driver.Task
	for _, def := range s.wf.topo {
		t := s.tasks[def.Name]
		if t == nil || t.Status != driver.TaskNotStarted {
			continue
		}
		ended := true
		for _, d := range def.deps {
			if !s.tasks[d.Name].Status.Terminal() {
				ended = false
				break
			}
		}
		if !ended {
			continue
		}
		if err := s.decide(c, def, t); err != nil {
			return nil, err
		}
		changed = append(changed, t)
	}
	// A count of open dependencies kept by runners of the run's version
	// (see advanceFrom) is not kept here: it is dropped, and counted again
	// by the next of them to meet the task.
	for _, t := range s.tasks {
		if t.Status == driver.TaskNotStarted && t.OpenDeps != 0 {
			t.OpenDeps = 0
			changed = append(changed, t)
		}
	}
	return changed, nil
}

// decide makes NotStarted task t (of def), whose dependencies have all
// ended, Ready (with an outbox row unless the run is paused; claimed at
// once when c has a handoff with a free slot) or Skipped, by its trigger
// rule.
func (s *runState) decide(c *changes, def *taskDef, t *driver.Task) error {
	input, err := s.inputFor(def)
	if err != nil {
		return fmt.Errorf("task %q: %w", def.Name, err)
	}
	// The trigger rule only reads the members, while input stays.
	view, err := jsonx.DecodeObjectShared(input)
	if err != nil {
		return fmt.Errorf("task %q: decode input: %w", def.Name, err)
	}
	t.Input = input
	t.OpenDeps = 0
	s.loaded(def.Name)
	run, reason := def.Trigger.evaluate(def.DependsOn, s.status, view)
	if run {
		t.Status = driver.TaskReady
		t.Attempt = 1
		t.AvailableAt = ptr(c.now)
		c.event(s.p.ID, &t.ID, EventTaskMarkedReady, &EventData{Attempt: 1, MaxAttempts: t.MaxAttempts})
		switch {
		case s.p.Status == driver.PipelineRunning && c.handoff != nil && c.handoff.take():
			c.claim(s.p, t)
		case s.p.Status != driver.PipelinePaused:
			c.enqueue(t, c.now)
		}
		return nil
	}
	t.Status = driver.TaskSkipped
	t.Error = reason
	c.event(s.p.ID, &t.ID, EventTaskSkipped, &EventData{Reason: reason})
	return nil
}

// narrowMin is the number of tasks above which a workflow's runs are
// decided narrowly (advanceFrom, endFrom) by runners of the run's version:
// a completion reads the tasks it may decide, not every task of its run.
// Below it, reading the whole run in the round trip that records the
// results costs less than reading a few of its tasks in another. A
// variable only so that the test suite can run every workflow narrowly
// (CLOACINA_TEST_NARROW=all, see main_test.go): set once, before any
// runner opens.
var narrowMin = 32

// narrow reports whether the runs of wf are decided narrowly.
func (wf *Workflow) narrow() bool { return len(wf.tasks) > narrowMin }

// openDeps is the count of open dependencies a task of a narrowly decided
// workflow is created with (see driver.Task.OpenDeps): 0, not counted,
// for a task with one dependency or none, which its dependency's end
// decides.
func openDeps(wf *Workflow, def *taskDef, status func(string) driver.TaskStatus) int {
	if !wf.narrow() || len(def.deps) < 2 {
		return 0
	}
	open := 0
	for _, d := range def.deps {
		if !status(d.Name).Terminal() {
			open++
		}
	}
	return open
}

// read brings the named tasks of the run that are not here, without their
// contexts, in one statement.
func (s *runState) read(names []string) error {
	var missing []string
	for _, name := range names {
		if s.tasks[name] == nil && !slices.Contains(missing, name) {
			missing = append(missing, name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	got, err := s.list(missing)
	if err != nil {
		return fmt.Errorf("read tasks: %w", err)
	}
	s.add(got)
	for _, name := range missing {
		if s.tasks[name] == nil {
			return fmt.Errorf("read tasks: task %q of run %s was not found", name, s.p.ID)
		}
	}
	return nil
}

// add keeps the tasks read that are not here already (those here may
// have changed in this transaction), as read without their contexts.
func (s *runState) add(tasks []*driver.Task) {
	for _, t := range tasks {
		if s.tasks[t.Name] == nil {
			s.tasks[t.Name] = t
			s.unloaded[t.Name] = true
		}
	}
}

// advanceFrom decides, in a run of a narrowly decided workflow, what the
// end of the tasks named in ended makes decidable: their dependents, and
// through skips theirs, in topological order (the order advance decides
// them in). It reads those tasks, and the dependencies of the ones it
// decides, not the run's other tasks. A task with several dependencies
// keeps a count of those open: each end of one writes it down, and the
// task is decided, once its dependencies are read and have all ended
// indeed, when it reaches zero or was not counted (else it is counted
// again). It returns the tasks it changed and whether a leaf ended.
func (s *runState) advanceFrom(c *changes, ended []string) (changed []*driver.Task, leafEnded bool, err error) {
	done := make(map[string]bool, len(ended))
	queued := map[*taskDef]bool{}
	var queue taskHeap
	var unread []string
	push := func(name string) {
		done[name] = true
		def := s.wf.byName[name]
		if len(def.dependents) == 0 {
			leafEnded = true
		}
		for _, d := range def.dependents {
			if !queued[d] {
				queued[d] = true
				heap.Push(&queue, d)
				if s.tasks[d.Name] == nil {
					unread = append(unread, d.Name)
				}
			}
		}
	}
	for _, name := range ended {
		push(name)
	}
	for queue.Len() > 0 {
		if len(unread) > 0 {
			if err := s.read(unread); err != nil {
				return nil, false, err
			}
			unread = unread[:0]
		}
		def := heap.Pop(&queue).(*taskDef)
		t := s.tasks[def.Name]
		if t.Status != driver.TaskNotStarted {
			continue
		}
		if len(def.deps) > 1 && t.OpenDeps > 0 {
			n := 0
			for _, d := range def.deps {
				if done[d.Name] {
					n++
				}
			}
			if t.OpenDeps > n {
				t.OpenDeps -= n
				changed = append(changed, t)
				continue
			}
		}
		if err := s.read(def.reads); err != nil {
			return nil, false, err
		}
		open := 0
		for _, d := range def.deps {
			if !s.tasks[d.Name].Status.Terminal() {
				open++
			}
		}
		if open > 0 {
			t.OpenDeps = open
			changed = append(changed, t)
			continue
		}
		if err := s.decide(c, def, t); err != nil {
			return nil, false, err
		}
		changed = append(changed, t)
		if t.Status.Terminal() {
			push(def.Name)
		}
	}
	return changed, leafEnded, nil
}

// endFrom ends, by finalize, a run of a narrowly decided workflow where a
// leaf ended. A task ends after its dependencies, so every task has ended
// once every leaf has: the leaves are read, and only when they have all
// ended the run's other tasks.
//
// hints, unless nil, remembers for each run a leaf last found open: it is
// read first, and while it stays open no other is. A 1→W fan-out with no
// join read its W leaves at every batch that ended one of them; now one.
// A hint is only where to look: the leaf's status is read under the run's
// lock, in this transaction, before it says the run goes on.
func (s *runState) endFrom(c *changes, hints *leafHints) error {
	if name, ok := hints.get(s.p.ID); ok {
		if err := s.read([]string{name}); err != nil {
			return err
		}
		if !s.tasks[name].Status.Terminal() {
			return nil
		}
	}
	names := make([]string, len(s.wf.leaves))
	for i, leaf := range s.wf.leaves {
		names[i] = leaf.Name
	}
	if err := s.read(names); err != nil {
		return err
	}
	// The last open leaf in declaration order is the hint: tasks are
	// claimed in about that order, so it is likely to end last.
	for _, name := range slices.Backward(names) {
		if !s.tasks[name].Status.Terminal() {
			hints.set(s.p.ID, name)
			return nil
		}
	}
	hints.drop(s.p.ID)
	all, err := s.list(nil)
	if err != nil {
		return fmt.Errorf("read tasks: %w", err)
	}
	s.add(all)
	return s.finalize(c)
}

// leafHints remembers, for runs decided narrowly, a leaf last found open
// (see endFrom). It is bounded: past maxLeafHints runs it forgets them
// all, which costs each of those runs one read of its leaves. A nil
// *leafHints remembers nothing.
type leafHints struct {
	mu sync.Mutex
	m  map[uuid.UUID]string
}

// maxLeafHints bounds the runs a leafHints remembers.
const maxLeafHints = 4096

func (h *leafHints) get(run uuid.UUID) (string, bool) {
	if h == nil {
		return "", false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	name, ok := h.m[run]
	return name, ok
}

func (h *leafHints) set(run uuid.UUID, leaf string) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil || len(h.m) >= maxLeafHints {
		h.m = make(map[uuid.UUID]string)
	}
	h.m[run] = leaf
}

func (h *leafHints) drop(run uuid.UUID) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.m, run)
}

// taskHeap orders task definitions topologically.
type taskHeap []*taskDef

func (h taskHeap) Len() int           { return len(h) }
func (h taskHeap) Less(i, j int) bool { return h[i].topoIndex < h[j].topoIndex }
func (h taskHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *taskHeap) Push(x any)        { *h = append(*h, x.(*taskDef)) }
func (h *taskHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	*h = old[:len(old)-1]
	return d
}

// finalize ends the run when every task has ended: Completed when none
// Failed, else Failed; the final context is the merge of the leaves'
// effective outputs in declaration order.
func (s *runState) finalize(c *changes) error {
	if s.p.Status.Terminal() {
		return nil
	}
	var failed []string
	for _, def := range s.wf.tasks {
		t := s.tasks[def.Name]
		if !t.Status.Terminal() {
			return nil
		}
		if t.Status == driver.TaskFailed {
			failed = append(failed, fmt.Sprintf("task %q failed: %s", t.Name, t.Error))
		}
	}
	if len(s.unloaded) > 0 {
		names := make([]string, len(s.wf.leaves))
		for i, leaf := range s.wf.leaves {
			names[i] = leaf.Name
		}
		if err := s.need(names); err != nil {
			return err
		}
	}
	parts := make([]json.RawMessage, 0, len(s.wf.leaves))
	for _, leaf := range s.wf.leaves {
		parts = append(parts, effectiveOutput(s.tasks[leaf.Name]))
	}
	output, err := mergeContexts(parts)
	if err != nil {
		return fmt.Errorf("final context: %w", err)
	}
	s.startIfNot(c)
	status, typ := driver.PipelineCompleted, EventPipelineCompleted
	errText := ""
	if len(failed) > 0 {
		status, typ = driver.PipelineFailed, EventPipelineFailed
		errText = strings.Join(failed, "; ")
	}
	c.cs.Pipelines = append(c.cs.Pipelines, driver.PipelineUpdate{ID: s.p.ID, FromStatus: s.p.Status, Status: status,
		Output: output, Error: errText, StartedAt: s.p.StartedAt, CompletedAt: ptr(c.now), Now: c.now})
	c.event(s.p.ID, nil, typ, &EventData{Error: errText, DurationMS: ms(c.now.Sub(s.p.CreatedAt))})
	s.p.Status = status
	c.finished = append(c.finished, s.p.ID)
	return nil
}

// taskUpdates turns tasks changed by advance (or advanceFrom) into
// conditional updates; a task still NotStarted has its count rewritten.
func taskUpdates(c *changes, changed []*driver.Task) {
	for _, t := range changed {
		c.cs.Tasks = append(c.cs.Tasks, driver.TaskUpdate{ID: t.ID, FromStatus: driver.TaskNotStarted, Status: t.Status,
			Attempt: t.Attempt, Input: t.Input, Error: t.Error, AvailableAt: t.AvailableAt, RunnerID: t.RunnerID,
			OpenDeps: t.OpenDeps, Now: c.now})
	}
}
