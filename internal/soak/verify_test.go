package soak

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina"
)

// snapshot is everything the checks read once the runs are over: the
// stored state, the audit log (through the engine's API, as a user reads
// it) and the executions the task functions recorded.
type snapshot struct {
	runs   map[uuid.UUID]*runRow
	tasks  map[uuid.UUID]*taskRow
	events []*cloacina.Event
	execs  []*execution
	// byTask holds each task's events and byRun each run's pipeline
	// events, in sequence order.
	byTask map[uuid.UUID][]*cloacina.Event
	byRun  map[uuid.UUID][]*cloacina.Event
}

func takeSnapshot(t *testing.T, ctx context.Context, r *cloacina.Runner, s *store) *snapshot {
	t.Helper()
	snap := &snapshot{byTask: map[uuid.UUID][]*cloacina.Event{}, byRun: map[uuid.UUID][]*cloacina.Event{}}
	var err error
	snap.runs, err = s.runs(ctx)
	require.NoError(t, err)
	snap.tasks, err = s.tasks(ctx)
	require.NoError(t, err)
	snap.execs, err = s.executions(ctx)
	require.NoError(t, err)
	snap.events, err = r.Events(ctx, nil)
	require.NoError(t, err)
	for i, e := range snap.events {
		if i > 0 && e.SequenceNum <= snap.events[i-1].SequenceNum {
			t.Fatalf("events out of sequence order: %d after %d", e.SequenceNum, snap.events[i-1].SequenceNum)
		}
		if e.TaskID != nil {
			snap.byTask[*e.TaskID] = append(snap.byTask[*e.TaskID], e)
		} else {
			snap.byRun[e.PipelineID] = append(snap.byRun[e.PipelineID], e)
		}
	}
	return snap
}

// violations collects broken invariants, so one failure shows how many
// of them there are and a sample.
type violations struct {
	n      int
	sample []string
}

func (v *violations) add(format string, args ...any) {
	v.n++
	if len(v.sample) < 30 {
		v.sample = append(v.sample, fmt.Sprintf(format, args...))
	}
}

func (v *violations) fail(t *testing.T, what string) {
	t.Helper()
	if v.n > 0 {
		t.Fatalf("%s: %d violations, first %d:\n  %s", what, v.n, len(v.sample), strings.Join(v.sample, "\n  "))
	}
}

// checkOpts says what a test expects beyond the invariants every test
// checks.
type checkOpts struct {
	// allCompleted: every run must have Completed (no random final
	// failures in the test).
	allCompleted bool
}

