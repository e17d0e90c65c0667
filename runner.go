package cloacina

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cloacina-go/cloacina/driver"
	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/dag"
)

// Config configures a Runner. The zero value is usable: every field
// documents its default.
type Config struct {
	// Workflows are registered at open; more can be added with Register,
	// before or after Start. A runner only claims tasks of workflows it
	// has registered.
	Workflows []*Workflow
	// MaxConcurrentTasks bounds the tasks this runner executes at once.
	// A task waiting in DeferUntil, or for another run (Execute,
	// Execution.Wait), gives its slot back meanwhile. Default: 10; at most
	// 10,000.
	MaxConcurrentTasks int
	// ClaimBatchSize bounds the tasks claimed in one transaction.
	// Default: MaxConcurrentTasks, at most 100; at most 10,000 when set.
	ClaimBatchSize int
	// PollInterval is how often an idle runner looks for work it was not
	// woken for (work from other SQLite processes, ExecuteTx on SQLite
	// once the quick looks that follow it are over (see
	// Runner.ExecuteTx), missed notifications, retries that fell due)
	// and for runs cancelled elsewhere. Default: 1s on SQLite; 5s on PostgreSQL, where NOTIFY
	// wakes runners at once and the poll only catches what it missed.
	// At least a millisecond when set, as are HeartbeatInterval and
	// TaskTimeout: a shorter one is refused as a number without its unit.
	PollInterval time.Duration
	// TaskTimeout bounds one attempt of a task without its own Timeout.
	// Default: 0, no timeout.
	TaskTimeout time.Duration
	// RunnerID identifies this runner in claims and events; it must be
	// unique among live runners. A stable id (a pod name, say) is fine: a
	// runner that starts resets the tasks an earlier process left Running
	// under its id (task_reset), so a crash followed by a quick restart
	// strands nothing. Default: a new UUIDv7 per runner.
	RunnerID string
	// RunnerName is a human label recorded in claim events.
	// Default: "<hostname>-<pid>".
	RunnerName string
	// Logger receives the runner's background errors and lifecycle.
	// Default: slog.Default().
	Logger *slog.Logger
	// Schema is the PostgreSQL schema holding the tables (one per tenant;
	// see CreateTenant). It must agree with the URL's schema parameter
	// when both are set. Default: "public". It is an error with SQLite.
	Schema string
	// SkipMigrations opens without applying migrations; the database must
	// then already be at this code's version. Default: false (migrate on open).
	SkipMigrations bool
	// ReadOnly opens a runner that only reads, for dashboards and tools
	// that inspect a database they must not change: Get, List, Events,
	// Runners and the other queries work; Start, Execute, ExecuteAsync,
	// ExecuteTx, Cancel, Pause, Resume and DeleteEventsBefore return
	// ErrReadOnly. Nothing is created or migrated: the database must
	// exist at this code's schema version (ErrSchemaOutdated,
	// ErrSchemaTooNew otherwise). Open opens SQLite files with
	// sqlite.OpenReadOnly (no journal mode change, no file created, so a
	// file the process may not write can be read) and PostgreSQL with
	// read-only sessions, needing only SELECT on the tables. Default: false.
	ReadOnly bool
	// HeartbeatInterval is how often a started runner records that it is
	// alive (one write per runner, however many tasks it runs), checks that
	// it still holds its claims, renews or seeks leadership, and measures
	// its offset from the database's clock (see Runner). Default: 5s.
	HeartbeatInterval time.Duration
	// RunnerTimeout is how long a runner may go without a heartbeat before
	// the leader declares it dead and resets its running tasks for other
	// runners, and how long a term of the leader lease lasts after its
	// last renewal, both by the database's clock, so the runners' own
	// clocks need not agree. (The times a runner records follow that clock
	// too: see Runner.) It must exceed two heartbeats. On SQLite a
	// heartbeat waits for the database write lock like any writer (up to
	// the 10s busy timeout), so keep it well above that. Default: 30s, or
	// three HeartbeatIntervals when that is longer.
	RunnerTimeout time.Duration
	// MaxRecoveries bounds how often one task is reset after its runner
	// died; the next time it is abandoned (Failed, task_abandoned) instead,
	// so a task that kills its runner cannot loop forever — by the leader,
	// or, when the leader does not run the task's workflow, by the next
	// runner that claims it. Default: 3.
	MaxRecoveries int
	// Schedules start runs of the registered workflows on cron
	// specifications while the runner is started (see Schedule). They
	// are checked at Open and stored in the database at Start; runners
	// in other processes may declare the same ones, and each tick fires
	// once. Default: none.
	Schedules []Schedule
	// OpenRetry bounds how long Open, OpenPool, OpenDB and NewRunner go
	// on retrying transient failures (a database starting up, say) when
	// their ctx has no deadline; a deadline on ctx bounds them instead.
	// Negative: no retry. Default: 30s.
	OpenRetry time.Duration
}

