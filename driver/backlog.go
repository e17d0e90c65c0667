package driver

import (
	"slices"
	"strings"
	"time"
)

// BacklogListParams asks for the unfinished work of every workflow.
type BacklogListParams struct {
	// Now divides outbox rows that are claimable from those not due yet.
	Now time.Time
}

// Backlog is the unfinished work of one workflow: what waits in the
// outbox, what runs, and the runs not yet finished.
type Backlog struct {
	Workflow string
	// Ready counts outbox rows claimable at Now; Delayed those due later
	// (retries waiting for their delay).
	Ready, Delayed int64
	// OldestReadyAt is the earliest due time of the claimable rows: how
	// long the oldest claimable task has waited. Nil when Ready is 0.
	OldestReadyAt *time.Time
	// Running counts Running tasks; Deferred those of them waiting in
	// DeferUntil.
	Running, Deferred int64
	// PendingRuns, RunningRuns and PausedRuns count the runs in each
	// status that is not terminal.
	PendingRuns, RunningRuns, PausedRuns int64
}

// MergeBacklogs adds up partial counts of the same workflows (a backend
// counts the outbox, the tasks and the runs apart) into one Backlog per
// workflow, ordered by name.
func MergeBacklogs(parts []*Backlog) []*Backlog {
	byName := map[string]*Backlog{}
	var out []*Backlog
	for _, p := range parts {
		b := byName[p.Workflow]
		if b == nil {
			b = &Backlog{Workflow: p.Workflow}
			byName[p.Workflow] = b
			out = append(out, b)
		}
		b.Ready += p.Ready
		b.Delayed += p.Delayed
		if p.OldestReadyAt != nil && (b.OldestReadyAt == nil || p.OldestReadyAt.Before(*b.OldestReadyAt)) {
			b.OldestReadyAt = p.OldestReadyAt
		}
		b.Running += p.Running
		b.Deferred += p.Deferred
		b.PendingRuns += p.PendingRuns
		b.RunningRuns += p.RunningRuns
		b.PausedRuns += p.PausedRuns
	}
	slices.SortFunc(out, func(a, b *Backlog) int { return strings.Compare(a.Workflow, b.Workflow) })
	return out
}
