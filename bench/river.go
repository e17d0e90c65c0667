package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
)

// River settings from issue 5: one client, MaxWorkers 100, FetchCooldown
// 2 ms, FetchPollInterval 20 ms.
const (
	riverMaxWorkers        = 100
	riverFetchCooldown     = 2 * time.Millisecond
	riverFetchPollInterval = 20 * time.Millisecond
)

// stepArgs is the one job kind of every River scenario: step Step of run
// I, in a chain whose last step is Last. A job whose step is not the last
// inserts the next step and completes itself in one transaction.
type stepArgs struct {
	I    int `json:"i"`
	Step int `json:"s"`
	Last int `json:"l"`
}

// Kind names the job kind.
func (stepArgs) Kind() string { return "bench_step" }

// riverRig is one River client on one target, for either driver.
type riverRig[TTx any] struct {
	client *river.Client[TTx]
	// begin/commit/rollback manage the worker's own transaction.
	begin    func(ctx context.Context) (TTx, error)
	commit   func(ctx context.Context, tx TTx) error
	rollback func(ctx context.Context, tx TTx)
	// completeTx is river.JobCompleteTx for the rig's driver type.
	completeTx func(ctx context.Context, tx TTx, job *river.Job[stepArgs]) error
	closeDB    func()
}

// stepWorker works stepArgs jobs, recording them in the rig's probe.
type stepWorker[TTx any] struct {
	river.WorkerDefaults[stepArgs]
	rig   *riverRig[TTx]
	probe *probe
}

// Work records the unit and, unless it is the chain's last step, inserts
// the next step and completes this job in one transaction.
func (w *stepWorker[TTx]) Work(ctx context.Context, job *river.Job[stepArgs]) error {
	a := job.Args
	w.probe.begin(a.I, a.Step)
	w.probe.end(a.I, a.Step)
	if a.Step >= a.Last {
		return nil
	}
	tx, err := w.rig.begin(ctx)
	if err != nil {
		return err
	}
	defer w.rig.rollback(context.WithoutCancel(ctx), tx)
	if _, err := w.rig.client.InsertTx(ctx, tx, stepArgs{I: a.I, Step: a.Step + 1, Last: a.Last}, nil); err != nil {
		return fmt.Errorf("insert next step: %w", err)
	}
	if err := w.rig.completeTx(ctx, tx, job); err != nil {
		return fmt.Errorf("complete job: %w", err)
	}
	return w.rig.commit(ctx, tx)
}

func riverConfig[TTx any](rig *riverRig[TTx], p *probe, schema string, logger *slog.Logger) *river.Config {
	workers := river.NewWorkers()
	river.AddWorker(workers, &stepWorker[TTx]{rig: rig, probe: p})
	return &river.Config{
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: riverMaxWorkers}},
		Workers:           workers,
		FetchCooldown:     riverFetchCooldown,
		FetchPollInterval: riverFetchPollInterval,
		Schema:            schema,
		Logger:            logger,
	}
}

// riverHandle is what the scenarios need of a rig, whatever its driver.
type riverHandle interface {
	insert(ctx context.Context, n, last int) error
	insertOne(ctx context.Context, i, last int) error
	start(ctx context.Context) error
	stop(ctx context.Context) error
	close()
}