const (
	defaultMaxConcurrent = 10
	maxClaimBatch        = 100
	maxConcurrency       = 10000
	defaultPollInterval  = time.Second
	// minInterval is the shortest interval or timeout a Config or Task
	// takes: anything shorter is a number that lost its unit.
	minInterval   = time.Millisecond
	defaultPGPoll = 5 * time.Second
	// defaultOpenRetry is Config.OpenRetry's default.
	defaultOpenRetry = 30 * time.Second
	// orphanSweepEvery is how many heartbeats apart the leader also looks
	// for Running tasks whose runner row is gone (a leader that died
	// between removing dead runners and resetting their tasks).
	orphanSweepEvery     = 12
	defaultHeartbeat     = 5 * time.Second
	defaultRunnerTimeout = 30 * time.Second
	defaultMaxRecoveries = 3
	// completionBatch bounds the task results written in one transaction.
	completionBatch = 256
	// timeoutGrace is how long a timed-out task may take to return after
	// its context is cancelled before its failure is recorded anyway.
	timeoutGrace = time.Second
	// stopGrace is how long Stop waits, once its deadline passed and task
	// contexts were cancelled, for tasks to return before handing their
	// claims back.
	stopGrace = 2 * time.Second
	// closeWait is how long Close lets running tasks finish (see Close).
	closeWait = 30 * time.Second
	// flushWait is how long Stop, once every task has returned or been
	// handed back, lets the completer record their results.
	flushWait = 10 * time.Second
)

// Runner executes workflows against one database. Open one per process
// (or several, on different databases or schemas); any number of runners
// in any number of processes can share a database. Every method is safe
// for concurrent use.
//
// The times a runner records (due times of retries and ready tasks, the
// time a claim compares them with, events' created_at, the start and end
// of tasks and runs) are its own clock plus its estimate of the offset to
// the database's clock, so that runners on machines whose clocks disagree
// record times that agree. It measures the offset at Start (its
// registration returns the database's time) and at every heartbeat, at no
// extra statement; while it is not started it reads the database's clock
// before its first write and at most once a minute after; and, started or
// not, before it writes or reads what is due once its own clock was
// stepped (against the monotonic clock). The estimate is off by at most half a second (half
// the longest round trip it accepts); until the first measurement, a
// runner records by its own clock.
type Runner struct {
	drv    driver.Driver
	owned  bool
	cfg    Config
	id     string
	name   string
	logger *slog.Logger
	// clock is this runner's estimate of the database's clock (see
	// dbClock); tests skew its local clock.
	clock *dbClock
	// now is the clock this runner records times by (events, due times,
	// durations): clock.now. Liveness and leadership never read it. Tests
	// replace it to record times that no sample corrects.
	now func() time.Time

	// lifecycleMu serialises Start and Stop (and Close's stop); mu is held
	// only for the flags, since starting runs transactions that read them.
	lifecycleMu sync.Mutex
	mu          sync.Mutex
	workflows   map[string]*Workflow
	// registered counts the workflows registered; rowWritten is its value
	// when this runner's row was last written, so a row that lacks some
	// is written again (see Register).
	registered uint64
	rowWritten uint64
	started    bool
	// done is closed by Close: calls check it, and a Wait in progress
	// returns on it. closed is closed when Close has returned, with
	// closeErr its result.
	done     chan struct{}
	closed   chan struct{}
	closeErr error
	// closeWait is the constant closeWait; tests shorten it.
	closeWait time.Duration
	// flushWait is the constant flushWait; tests shorten it.
	flushWait time.Duration
	// svc holds the background services while the runner is started.
	svc atomic.Pointer[services]

	runningMu sync.Mutex
	running   map[uuid.UUID]*runningTask
	// cancelledRuns remembers for a while the runs cancelled under this
	// runner's eyes, for tasks claimed before the cancel that start after
	// it (see cancelLocal). cancelledPruneAt is the size at which
	// cancelLocal next drops the expired ones.
	cancelledRuns    map[uuid.UUID]time.Time
	cancelledPruneAt int
	// leafHints remembers an open leaf of runs decided narrowly (see
	// runState.endFrom).
	leafHints leafHints
	// strays are claims this runner may hold but does not run: those of a
	// commit that reported a failure, which it could not then verify (see
	// settle). The heartbeat loop resets them (resetStrays).
	strays []*driver.Task

	waitMu  sync.Mutex
	waiters map[uuid.UUID]map[chan struct{}]struct{}

	// schedules are the schedules this runner declares, by name.
	schedules map[string]*compiledSchedule

	// starts groups concurrent ExecuteAsync calls into one transaction.
	starts startQueue
	// startHook, when set, sees the length of the start queue after each
	// ExecuteAsync joins it.
	startHook atomic.Pointer[func(int)]
	// idleHook, when set, is called with the claimer's context each time
	// the claimer has claimed what it could and is about to wait (a test
	// hook; it may block until the context ends to stop further claims).
	idleHook atomic.Pointer[func(context.Context)]

	// commitHook, when set, sees every committed change set; tests use it
	// to wait for a transition instead of polling.
	commitHook atomic.Pointer[func(*changes)]
	// beginHook, when set, is called first thing by a claimed task's
	// goroutine (a test hook; blocking in it models a runner that stalls
	// between claim and start).
	beginHook atomic.Pointer[func(*driver.Task)]
	// heartbeatFrozen stops heartbeats, to test what happens to a runner
	// that is alive but looks dead.
	heartbeatFrozen atomic.Bool
	// beatSent is when the last heartbeat (or registration) that
	// committed was sent, and gapEnded when the last one was sent that
	// followed the one before it by half a RunnerTimeout or more, each as
	// nanoseconds since clockEpoch plus one (zero: never). The
	// heartbeat_at a beat writes is no earlier than its sending, so no
	// other runner can declare this one dead, and reset its claims, but
	// in such a gap (see claimHeld). beatMu orders their updates.
	beatMu   sync.Mutex
	beatSent atomic.Int64
	gapEnded atomic.Int64
	// claimsPaused stops this runner claiming, so tests choose which
	// runner gets a task.
	claimsPaused atomic.Bool
	// beatHook, when set, runs inside every heartbeat transaction, after
	// the lease renewal: a test freezes a runner there.
	beatHook atomic.Pointer[func()]
	// sweepHook, when set, sees the outcome of every sweep the leader
	// made for the tasks of dead runners.
	sweepHook atomic.Pointer[func(error)]
	// leaderHook, when set, sees every change of leadership.
	leaderHook atomic.Pointer[func(bool)]
	// streamPolled, when set, is called after each read of StreamEvents
	// with the cursor it left.
	streamPolled atomic.Pointer[func(int64)]
	isLeader     atomic.Bool
}

