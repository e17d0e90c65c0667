package drivertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/cloacina-go/cloacina/driver"
)

// ClaimerConfig says what a claimer claims.
type ClaimerConfig struct {
	RunnerID  string   `json:"runner_id"`
	Workflows []string `json:"workflows"`
	Limit     int      `json:"limit"` // per transaction
}

// maxTransient bounds the transient errors claimUntilEmpty retries in a
// row.
const maxTransient = 5

// claimUntilEmpty claims in a loop, one transaction per batch, the way
// the engine's claimer does (Begin → TaskClaim, which starts runs →
// ChangeSetApply → Commit), until no claimable row is left. got sees the
// tasks and started pipelines of every claim once it has committed. Like
// the engine, it retries a transaction that failed with ErrTransient, and
// reports each such failure to got as a result with transient set.
func claimUntilEmpty(ctx context.Context, drv driver.Driver, cfg ClaimerConfig, got func(*claimResult)) error {
	inARow := 0
	for {
		res, err := claimOnce(ctx, drv, cfg)
		if errors.Is(err, driver.ErrTransient) && inARow < maxTransient && ctx.Err() == nil {
			inARow++
			got(&claimResult{transient: err})
			continue
		}
		inARow = 0
		if err != nil {
			return err
		}
		if res != nil {
			got(res)
			continue
		}
		// Nothing claimed: either the outbox is drained, or (PostgreSQL)
		// every row left is held by another claimer for a moment.
		peek, err := drv.Reader().OutboxPeek(ctx, &driver.OutboxPeekParams{Workflows: cfg.Workflows, Now: time.Now()})
		if err != nil {
			return fmt.Errorf("runner %s: peek: %w", cfg.RunnerID, err)
		}
		if !peek.Claimable {
			return nil
		}
	}
}

// claimResult is what one committed claim took, or the transient error
// one claim transaction failed with.
type claimResult struct {
	tasks     []uuid.UUID
	started   []uuid.UUID // pipelines this claim started
	transient error
}

func claimOnce(ctx context.Context, drv driver.Driver, cfg ClaimerConfig) (*claimResult, error) {
	tx, err := drv.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("runner %s: begin: %w", cfg.RunnerID, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	now := time.Now()
	claimed, err := tx.TaskClaim(ctx, &driver.TaskClaimParams{RunnerID: cfg.RunnerID, Workflows: cfg.Workflows, Limit: cfg.Limit, Now: now})
	if err != nil {
		return nil, fmt.Errorf("runner %s: claim: %w", cfg.RunnerID, err)
	}
	tasks, started := claimed.Tasks, claimed.Started
	if len(tasks) == 0 {
		return nil, nil
	}
	cs := &driver.ChangeSet{}
	for _, pid := range started {
		cs.Events = append(cs.Events, driver.EventInsert{ID: uuid.New(), PipelineID: pid,
			Type: driver.EventPipelineStarted, Data: json.RawMessage(`{}`), WorkerID: cfg.RunnerID, CreatedAt: now})
	}
	res := &claimResult{started: started}
	for _, t := range tasks {
		res.tasks = append(res.tasks, t.ID)
		cs.Events = append(cs.Events, driver.EventInsert{ID: uuid.New(), PipelineID: t.PipelineID, TaskID: &t.ID,
			Type: driver.EventTaskClaimed, Data: json.RawMessage(`{"attempt":1}`), WorkerID: cfg.RunnerID, CreatedAt: now})
	}
	if err := tx.ChangeSetApply(ctx, cs); err != nil {
		return nil, fmt.Errorf("runner %s: record claims: %w", cfg.RunnerID, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("runner %s: commit: %w", cfg.RunnerID, err)
	}
	return res, nil
}