// checkInvariants checks the crash-safety contract on a snapshot:
//
//   - every run is terminal (Completed or Failed; nothing was cancelled);
//   - the event log replays (cloacina.Replay) to the stored status of
//     every run and every task, and names no run or task the store lacks;
//   - each run has one pipeline_started and one terminal event, last;
//   - each task's events form a legal sequence (created, ready, then
//     claimed/started per attempt, each attempt ending once: completed,
//     failed, retry scheduled, reset or abandoned), with attempts and
//     workers consistent — so no transition is missing or doubled, and in
//     particular no task has two task_completed events;
//   - every task_completed has the execution record its attempt wrote,
//     from the same runner;
//   - no execution started after its run ended, unless a reset had taken
//     its runner's claim: a runner that stalls for longer than its
//     heartbeats allow is declared dead while alive, and checks its claim
//     before it begins a task, but a stall between that check and the
//     call can still begin it late (delivery is at least once; its
//     completion is fenced out).
func checkInvariants(t *testing.T, snap *snapshot, opts checkOpts) {
	t.Helper()
	var v violations
	for id, run := range snap.runs {
		switch {
		case run.Status != cloacina.PipelineCompleted && run.Status != cloacina.PipelineFailed:
			v.add("run %s is %s, want completed or failed", id, run.Status)
		case opts.allCompleted && run.Status != cloacina.PipelineCompleted:
			v.add("run %s is %s, want completed", id, run.Status)
		case run.CompletedAt == nil:
			v.add("run %s is %s without completed_at", id, run.Status)
		}
	}
	v.fail(t, "runs not terminal")

	replayed := cloacina.Replay(snap.events)
	for id, run := range snap.runs {
		if got := replayed.Runs[id]; got != run.Status {
			v.add("run %s: stored %s, replayed %q", id, run.Status, got)
		}
	}
	for id, task := range snap.tasks {
		if got := replayed.Tasks[id]; got != task.Status {
			v.add("task %s (%s of run %s): stored %s, replayed %q", id, task.Name, task.RunID, task.Status, got)
		}
	}
	for id := range replayed.Runs {
		if snap.runs[id] == nil {
			v.add("the log names run %s, which is not stored", id)
		}
	}
	for id := range replayed.Tasks {
		if snap.tasks[id] == nil {
			v.add("the log names task %s, which is not stored", id)
		}
	}
	v.fail(t, "replay differs from the stored state")

	perRun := map[uuid.UUID]int{}
	for _, task := range snap.tasks {
		perRun[task.RunID]++
	}
	for id, run := range snap.runs {
		if perRun[id] != 5 {
			v.add("run %s has %d tasks, want 5", id, perRun[id])
		}
		checkRunEvents(&v, run, snap.byRun[id])
	}
	v.fail(t, "run event sequences")

	type attemptKey struct {
		task     uuid.UUID
		attempt  int
		runnerID string
	}
	recorded := map[attemptKey]*execution{}
	for _, ex := range snap.execs {
		if ex.Outcome == "ok" {
			recorded[attemptKey{ex.TaskID, ex.Attempt, ex.RunnerID}] = ex
		}
	}
	execsOf := map[uuid.UUID][]*execution{}
	for _, ex := range snap.execs {
		execsOf[ex.TaskID] = append(execsOf[ex.TaskID], ex)
	}
	for id, task := range snap.tasks {
		completions := checkTaskEvents(&v, task, snap.byTask[id])
		if len(completions) > 1 {
			v.add("task %s (%s): its executions: %s", id, task.Name, executionTrail(execsOf[id]))
		}
		for _, e := range completions {
			d, err := e.Payload()
			if err != nil {
				v.add("%v", err)
				continue
			}
			if recorded[attemptKey{id, d.Attempt, e.WorkerID}] == nil {
				v.add("task %s (%s): task_completed (attempt %d, runner %s, seq %d) has no successful execution record",
					id, task.Name, d.Attempt, e.WorkerID, e.SequenceNum)
			}
		}
	}
	v.fail(t, "task event sequences")

	lostClaims := map[attemptKey]bool{}
	for id, events := range snap.byTask {
		var claim attemptKey
		for _, e := range events {
			switch e.Type {
			case cloacina.EventTaskClaimed:
				claim = attemptKey{task: id, runnerID: e.WorkerID}
				if d, err := e.Payload(); err == nil && d != nil {
					claim.attempt = d.Attempt
				}
			case cloacina.EventTaskReset:
				lostClaims[claim] = true
			}
		}
	}
	for _, ex := range snap.execs {
		run := snap.runs[ex.RunID]
		switch {
		case run == nil:
			v.add("execution of task %s names run %s, which is not stored", ex.TaskID, ex.RunID)
		case snap.tasks[ex.TaskID] == nil:
			v.add("execution names task %s, which is not stored", ex.TaskID)
		case run.CompletedAt != nil && ex.StartedAt.After(*run.CompletedAt) && !lostClaims[attemptKey{ex.TaskID, ex.Attempt, ex.RunnerID}]:
			v.add("task %s (%s) attempt %d started at %s on runner %s (pid %d), after its run %s ended at %s",
				ex.TaskID, ex.Task, ex.Attempt, ex.StartedAt.Format(time.RFC3339Nano), ex.RunnerID, ex.PID,
				ex.RunID, run.CompletedAt.Format(time.RFC3339Nano))
		}
	}
	v.fail(t, "executions after their run ended")
}