// Open opens a runner on the database at url (see ParseDatabaseURL),
// creating a SQLite file if missing, and applies migrations (neither with
// Config.ReadOnly). The Config is checked first: one it refuses opens,
// and creates, nothing.
//
// A transient failure (a PostgreSQL server starting up or restarting, a
// connection refused or dropped, a deadlock or serialization failure or
// session timeout while migrating, a SQLite database locked beyond its
// busy timeout) is retried, opening afterwards from scratch, with a backoff
// growing to 2 s, until ctx ends or, when ctx has no deadline, for
// Config.OpenRetry (30s by default): then Open returns the last failure,
// which still wraps driver.ErrTransient. Retries are logged (Config.Logger)
// at debug level, and now and then at warn. Give ctx a longer deadline to
// wait longer for a database that is starting. Other
// failures (a bad URL, authentication refused, a database or schema that
// does not exist, a schema too new, a file that cannot be written) are
// returned at once.
func Open(ctx context.Context, url string, cfg *Config) (*Runner, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	u, err := ParseDatabaseURL(url)
	if err != nil {
		return nil, err
	}
	// Check the Config before opening anything: opening a SQLite file
	// creates it, and a Config error must leave no empty database behind.
	r, err := newRunner(u.Backend, &c)
	if err != nil {
		return nil, err
	}
	err = r.retryOpen(ctx, func() error {
		drv, err := openDriver(ctx, url, c.Schema, c.ReadOnly)
		if err != nil {
			return err
		}
		if err := r.attach(ctx, drv); err != nil {
			drv.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.owned = true
	return r, nil
}

// retryOpen is openRetrying with the runner's Config.OpenRetry and logger.
func (r *Runner) retryOpen(ctx context.Context, open func() error) error {
	return openRetrying(ctx, "Open", r.cfg.OpenRetry, r.logger, open)
}

// openRetrying runs open for caller (Open or Migrate) until it succeeds,
// fails for a reason that is not transient, or ctx ends — or, when ctx
// has no deadline, until limit (Config.OpenRetry; 0 means its default)
// has passed (see Open). When it gives up after a transient failure, the
// error is that failure, saying what to fix.
func openRetrying(ctx context.Context, caller string, limit time.Duration, logger *slog.Logger, open func() error) error {
	limit = cmp.Or(limit, defaultOpenRetry)
	backoff := 10 * time.Millisecond
	var last error // the last transient failure
	var giveUp time.Time
	if _, ok := ctx.Deadline(); !ok {
		giveUp = time.Now().Add(limit)
	}
	for attempt := 1; ; attempt++ {
		err := open()
		if err == nil {
			if last != nil {
				logger.Info("database reachable again: opened", "attempts", attempt)
			}
			return nil
		}
		transient := errors.Is(err, driver.ErrTransient)
		if transient {
			last = err
		}
		if ctx.Err() != nil && last != nil {
			// An attempt that ctx cut short says only that ctx ended: the
			// failure that kept Open retrying says what to fix.
			return fmt.Errorf("%w (gave up after %d attempts as the context ended: %w): "+
				"check that the database is up and reachable, or give %s a context with a longer deadline", last, attempt, context.Cause(ctx), caller)
		}
		if !transient {
			return err
		}
		if !giveUp.IsZero() && !time.Now().Add(backoff).Before(giveUp) {
			if caller != "Open" {
				return fmt.Errorf("%w (gave up after %d attempts over %s): check that the database is up and reachable, "+
					"or give %s a context with a deadline", err, attempt, limit, caller)
			}
			return fmt.Errorf("%w (gave up after %d attempts over Config.OpenRetry, %s): check that the database is up and reachable, "+
				"or set a longer Config.OpenRetry, or give Open a context with a deadline", err, attempt, limit)
		}
		level := slog.LevelDebug
		if attempt == 5 || attempt%50 == 0 {
			level = slog.LevelWarn
		}
		logger.Log(ctx, level, "open: retrying a transient failure", "attempt", attempt, "error", err)
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
		timer.Stop()
		backoff = min(backoff*2, 2*time.Second)
	}
}

// OpenPool opens a runner on a pgx pool the application already has;
// Config.Schema selects the schema. Closing the runner leaves the pool open.
func OpenPool(ctx context.Context, pool *pgxpool.Pool, cfg *Config) (*Runner, error) {
	var opts postgres.Opts
	if cfg != nil {
		opts = postgres.Opts{Schema: cfg.Schema, ReadOnly: cfg.ReadOnly}
	}
	drv, err := postgres.New(pool, &opts)
	if err != nil {
		return nil, err
	}
	return NewRunner(ctx, drv, cfg)
}

// OpenDB opens a runner on a SQLite *sql.DB the application already has,
// opened with sqlite.DSN. Closing the runner leaves db open.
func OpenDB(ctx context.Context, db *sql.DB, cfg *Config) (*Runner, error) {
	if cfg != nil && cfg.Schema != "" {
		return nil, fmt.Errorf("%w: Config.Schema is set, but SQLite has no schemas: use one database file per tenant", ErrInvalidURL)
	}
	drv, err := sqlite.New(db)
	if err != nil {
		return nil, err
	}
	return NewRunner(ctx, drv, cfg)
}

// NewRunner returns a runner on a backend (see driver/sqlite and
// driver/postgres). It applies migrations unless Config.SkipMigrations or
// Config.ReadOnly; a backend opened read-only needs Config.ReadOnly.
// Transient failures of the migration (or of the version check) are
// retried until ctx ends, as Open retries them. Closing the runner does
// not close drv.
func NewRunner(ctx context.Context, drv driver.Driver, cfg *Config) (*Runner, error) {
	backend := ""
	if drv != nil {
		backend = drv.Name()
	}
	r, err := newRunner(backend, cfg)
	if err != nil {
		return nil, err
	}
	if drv == nil {
		return nil, errors.New("cloacina: NewRunner needs a backend: open one with driver/sqlite or driver/postgres, or use Open")
	}
	if err := r.retryOpen(ctx, func() error { return r.attach(ctx, drv) }); err != nil {
		return nil, err
	}
	return r, nil
}

// newRunner checks cfg, fills in its defaults (PollInterval's depends on
// backend, "sqlite" or "postgres") and returns a runner without a
// backend, touching no database; attach gives it one.
func newRunner(backend string, cfg *Config) (*Runner, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	for _, f := range []struct {
		name     string
		negative bool
		value    any
	}{
		{"MaxConcurrentTasks", c.MaxConcurrentTasks < 0, c.MaxConcurrentTasks},
		{"ClaimBatchSize", c.ClaimBatchSize < 0, c.ClaimBatchSize},
		{"PollInterval", c.PollInterval < 0, c.PollInterval},
		{"TaskTimeout", c.TaskTimeout < 0, c.TaskTimeout},
		{"HeartbeatInterval", c.HeartbeatInterval < 0, c.HeartbeatInterval},
		{"RunnerTimeout", c.RunnerTimeout < 0, c.RunnerTimeout},
		{"MaxRecoveries", c.MaxRecoveries < 0, c.MaxRecoveries},
	} {
		if f.negative {
			return nil, fmt.Errorf("cloacina: Config.%s %v is negative: use 0 for the default or a positive value", f.name, f.value)
		}
	}
	for _, f := range []struct {
		name  string
		value time.Duration
	}{{"PollInterval", c.PollInterval}, {"HeartbeatInterval", c.HeartbeatInterval}, {"TaskTimeout", c.TaskTimeout}} {
		if f.value > 0 && f.value < minInterval {
			return nil, fmt.Errorf("cloacina: Config.%s %s is below a millisecond, most likely a missing unit: write it as a time.Duration, such as 5 * time.Second",
				f.name, f.value)
		}
	}
	for _, f := range []struct{ name, value string }{{"RunnerID", c.RunnerID}, {"RunnerName", c.RunnerName}} {
		if why := unstorable(f.value); why != "" {
			return nil, fmt.Errorf("cloacina: Config.%s %q %s: use UTF-8 text without NUL characters", f.name, f.value, why)
		}
	}
	if c.MaxConcurrentTasks > maxConcurrency || c.ClaimBatchSize > maxConcurrency {
		// Statements list a batch's ids, and SQLite binds at most 32,766
		// values per statement. (Reads of every running task, which
		// waiting tasks make unbounded, go in parts: see maxIDsPerRead.)
		return nil, fmt.Errorf("cloacina: Config.MaxConcurrentTasks %d / ClaimBatchSize %d: use at most %d each (run more runners for more)",
			c.MaxConcurrentTasks, c.ClaimBatchSize, maxConcurrency)
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = defaultHeartbeat
	}
	if c.RunnerTimeout == 0 {
		c.RunnerTimeout = max(defaultRunnerTimeout, 3*c.HeartbeatInterval)
	}
	if c.RunnerTimeout <= 2*c.HeartbeatInterval {
		return nil, fmt.Errorf("cloacina: Config.RunnerTimeout %s must exceed two heartbeats (HeartbeatInterval %s): raise it, or heartbeat more often",
			c.RunnerTimeout, c.HeartbeatInterval)
	}
	if c.MaxRecoveries == 0 {
		c.MaxRecoveries = defaultMaxRecoveries
	}
	if c.MaxConcurrentTasks == 0 {
		c.MaxConcurrentTasks = defaultMaxConcurrent
	}
	if c.ClaimBatchSize == 0 {
		c.ClaimBatchSize = min(c.MaxConcurrentTasks, maxClaimBatch)
	}
	if c.PollInterval == 0 {
		c.PollInterval = defaultPollInterval
		if backend == "postgres" {
			c.PollInterval = defaultPGPoll
		}
	}
	if c.RunnerID == "" {
		c.RunnerID = newID().String()
	}
	if c.RunnerName == "" {
		host, _ := os.Hostname()
		c.RunnerName = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	r := &Runner{
		cfg:              c,
		id:               c.RunnerID,
		name:             c.RunnerName,
		logger:           c.Logger.With("runner_id", c.RunnerID),
		clock:            newDBClock(),
		workflows:        map[string]*Workflow{},
		running:          map[uuid.UUID]*runningTask{},
		cancelledRuns:    map[uuid.UUID]time.Time{},
		cancelledPruneAt: minCancelledPrune,
		waiters:          map[uuid.UUID]map[chan struct{}]struct{}{},
		done:             make(chan struct{}),
		closed:           make(chan struct{}),
		closeWait:        closeWait,
		flushWait:        flushWait,
	}
	r.now = r.clock.now
	for _, wf := range c.Workflows {
		if err := r.Register(wf); err != nil {
			return nil, err
		}
	}
	schedules, err := r.compileSchedules(c.Schedules)
	if err != nil {
		return nil, err
	}
	r.schedules = schedules
	return r, nil
}

// attach gives a runner made by newRunner its backend, after applying
// migrations (or, with Config.SkipMigrations or Config.ReadOnly, checking
// the schema version).
func (r *Runner) attach(ctx context.Context, drv driver.Driver) error {
	c := &r.cfg
	if c.SkipMigrations || c.ReadOnly {
		current, latest, err := drv.MigrationVersion(ctx)
		if err != nil {
			return fmt.Errorf("cloacina: %w", err)
		}
		fix := "run `cloacina migrate` or open without SkipMigrations"
		if c.ReadOnly {
			fix = "run `cloacina migrate` (with write access) first"
		}
		switch {
		case current > latest:
			return fmt.Errorf("cloacina: %w: database at version %d, code knows %d: upgrade cloacina", ErrSchemaTooNew, current, latest)
		case current < latest:
			return fmt.Errorf("cloacina: %w: database at version %d, code needs %d: %s", ErrSchemaOutdated, current, latest, fix)
		}
	} else if err := drv.Migrate(ctx); errors.Is(err, driver.ErrReadOnly) {
		return fmt.Errorf("cloacina: %w: the backend was opened read-only: set Config.ReadOnly", err)
	} else if err != nil {
		return fmt.Errorf("cloacina: %w", err)
	} else if pg, ok := drv.(*postgres.Driver); ok && pg.CreatedSchema() {
		r.logger.Info("created the PostgreSQL schema, which did not exist: if this runner was to join existing runs, check schema= in the database URL",
			"schema", pg.Schema())
	}
	r.drv = drv
	return nil
}

// Migrate applies pending migrations to the database at url and returns
// the schema version it is at afterwards. Like Open, it retries transient
// failures (a server starting up, a connection lost mid-migration, whose
// transaction then rolled back) until ctx ends or, when ctx has no
// deadline, for Config.OpenRetry's default; it logs its retries with
// slog's default logger.
func Migrate(ctx context.Context, url string, schema string) (int, error) {
	var current int
	err := openRetrying(ctx, "Migrate", 0, slog.Default(), func() error {
		drv, err := openDriver(ctx, url, schema, false)
		if err != nil {
			return err
		}
		defer drv.Close()
		if err := drv.Migrate(ctx); err != nil {
			return err
		}
		current, _, err = drv.MigrationVersion(ctx)
		return err
	})
	if err != nil {
		return 0, err
	}
	return current, nil
}

// ID returns the runner's id, recorded as worker_id on its events.
func (r *Runner) ID() string { return r.id }

// Driver returns the runner's backend.
func (r *Runner) Driver() driver.Driver { return r.drv }

// Register adds a workflow, before or after Start. A started runner
// claims the workflow's tasks from then on, those already queued
// included, and lists it in its row (Runners, `cloacina status`) at
// once — or, if that write fails, with its next heartbeat. Registering the
// same workflow again is a no-op; another workflow under a registered
// name is an error, started or not.
func (r *Runner) Register(wf *Workflow) error {
	if wf == nil || wf.version == "" {
		return fmt.Errorf("cloacina: Register: %w: a nil or zero Workflow: build the workflow with NewWorkflow", ErrInvalidWorkflow)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.isClosed() {
		return ErrRunnerClosed
	}
	if have, ok := r.workflows[wf.name]; ok {
		if have.version == wf.version {
			return nil
		}
		return fmt.Errorf("cloacina: a different workflow named %q is already registered (version %.12s, new %.12s): give it another name", wf.name, have.version, wf.version)
	}
	r.workflows[wf.name] = wf
	r.registered++
	if svc := r.svc.Load(); svc != nil {
		select {
		case svc.rowStale <- struct{}{}:
		default:
		}
		r.wakeClaimer()
	}
	return nil
}

func (r *Runner) workflow(name string) (*Workflow, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if wf, ok := r.workflows[name]; ok {
		return wf, nil
	}
	names := make([]string, 0, len(r.workflows))
	for n := range r.workflows {
		names = append(names, n)
	}
	sort.Strings(names)
	hint := "register it with Config.Workflows or Runner.Register"
	if s := dag.Closest(name, names); s != "" {
		hint = fmt.Sprintf("did you mean %q?", s)
	} else if len(names) > 0 {
		hint += " (registered: " + strings.Join(names, ", ") + ")"
	}
	return nil, fmt.Errorf("%w %q: %s", ErrUnknownWorkflow, name, hint)
}

func (r *Runner) workflowNames() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.workflowNamesLocked()
}

func (r *Runner) workflowNamesLocked() []string {
	names := make([]string, 0, len(r.workflows))
	for n := range r.workflows {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Close stops the runner if it is running (waiting up to 30 s for running
// tasks) and closes the database if the runner opened it (Open; not
// OpenDB, OpenPool or NewRunner). It returns that stop's error (see
// Stop: tasks handed back, results given up) joined with the database's
// Close error. Afterwards every method that would use
// the database — Start, Register and Execute* included, and those of its
// Execution handles — returns an error wrapping ErrRunnerClosed, whoever
// owns the database; a call in progress either finishes or returns that
// error (a Wait returns it at once). The runner's own running tasks are
// the exception while Close stops them: their calls (a child run started
// and waited for, say) go on as they would under Stop. ID, Driver and
// IsLeader still answer, and Stop does nothing. A second Close waits for
// the first and returns its result.
//
// Close called from a task function of this runner, on the goroutine
// running it, cannot wait for the stop, which waits for the task: it
// closes the runner for callers as above, then stops and closes in the
// background and returns nil at once. The task should return: its result
// is recorded as any other's before the database closes. (A task that
// goes on running is waited for, and handed back, as any other.) The
// outcome is logged; a later Close from outside waits for it and returns
// it. Close takes no context, so it knows a task by its caller's stack,
// which shows a task function but not whose, with two limits. From a
// goroutine the task started, it waits for the task like any caller, for
// 30 s, after which the task's claim is handed back (reset to Ready, to
// run again elsewhere or when a runner starts): such a goroutine should
// call Stop with the task's context, which works from any goroutine,
// before Close. And from a task of another runner of the process, while
// this one runs tasks, it returns at once as well, the close going on in
// the background.
func (r *Runner) Close() error {
	fromTask := r.callingTask(context.Background()) != nil
	r.mu.Lock()
	if r.isClosed() {
		r.mu.Unlock()
		select {
		case <-r.closed:
		default:
			if fromTask {
				return nil // the close in progress waits for this task
			}
			<-r.closed
		}
		return r.closeErr
	}
	close(r.done)
	r.mu.Unlock()
	if fromTask {
		go func() {
			if err := r.finishClose(); err != nil {
				r.logger.Warn("close called from a task", "error", err)
			}
		}()
		return nil
	}
	return r.finishClose()
}

// finishClose is Close once it marked the runner closed: it stops the
// runner and closes the database.
func (r *Runner) finishClose() error {
	defer close(r.closed)
	// A Start in progress finishes first (it sees the runner closed and
	// withdraws), so the database is not closed under it.
	r.lifecycleMu.Lock()
	r.mu.Lock()
	started := r.started
	r.mu.Unlock()
	r.lifecycleMu.Unlock()
	if started {
		r.closeErr = r.stop(context.Background()) // bounded by closeWait: see boundByClose
	}
	if r.owned {
		r.closeErr = errors.Join(r.closeErr, r.drv.Close())
	}
	return r.closeErr
}

// boundByClose returns ctx ended, with context.DeadlineExceeded as its
// cause, closeWait after Close begins: a Stop, with a deadline or none,
// keeps Close's once Close comes (Close itself stops the runner with no
// deadline of its own). The returned function releases it.
func (r *Runner) boundByClose(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	released := make(chan struct{})
	go func() {
		select {
		case <-r.done:
		case <-released:
			return
		}
		timer := time.NewTimer(r.closeWait)
		defer timer.Stop()
		select {
		case <-timer.C:
			cancel(context.DeadlineExceeded)
		case <-released:
		}
	}()
	return ctx, func() {
		close(released)
		cancel(nil)
	}
}

func (r *Runner) isClosed() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// checkOpen is ErrRunnerClosed once Close has begun, but for a call
// made with the context of a task this runner runs (see ownTask).
func (r *Runner) checkOpen(ctx context.Context) error {
	if r.isClosed() && !r.ownTask(ctx) {
		return ErrRunnerClosed
	}
	return nil
}

// ownTask reports whether ctx is the context of a task this runner runs
// (started by its current Start, not returned yet).
// Close stops the runner as Stop does, and its tasks' calls are part of
// that stop (a child run the task waits for is drained with it), so they
// are not refused as a caller's calls are once Close has begun.
func (r *Runner) ownTask(ctx context.Context) bool {
	s, ok := ctx.Value(taskScopeKey{}).(*taskScope)
	if !ok || s.r != r || r.services() != s.svc {
		return false // another runner's, or of a run of this one that has stopped
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.returned
}

// callingTask returns the services running the caller, when the caller
// is a task function of this runner's current Start: ctx is its context
// (see ownTask), or, for Close, which has no context, the calling
// goroutine is running a task function (see inTaskFunction) while this
// runner runs tasks. Otherwise it returns nil.
func (r *Runner) callingTask(ctx context.Context) *services {
	if r.ownTask(ctx) {
		return ctx.Value(taskScopeKey{}).(*taskScope).svc
	}
	svc := r.services()
	if svc == nil || !inTaskFunction() {
		return nil
	}
	for _, rt := range r.runningTasks() {
		s := &rt.scope
		if s.svc != svc {
			continue
		}
		s.mu.Lock()
		returned := s.returned
		s.mu.Unlock()
		if !returned {
			return svc
		}
	}
	return nil
}

// taskCaller is the function that calls task functions (on the goroutine
// that runs them), as the runtime names it.
var taskCaller = runtime.FuncForPC(reflect.ValueOf(callTask).Pointer()).Name()

// inTaskFunction reports whether the calling goroutine is running a task
// function of some runner of this process: whether callTask is on its
// stack. Go gives goroutines no identity to know a task by; reading one
// off runtime.Stack for every task would add some 10 µs to each, where
// the stack costs nothing until Close asks.
func inTaskFunction() bool {
	pcs := make([]uintptr, 64)
	for {
		n := runtime.Callers(2, pcs)
		frames := runtime.CallersFrames(pcs[:n])
		for {
			f, more := frames.Next()
			if f.Function == taskCaller {
				return true
			}
			if !more {
				break
			}
		}
		if n < len(pcs) {
			return false
		}
		pcs = make([]uintptr, 2*len(pcs)) // a deep stack: look at all of it
	}
}

// closedErr wraps err with ErrRunnerClosed when the runner was closed
// meanwhile: the driver's own error on a pool Close closed ("closed
// pool", "database is closed") says less.
func (r *Runner) closedErr(err error) error {
	if err == nil {
		return nil
	}
	if r.isClosed() && !errors.Is(err, ErrRunnerClosed) {
		return fmt.Errorf("%w (%w)", ErrRunnerClosed, err)
	}
	return err
}

// reader is where a caller's call reads the database: ErrRunnerClosed
// once Close has begun, since a runner on the application's database
// (OpenDB, OpenPool) would otherwise go on answering. Errors of the reads
// go through closedErr. ctx is the call's: see checkOpen.
func (r *Runner) reader(ctx context.Context) (driver.Executor, error) {
	if err := r.checkOpen(ctx); err != nil {
		return nil, err
	}
	return r.drv.Reader(), nil
}

// apiTx is withTx for a caller's call: refused once Close has begun, and
// its error wrapped with ErrRunnerClosed when Close came meanwhile. The
// runner's own work (results, heartbeats, the stop inside Close) uses
// withTx, which a closing runner still needs.
func (r *Runner) apiTx(ctx context.Context, fn txFunc) error {
	if err := r.checkOpen(ctx); err != nil {
		return err
	}
	_, err := r.withTx(ctx, apiTxAttempts, fn)
	return r.closedErr(err)
}

// checkWritable fails when the runner was opened with Config.ReadOnly;
// op, if given, names what was refused.
func (r *Runner) checkWritable(op string) error {
	if !r.cfg.ReadOnly {
		return nil
	}
	if op != "" {
		op += ": "
	}
	return fmt.Errorf("cloacina: %s%w: the runner was opened with Config.ReadOnly; open one without it to change the database", op, ErrReadOnly)
}

// txFunc is the body of a transaction: it reads and writes through tx and
// records further writes in c, which withTx applies before committing.
type txFunc func(ctx context.Context, tx driver.Tx, c *changes) error

// withTx runs fn in a transaction and commits it, retrying the whole
// transaction on transient errors and conflicts up to attempts times (0
// means until ctx is done). It returns the committed changes.
func (r *Runner) withTx(ctx context.Context, attempts int, fn txFunc) (*changes, error) {
	if err := r.checkWritable(""); err != nil {
		return nil, err
	}
	r.syncClock(ctx, r.drv.Reader())
	return r.retryTx(ctx, attempts, fn)
}

// retryTx is withTx without the clock sample on demand, for the
// transactions that sample the database's clock themselves (registering,
// heartbeating).
func (r *Runner) retryTx(ctx context.Context, attempts int, fn txFunc) (*changes, error) {
	if err := r.checkWritable(""); err != nil {
		return nil, err
	}
	backoff := 5 * time.Millisecond
	for attempt := 1; ; attempt++ {
		c := newChanges(r)
		err := r.tryTx(ctx, fn, c)
		if err == nil {
			r.afterCommit(c)
			return c, nil
		}
		c.releaseHeld()
		retryable := errors.Is(err, driver.ErrTransient) || errors.Is(err, driver.ErrConflict)
		if !retryable || ctx.Err() != nil || (attempts > 0 && attempt >= attempts) {
			return nil, err
		}
		// A retry or two is routine (a lock, a conflict); one that keeps
		// failing is said at WARN, now and then, so an outage or a write
		// the database keeps refusing is seen.
		level := slog.LevelDebug
		if attempt == 5 || attempt%50 == 0 {
			level = slog.LevelWarn
		}
		r.logger.Log(ctx, level, "retrying transaction", "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

func (r *Runner) tryTx(ctx context.Context, fn txFunc, c *changes) error {
	tx, err := r.drv.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// The transaction's time is read once it holds the database: on
	// SQLite, Begin waits for the write lock behind every other writer,
	// and a time read before that wait would precede the commits it
	// waited for (a run could be recorded as ended before a task of it
	// that committed first had finished). On PostgreSQL, Begin takes no
	// lock; the row locks taken later can still order a transaction's
	// time a scheduling delay before a commit it waited for.
	c.now = r.now()
	if err := fn(ctx, tx, c); err != nil {
		return err
	}
	r.addWakeups(c)
	if !c.cs.Empty() {
		if err := tx.ChangeSetApply(ctx, &c.cs); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// afterCommit delivers in-process effects of committed changes: waiters
// of finished runs are woken, local tasks of cancelled runs are cancelled,
// and the claimer is woken for new work.
func (r *Runner) afterCommit(c *changes) {
	if hook := r.commitHook.Load(); hook != nil {
		(*hook)(c)
	}
	for _, id := range c.cancelled {
		r.cancelLocal(id)
	}
	for _, id := range c.finished {
		r.signalRun(id)
	}
	if c.held > 0 {
		c.heldBy.preheld.Add(int64(c.held))
		if c.heldBy.draining.Load() {
			// Stop began after addWakeups counted on this runner's slots:
			// its draining claimer will not claim this work.
			r.wakeOthers(context.Background(), slices.Collect(maps.Keys(c.work)))
		}
	}
	if len(c.work) > 0 {
		r.wakeClaimer()
	}
	if c.nextDue != nil {
		r.scheduleWake(*c.nextDue)
	}
}

// addWakeups asks the database to wake other runners for new work, unless
// this runner will claim all of it itself as soon as the transaction
// commits: then a NOTIFY (which PostgreSQL serialises at commit) would only
// wake runners to find nothing. The slots for that work are taken now and
// handed to the claimer at commit, so that two transactions cannot both
// count on the same free slot and leave a task to the next poll.
func (r *Runner) addWakeups(c *changes) {
	svc := r.services()
	for workflow, n := range c.work {
		local := false
		// A stopping runner claims only tasks of the runs its own tasks
		// wait for: others must hear of the rest.
		if svc != nil && !r.claimsPaused.Load() && !svc.draining.Load() {
			if _, err := r.workflow(workflow); err == nil {
				got := svc.reserveSlots(n)
				if local = got == n; local {
					c.held += n
					c.heldBy = svc
				} else {
					svc.releaseSlots(got)
				}
			}
		}
		if !local {
			c.cs.Notify = append(c.cs.Notify, workPayload(workflow))
		}
	}
}

// wakeOthers wakes the other runners for work of the named workflows that
// this runner had counted on claiming itself (see addWakeups) but will not,
// as it is stopping: the NOTIFY its transaction left out, sent on its own.
// Without it the work would wait for another runner's poll.
func (r *Runner) wakeOthers(ctx context.Context, workflows []string) {
	if len(workflows) == 0 {
		return
	}
	slices.Sort(workflows)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := r.withTx(ctx, apiTxAttempts, func(_ context.Context, _ driver.Tx, c *changes) error {
		for _, wf := range workflows {
			c.cs.Notify = append(c.cs.Notify, workPayload(wf))
		}
		return nil
	})
	if err != nil {
		r.logger.Warn("wake other runners for work this stopping runner leaves: they find it by their poll", "workflows", workflows, "error", err)
	}
}

// releaseHeld gives back the slots addWakeups took for a transaction that
// did not commit.
func (c *changes) releaseHeld() {
	if c.held > 0 {
		c.heldBy.releaseSlots(c.held)
		c.held = 0
	}
}

func workPayload(workflow string) string { return "work:" + workflow }
func cancelPayload(id uuid.UUID) string  { return "cancel:" + id.String() }
