package soak

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cloacina-go/cloacina"
)

// workflowName names the soak workflow: a diamond with a tail,
//
//	extract → left, right → join → publish
const workflowName = "soak"

// maxAttempts is every soak task's attempt budget.
const maxAttempts = 3

// behaviour is how the soak tasks behave; the test process and the runner
// processes must agree on it only as far as the workflow's shape goes.
type behaviour struct {
	// FailProb is the probability that an attempt fails.
	FailProb float64 `json:"fail_prob"`
	// FailLast lets the last attempt fail too, so some runs fail and their
	// downstream tasks are skipped. Without it every run completes.
	FailLast bool `json:"fail_last"`
	// MaxWork bounds the random time an attempt works.
	MaxWork time.Duration `json:"max_work"`
}

// newWorkflow returns the soak workflow. Every attempt records itself
// through rec; a nil rec (the submitting process, which runs no task)
// records nothing.
func newWorkflow(b behaviour, rec recorder) *cloacina.Workflow {
	retry := &cloacina.RetryPolicy{MaxAttempts: maxAttempts, Backoff: cloacina.BackoffFixed, InitialDelay: 20 * time.Millisecond}
	task := func(name string, deps ...string) cloacina.Task {
		return cloacina.Task{Name: name, DependsOn: deps, Retry: retry, Run: taskBody(b, rec)}
	}
	return cloacina.MustWorkflow(workflowName,
		task("extract"),
		task("left", "extract"),
		task("right", "extract"),
		task("join", "left", "right"),
		task("publish", "join"),
	)
}

var errInjected = errors.New("injected failure")

func taskBody(b behaviour, rec recorder) cloacina.TaskFunc {
	return func(ctx context.Context, tc *cloacina.Context) error {
		info, ok := cloacina.TaskInfoFrom(ctx)
		if !ok {
			return cloacina.Permanent(errors.New("soak task called without TaskInfo"))
		}
		ex := &execution{RunID: info.RunID, TaskID: info.TaskID, Task: info.Task, Attempt: info.Attempt,
			RunnerID: info.RunnerID, PID: os.Getpid(), StartedAt: time.Now().UTC()}
		err := work(ctx, b, info.Attempt)
		if err == nil {
			err = tc.Set(info.Task, info.Attempt)
		}
		ex.EndedAt = time.Now().UTC()
		ex.Outcome = "ok"
		if err != nil {
			ex.Outcome = err.Error()
		}
		if rec != nil {
			if rerr := rec.record(ctx, ex); rerr != nil {
				return fmt.Errorf("record execution: %w", rerr)
			}
		}
		return err
	}
}

// work waits a random time (returning early when ctx ends) and fails at
// random.
func work(ctx context.Context, b behaviour, attempt int) error {
	if b.MaxWork > 0 {
		timer := time.NewTimer(rand.N(b.MaxWork))
		defer timer.Stop()
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-timer.C:
		}
	}
	if (attempt < maxAttempts || b.FailLast) && rand.Float64() < b.FailProb {
		return errInjected
	}
	return nil
}

// execution is one attempt of a task as the task function saw it: the
// application-side evidence the audit log is checked against.
type execution struct {
	RunID     uuid.UUID
	TaskID    uuid.UUID
	Task      string
	Attempt   int
	RunnerID  string
	PID       int
	StartedAt time.Time
	EndedAt   time.Time
	Outcome   string // "ok" or the error
}

// executionsTable is the application table the soak tasks record into.
const executionsTable = "soak_executions"

// recorder writes an execution in its own autocommit statement.
type recorder interface {
	record(ctx context.Context, ex *execution) error
}

// recordTimeout bounds the retries of one record: the database may be
// restarting, or locked by another process.
const recordTimeout = 30 * time.Second

// retryRecord runs insert until it succeeds, the task's context aside
// (a cancelled task still records what it did), for up to recordTimeout.
func retryRecord(ctx context.Context, insert func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	backoff := 10 * time.Millisecond
	for {
		err := insert(ctx)
		if err == nil {
			return nil
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return err
		case <-timer.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

type pgRecorder struct {
	pool  *pgxpool.Pool
	table string // schema-qualified
}

func newPGRecorder(pool *pgxpool.Pool, schema string) *pgRecorder {
	return &pgRecorder{pool: pool, table: pgx.Identifier{schema, executionsTable}.Sanitize()}
}

func (r *pgRecorder) record(ctx context.Context, ex *execution) error {
	return retryRecord(ctx, func(ctx context.Context) error {
		_, err := r.pool.Exec(ctx, `INSERT INTO `+r.table+` (run_id, task_id, task_name, attempt, runner_id, pid, started_at, ended_at, outcome)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			ex.RunID, ex.TaskID, ex.Task, ex.Attempt, ex.RunnerID, ex.PID, ex.StartedAt, ex.EndedAt, ex.Outcome)
		return err
	})
}

type sqliteRecorder struct {
	db *sql.DB
}

func (r *sqliteRecorder) record(ctx context.Context, ex *execution) error {
	return retryRecord(ctx, func(ctx context.Context) error {
		_, err := r.db.ExecContext(ctx, `INSERT INTO `+executionsTable+` (run_id, task_id, task_name, attempt, runner_id, pid, started_at, ended_at, outcome)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			ex.RunID.String(), ex.TaskID.String(), ex.Task, ex.Attempt, ex.RunnerID, ex.PID,
			sqliteTime(ex.StartedAt), sqliteTime(ex.EndedAt), ex.Outcome)
		return err
	})
}

// sqliteTime formats a time the way the SQLite backend stores times:
// fixed width, so text order is time order.
func sqliteTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000Z") }