// checkRunEvents checks one run's pipeline events: started once, ended
// once with the stored status, nothing after the end.
func checkRunEvents(v *violations, run *runRow, events []*cloacina.Event) {
	var started, ended int
	for i, e := range events {
		switch e.Type {
		case cloacina.EventPipelineStarted:
			started++
		case cloacina.EventPipelineCompleted, cloacina.EventPipelineFailed, cloacina.EventPipelineCancelled:
			ended++
			if i != len(events)-1 {
				v.add("run %s: %s (seq %d) is not its last pipeline event", run.ID, e.Type, e.SequenceNum)
			}
			if want := "pipeline_" + string(run.Status); string(e.Type) != want {
				v.add("run %s: ended with %s, stored status %s", run.ID, e.Type, run.Status)
			}
		default:
			v.add("run %s: unexpected pipeline event %s (seq %d)", run.ID, e.Type, e.SequenceNum)
		}
	}
	if started != 1 || ended != 1 {
		v.add("run %s: %d pipeline_started and %d terminal events, want 1 and 1", run.ID, started, ended)
	}
}

// checkTaskEvents checks that one task's events form a legal sequence and
// returns its task_completed events.
func checkTaskEvents(v *violations, task *taskRow, events []*cloacina.Event) (completions []*cloacina.Event) {
	const (
		none = iota
		notStarted
		ready
		claimed
		running
		ended
	)
	state, attempt, recoveries := none, 0, 0
	claimer := ""
	bad := func(e *cloacina.Event, why string) {
		v.add("task %s (%s of run %s): %s at seq %d (%s, worker %s): %s", task.ID, task.Name, task.RunID, e.Type, e.SequenceNum,
			eventTrail(events), e.WorkerID, why)
	}
	for _, e := range events {
		d, err := e.Payload()
		if err != nil {
			v.add("%v", err)
			return nil
		}
		// Events about an attempt must name the attempt in progress, and
		// come from the runner that claimed it unless a sweep wrote them.
		sameAttempt := func() bool {
			if d.Attempt != attempt {
				bad(e, fmt.Sprintf("attempt %d, want %d", d.Attempt, attempt))
				return false
			}
			return true
		}
		fromClaimer := func() {
			if e.WorkerID != claimer {
				bad(e, fmt.Sprintf("written by %s, but %s holds the claim", e.WorkerID, claimer))
			}
		}
		switch e.Type {
		case cloacina.EventTaskCreated:
			if state != none {
				bad(e, "created twice")
			}
			state = notStarted
		case cloacina.EventTaskMarkedReady:
			if state != notStarted {
				bad(e, "not NotStarted")
			}
			state, attempt = ready, d.Attempt
		case cloacina.EventTaskSkipped:
			if state != notStarted {
				bad(e, "skipped after it was decided")
			}
			state = ended
		case cloacina.EventTaskClaimed:
			if state != ready {
				bad(e, "claimed while not Ready")
			}
			sameAttempt()
			state, claimer = claimed, e.WorkerID
		case cloacina.EventTaskStarted:
			if state != claimed {
				bad(e, "started without a claim")
			}
			sameAttempt()
			fromClaimer()
			state = running
		case cloacina.EventTaskCompleted, cloacina.EventTaskFailed:
			if state != running {
				bad(e, "ended while not Running")
			}
			sameAttempt()
			fromClaimer()
			state = ended
			if e.Type == cloacina.EventTaskCompleted {
				completions = append(completions, e)
			}
		case cloacina.EventTaskRetryScheduled:
			if state != running {
				bad(e, "retry scheduled while not Running")
			}
			if sameAttempt() && d.NextAttempt != attempt+1 {
				bad(e, fmt.Sprintf("next attempt %d after attempt %d", d.NextAttempt, attempt))
			}
			fromClaimer()
			state, attempt = ready, d.NextAttempt
		case cloacina.EventTaskReset:
			if state != running {
				bad(e, "reset while not Running")
			}
			sameAttempt()
			if e.WorkerID != claimer && d.RecoveryCount != recoveries+1 {
				bad(e, fmt.Sprintf("recovery count %d after %d", d.RecoveryCount, recoveries))
			}
			state, recoveries = ready, d.RecoveryCount
		case cloacina.EventTaskAbandoned:
			if state != running {
				bad(e, "abandoned while not Running")
			}
			sameAttempt()
			state = ended
		default:
			bad(e, "unexpected event type in this test")
		}
	}
	if len(completions) > 1 {
		v.add("task %s (%s of run %s) has %d task_completed events: %s", task.ID, task.Name, task.RunID, len(completions), eventTrail(events))
	}
	if state != ended {
		v.add("task %s (%s of run %s) is %s, but its events do not end it: %s", task.ID, task.Name, task.RunID, task.Status, eventTrail(events))
	}
	return completions
}