// openRiver opens a River client on the target (migrated, not started).
// hostport, when set, routes PostgreSQL traffic through the counting
// proxy; countingDriver, when set, is the database/sql driver name used
// for SQLite.
func openRiver(ctx context.Context, t *target, p *probe, logger *slog.Logger, hostport, sqliteDriver string) (riverHandle, error) {
	switch t.Backend {
	case "postgres":
		pool, err := pgxpool.New(ctx, t.pgURLVia(hostport))
		if err != nil {
			return nil, err
		}
		rig := &riverRig[pgx.Tx]{
			begin:    func(ctx context.Context) (pgx.Tx, error) { return pool.Begin(ctx) },
			commit:   func(ctx context.Context, tx pgx.Tx) error { return tx.Commit(ctx) },
			rollback: func(ctx context.Context, tx pgx.Tx) { _ = tx.Rollback(ctx) },
			completeTx: func(ctx context.Context, tx pgx.Tx, job *river.Job[stepArgs]) error {
				_, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
				return err
			},
			closeDB: pool.Close,
		}
		if err := finishRig(ctx, rig, riverpgxv5.New(pool), p, t.Schema, logger); err != nil {
			pool.Close()
			return nil, err
		}
		return rig, nil
	case "sqlite":
		if sqliteDriver == "" {
			sqliteDriver = "sqlite"
		}
		db, err := sql.Open(sqliteDriver, t.riverSQLiteDSN())
		if err != nil {
			return nil, err
		}
		// River's documented setting for SQLite: one connection.
		db.SetMaxOpenConns(1)
		rig := &riverRig[*sql.Tx]{
			begin:    func(ctx context.Context) (*sql.Tx, error) { return db.BeginTx(ctx, nil) },
			commit:   func(ctx context.Context, tx *sql.Tx) error { return tx.Commit() },
			rollback: func(ctx context.Context, tx *sql.Tx) { _ = tx.Rollback() },
			completeTx: func(ctx context.Context, tx *sql.Tx, job *river.Job[stepArgs]) error {
				_, err := river.JobCompleteTx[*riversqlite.Driver](ctx, tx, job)
				return err
			},
			closeDB: func() { _ = db.Close() },
		}
		if err := finishRig(ctx, rig, riversqlite.New(db), p, "", logger); err != nil {
			_ = db.Close()
			return nil, err
		}
		return rig, nil
	}
	return nil, fmt.Errorf("unknown backend %q", t.Backend)
}

func finishRig[TTx any](ctx context.Context, rig *riverRig[TTx], drv riverdriver.Driver[TTx], p *probe, schema string, logger *slog.Logger) error {
	m, err := rivermigrate.New(drv, &rivermigrate.Config{Schema: schema, Logger: logger})
	if err != nil {
		return fmt.Errorf("river migrator: %w", err)
	}
	if _, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("river migrate: %w", err)
	}
	client, err := river.NewClient(drv, riverConfig(rig, p, schema, logger))
	if err != nil {
		return fmt.Errorf("river client: %w", err)
	}
	rig.client = client
	return nil
}

func (r *riverRig[TTx]) insert(ctx context.Context, n, last int) error {
	const batch = 1000
	for start := 0; start < n; start += batch {
		params := make([]river.InsertManyParams, 0, min(batch, n-start))
		for i := start; i < min(start+batch, n); i++ {
			params = append(params, river.InsertManyParams{Args: stepArgs{I: i, Last: last}})
		}
		if _, err := r.client.InsertMany(ctx, params); err != nil {
			return fmt.Errorf("insert jobs %d..: %w", start, err)
		}
	}
	return nil
}

func (r *riverRig[TTx]) insertOne(ctx context.Context, i, last int) error {
	_, err := r.client.Insert(ctx, stepArgs{I: i, Last: last}, nil)
	return err
}

func (r *riverRig[TTx]) start(ctx context.Context) error { return r.client.Start(ctx) }

func (r *riverRig[TTx]) stop(ctx context.Context) error {
	err := r.client.Stop(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("river client did not stop in time: %w", err)
	}
	return err
}

func (r *riverRig[TTx]) close() { r.closeDB() }

// riverPending is the query counting jobs not yet completed.
func riverPending(t *target) string {
	return harnessMark + "SELECT count(*) FROM " + t.table("river_job") + " WHERE state <> 'completed'"
}

// verifyRiver checks that the database holds exactly jobs completed jobs.
func verifyRiver(ctx context.Context, t *target, jobs int) error {
	byState, err := t.groupCounts(ctx, "SELECT state, count(*) FROM "+t.table("river_job")+" GROUP BY state")
	if err != nil {
		return fmt.Errorf("count jobs: %w", err)
	}
	if len(byState) != 1 || byState["completed"] != int64(jobs) {
		return fmt.Errorf("database check failed: jobs by state %v, want %d completed", byState, jobs)
	}
	return nil
}

// workRiver starts the client, waits until the probe saw every unit and
// the database shows every job completed, and stops the client.
func workRiver(ctx context.Context, rh riverHandle, t *target, p *probe, timeout time.Duration, prof *phaseProfiler) (time.Duration, error) {
	stopProf := prof.start()
	start := time.Now()
	if err := rh.start(ctx); err != nil {
		stopProf()
		return 0, err
	}
	elapsed, err := waitDone(ctx, p, timeout, start, func() error {
		return t.waitZero(ctx, riverPending(t), timeout)
	})
	stopProf()
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if serr := rh.stop(stopCtx); serr != nil && err == nil {
		err = fmt.Errorf("stop river client: %w", serr)
	}
	return elapsed, err
}