// eventTrail prints a task's events compactly, for failure messages.
func eventTrail(events []*cloacina.Event) string {
	parts := make([]string, len(events))
	for i, e := range events {
		parts[i] = fmt.Sprintf("%d:%s@%.8s", e.SequenceNum, strings.TrimPrefix(string(e.Type), "task_"), e.WorkerID)
	}
	return strings.Join(parts, " ")
}

// executionTrail prints a task's recorded executions compactly, for
// failure messages.
func executionTrail(execs []*execution) string {
	parts := make([]string, len(execs))
	for i, ex := range execs {
		parts[i] = fmt.Sprintf("attempt %d on %.8s (pid %d) %s..%s: %s", ex.Attempt, ex.RunnerID, ex.PID,
			ex.StartedAt.Format("15:04:05.000000"), ex.EndedAt.Format("15:04:05.000000"), ex.Outcome)
	}
	return strings.Join(parts, "; ")
}

// kill is one SIGKILL of a runner process.
type kill struct {
	runnerID string
	at       time.Time
	leader   bool // the process held the maintenance lease
}

// killRecovery is what happened to the tasks a killed runner had claimed.
type killRecovery struct {
	kill
	// detect and resume hold, per task the dead runner had claimed, the
	// time from the kill to its task_reset, and to its task_started on
	// another runner.
	detect, resume []time.Duration
}

// recoveries finds, in the log, the tasks each killed runner held when it
// died (task_reset after the kill, of a claim by that runner) and when
// they started again elsewhere. It also counts the other resets: of a
// live runner whose heartbeat came too late (before its kill, if it was
// killed later).
func recoveries(t *testing.T, snap *snapshot, kills []kill) (out []*killRecovery, spurious int) {
	t.Helper()
	byRunner := map[string]*killRecovery{}
	for _, k := range kills {
		kr := &killRecovery{kill: k}
		byRunner[k.runnerID] = kr
		out = append(out, kr)
	}
	var v violations
	for id, events := range snap.byTask {
		claimer := ""
		var pending *killRecovery
		for _, e := range events {
			switch e.Type {
			case cloacina.EventTaskClaimed:
				claimer = e.WorkerID
			case cloacina.EventTaskReset:
				d, _ := e.Payload()
				kr := byRunner[claimer]
				switch {
				case kr != nil && !e.CreatedAt.Before(kr.at):
					kr.detect = append(kr.detect, e.CreatedAt.Sub(kr.at))
					pending = kr
				case d != nil && strings.Contains(d.Reason, "stopped before the task returned"):
					// A graceful stop handing a claim back.
				default:
					spurious++
				}
			case cloacina.EventTaskStarted:
				if pending != nil {
					if e.WorkerID == pending.runnerID {
						v.add("task %s started again on the runner that was killed", id)
					}
					pending.resume = append(pending.resume, e.CreatedAt.Sub(pending.at))
					pending = nil
				}
			}
		}
		if pending != nil {
			v.add("task %s of killed runner %s never started again: %s", id, pending.runnerID, eventTrail(events))
		}
	}
	v.fail(t, "recovery of killed runners' tasks")
	for _, kr := range out {
		sort.Slice(kr.resume, func(i, j int) bool { return kr.resume[i] < kr.resume[j] })
		sort.Slice(kr.detect, func(i, j int) bool { return kr.detect[i] < kr.detect[j] })
	}
	return out, spurious
}
