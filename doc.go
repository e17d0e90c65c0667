// Package cloacina is an embedded, database-backed workflow engine: DAGs of
// Go functions that survive a crash, on one SQLite file with no setup or on
// PostgreSQL across many processes and machines, with a queryable audit
// log of every state transition.
//
// # Workflows and tasks
//
// A workflow is a named DAG of tasks; a task is a Go function that
// receives a context.Context and the run's [Context]:
//
//	wf, err := cloacina.NewWorkflow("etl",
//		cloacina.Task{Name: "extract", Run: extract},
//		cloacina.Task{Name: "transform", Run: transform, DependsOn: []string{"extract"}},
//		cloacina.Task{Name: "load", Run: load, DependsOn: []string{"transform"},
//			Retry: &cloacina.RetryPolicy{MaxAttempts: 5}, Timeout: time.Minute},
//	)
//
// [NewWorkflow] validates the definition and reports every problem at once
// with its fix: no tasks, a task without name or function, a duplicate
// name, a dependency on a missing task (with the closest existing name,
// for the first 20 such dependencies), a cycle (with its path), a trigger
// rule naming a task that is not upstream (checked once the dependencies
// resolve without a cycle). The workflow's
// [Workflow.Version] is a SHA-256 fingerprint of its name and shape (task
// names, edges, rules, policies, timeouts), recorded on every run.
//
// Runners of two versions of a workflow may share a database, as in a
// rolling deployment. A task runs as the version of the runner that
// claims it (its function, timeout, retry delays and conditions), within
// the attempt budget (MaxAttempts) recorded when its run started; a run
// whose task names differ from the claiming runner's version (a task
// added, removed or renamed) fails with a reason that says so. Give a
// workflow whose tasks change a new name to let runs of both go on.
//
// # Context flow
//
// A run starts with an input [Context] (JSON key/value). A root task
// receives the input; any other task receives the merge of its
// dependencies' outputs in declared dependency order: later dependencies
// win on conflicting keys, and objects merge deeply. A task's output is
// what its Context holds when it returns nil. A dependency that Failed or
// was Skipped passes on the context it received, so data flows through it
// unchanged. The run's final context is the merge of its leaf tasks'
// outputs in declaration order. Values are encoded when they are set, so a
// value that cannot be stored as JSON fails at once, naming its key; read
// them back with the generic [Get]:
//
//	rows, err := cloacina.Get[[]Row](tc, "rows")
//
// Contexts are kept as JSON text, and a run reads back the same bytes on
// SQLite and PostgreSQL: values as they were encoded or written (nested
// keys in their order, 1e2 and 1.50 as written, big integers to the last
// digit), compacted, with sorted keys at the top and in merged objects;
// [Context] gives the rule. [Get] decodes an integral number into an
// integer type however it is written (1e2 as 100).
//
// # Trigger rules
//
// When all of a task's dependencies have ended, its [TriggerRule] decides
// whether it runs. The default runs it only if every dependency Completed
// and otherwise skips it with the reason ("upstream task "x" failed"),
// which cascades. [Always] runs it regardless (clean-up, though not in a
// cancelled run); [All], [Any] and [None] combine conditions on upstream
// outcomes ([TaskSuccess], [TaskFailed], [TaskSkipped]) and on the context
// the task would receive ([ContextValue] with equals, not_equals,
// greater_than, less_than, contains, not_contains, exists, not_exists).
// Conditions may name any upstream task, direct or transitive.
//
// # Retries and timeouts
//
// [RetryPolicy.MaxAttempts] counts every attempt (3 = one try and two
// retries). Delays are fixed, linear or exponential, capped by MaxDelay,
// with optional jitter that never exceeds MaxDelay. Retry conditions
// ([RetryAll], [RetryNever], [RetryTransient], [RetryOnPattern]) combine
// with OR; a task returns [Permanent](err) to skip the remaining retries
// and [Transient](err) to mark a passing failure. A retry puts the task
// back to Ready with a due time; it is claimed no earlier. A timeout
// cancels the attempt's context and fails it with [ErrTaskTimeout], which
// counts as transient. A panic fails the attempt with its stack.
//
// # Runners and databases
//
// A [Runner] executes the workflows it registered against one database:
//
//	runner, err := cloacina.Open(ctx, "sqlite:///var/lib/app/cloacina.db", &cloacina.Config{
//		Workflows: []*cloacina.Workflow{wf},
//	})
//	// or "postgres://user:pass@host:5432/db?schema=tenant_a"
//	err = runner.Start(ctx)
//	defer runner.Close()
//
// Open applies the embedded migrations (see also [Migrate]) and refuses a
// database migrated by a newer Cloacina. [OpenPool] and [OpenDB] open on a
// *pgxpool.Pool or *sql.DB the application already has, which
// [Runner.Close] leaves open; either way, every later call on a closed
// runner that would use the database returns [ErrRunnerClosed] (but the
// calls of the runner's own tasks while Close stops them: see
// [Runner.Close]). Any number of
// runners in any number of processes may share a PostgreSQL database, or a
// SQLite file: PostgreSQL is the coordination engine, there is no broker.
// A runner whose SQLite file is deleted, or replaced (a backup moved into
// its place), while it has it open refuses to write from then on rather
// than write a file no process opening the path sees: open it again (see
// package driver/sqlite).
//
// A dashboard or any tool that must not change the database opens a
// runner with Config.ReadOnly: its queries (Get, List, Events, Runners…)
// see what live runners write; every call that would write returns
// [ErrReadOnly]; nothing is created or migrated. A SQLite file is opened
// read-only, its journal mode left alone and no file created beside it,
// so a file of another user, one on a read-only mount or a backup can be
// read; on PostgreSQL the sessions are read-only and SELECT on the tables
// is all the role needs.
//
// Ready tasks go through a task outbox. A runner claims outbox rows in one
// transaction (FOR UPDATE SKIP LOCKED on PostgreSQL; a write transaction
// begun IMMEDIATE on SQLite), which flips the tasks to Running under its
// id and attempt; it only claims tasks of workflows it registered
// (Config.Workflows, or [Runner.Register] before or after Start). Every
// later write for a claimed task is fenced on that claim: a runner that
// lost it changes nothing and emits nothing. Results are recorded in
// batches; the readiness of downstream tasks and the end of the run are
// decided inside the same transaction, under the run's row lock. Idle
// runners are woken by NOTIFY (PostgreSQL, sent in the enqueuing
// transaction) or in-process (SQLite), and poll every Config.PollInterval
// for anything else.
//
// A started runner with free slots skips the outbox for work it makes
// ready itself: the first tasks of the runs it starts and the successors
// of the tasks it completes are claimed by it in the transaction that made
// them ready (task_marked_ready, task_claimed and task_started together),
// so a chain's next step waits for no claim transaction and no wake-up.
// What does not fit in its free slots goes to the outbox for any runner; a
// runner that is not started (one that only submits work) claims nothing.
//
// # Executing
//
// [Runner.Execute] starts a run and blocks until it is Completed, Failed or
// Cancelled; a failed run is a result ([ExecutionResult.Err]), not an error
// of Execute. [Runner.ExecuteAsync] returns an [Execution] handle with
// Wait, Status and Cancel. [Runner.ExecuteTx] starts a run inside the
// application's own transaction (pgx.Tx or *sql.Tx) on the runner's
// database: the run exists only if it commits; a transaction on another
// database or file is refused ([ErrWrongDatabase]). [Runner.Get] and [Runner.List] read runs from any process;
// [Runner.GetTask] reads one task with the context it received and the
// one it produced. [Runner.Backlog] tells, per workflow, how many tasks
// wait to be claimed and since when, how many run, and how many runs are
// unfinished: whether the runners keep up; [Runner.Runners] lists them.
//
// A run is Pending until its first task is claimed, then Running (a run
// started by a started runner with a free slot is Running at once; one
// paused as its first task was claimed stays Paused, with its start
// recorded, until Resume).
// [Runner.Cancel] removes its queued tasks (marked Skipped), makes it
// Cancelled at once and cancels the contexts of its running tasks wherever
// they run; their outcome is still recorded when they return.
// [Runner.Pause] takes its queued tasks out of the outbox (they stay Ready;
// running tasks finish) and [Runner.Resume] puts them back.
//
// A task may run a sub-workflow: it calls [Runner.Execute] (or
// [Runner.ExecuteAsync] and [Execution.Wait]) with its own context. A
// runner executes at most Config.MaxConcurrentTasks tasks at once, each
// holding a slot; a task waiting for a child run gives its slot back until
// the child ends and takes one again before it goes on, as [DeferUntil]
// does, so parents that wait cannot take every slot from their children.
// The wait shows as the task's "deferred" sub-status and as task_deferred
// and task_resumed events.
//
// Runs started that way form a tree: the child records the run and task
// that started it ([ExecutionResult.ParentRunID] and ParentTaskID, also in
// [RunSummary]), and [ListOpts.ParentRunID] lists the children of a run.
// Cancelling a run cancels its unfinished descendants in the same
// transaction (their reason names the cancelled parent), and a task of a
// cancelled run can start no more children. Pause and Resume act on the
// one run they name: its children go on.
//
// # Schedules
//
// A [Schedule] in Config.Schedules starts a run of a workflow at every
// tick of a cron specification ("0 6 * * *", six fields with seconds, or
// "@every 10m") in a time zone of its own, daylight saving time included:
//
//	Schedules: []cloacina.Schedule{{Name: "nightly", Workflow: "etl", Cron: "0 3 * * *", Location: paris}},
//
// The definition is in the code; the schedule's state is in the database,
// so any number of runners, in any number of processes, may declare the
// same schedule, and each tick fires once: one transaction creates the
// tick's run, records the tick (which the database refuses twice) and
// moves the schedule on. Ticks that pass while no runner runs fire when
// one starts again, by the schedule's [CatchUp] policy (the latest only,
// or every one) unless older than its MaxLateness. A run knows its tick
// ([ScheduledAt]). [Runner.Schedules] and [Runner.ScheduleTicks] read
// them from any process, [Runner.PauseSchedule] and
// [Runner.ResumeSchedule] hold and release one for every runner, and
// [Runner.DeleteSchedule] removes one.
//
// # Execution events
//
// Every transition appends an [Event] in the same transaction: run
// started/completed/failed/cancelled/paused/resumed, and per task created,
// marked ready, claimed, started, completed, failed, retry scheduled,
// skipped, reset, abandoned. A retried failure is one transition (Running →
// Ready) and emits task_retry_scheduled with the error, the attempt and the
// due time; a final failure emits task_failed. Each event records the
// runner that caused it and a sequence number that strictly increases
// across the database. Query them with [Runner.Events] (by run, task,
// types, creation time, newest first and page by page back with
// [EventQuery.BeforeSeq], or following the log without gaps from
// [EventQuery.Follow] on), [Runner.RunEvents], [Runner.TaskEvents],
// [Runner.RecentEvents]; stream them as they commit with
// [Runner.StreamEvents], an iterator that polls the log, resumes from a
// saved sequence number and rides out lost connections; and count or
// delete old ones in batches with [Runner.CountEventsBefore] and
// [Runner.DeleteEventsBefore]. Retention keeps every event of a run that
// is Pending, Running or Paused (or Cancelled with a task that has not
// returned), however old, and deletes the old events
// of finished runs; [DeleteEventsOpts.IncludeUnfinishedRuns] deletes by
// age alone. [Replay] rebuilds every status from the events alone.
//
// Runs have a retention of their own: [Runner.DeleteRunsBefore] deletes
// the runs that finished before a cutoff, with their tasks and contexts,
// in batches ([Runner.CountRunsBefore] counts them first). Their events
// stay, for the event log's retention, which counts them as those of
// finished runs, and still name their tasks: each task's name is copied
// into its run's events as the task is deleted. Space freed by either
// retention is reused by later writes; on SQLite the file does not shrink
// (VACUUM it, with no runner writing, to give the space back). Take either
// cutoff from [Runner.Now], the database's time, which recorded the times
// it is compared with: a host whose clock is ahead would otherwise delete
// too much.
//
// # Crash safety and scale-out
//
// A started runner registers a row and heartbeats it (one write per
// Config.HeartbeatInterval, however many tasks it runs), renewing a lease
// that makes one runner at a time the leader. The lease runs in terms of
// Config.RunnerTimeout, set and judged by the database's clock, so runners
// whose clocks disagree still agree on the leader. Once a term expires,
// another runner takes the next one, even from a leader frozen in the
// middle of its heartbeat (a long GC pause, a stopped process, a network
// partition that leaves its transaction open); the old leader finds out at
// its next heartbeat and stops leading, and what it did meanwhile is fenced
// like every reset, so it cannot undo the new leader's work. The leader
// removes runners whose heartbeat is older than Config.RunnerTimeout and
// resets their Running tasks to Ready for others (task_reset, recovery
// count + 1), or abandons a task past Config.MaxRecoveries (task_abandoned,
// Failed, then trigger rules and the run's end as usual). A leader that
// does not run the task's workflow cannot decide what follows, so it resets
// the task instead, and the next runner that claims it abandons it rather
// than run it again. Heartbeats, like
// the lease, are stamped and judged by the database's clock, so a runner
// whose clock is off is neither declared dead while it heartbeats nor kept
// alive once it stops. The times a runner records — a retry's due time and
// a ready task's, the time a claim compares them with, events' created_at,
// the start and end of tasks and runs — follow the database's clock too: a
// runner estimates its offset from that clock from statements it makes
// anyway (its registration and each heartbeat return the database's time;
// the offset is the difference from the midpoint of the round trip) and
// records by its own clock plus that offset, so a retry is due its backoff
// after it was scheduled for every runner, whatever their clocks say, and
// events of different runners sort by time as they happened. A sample
// changes the offset only when it proves the offset wrong (the offset lies
// outside the sample's uncertainty, half its round trip), so jitter never
// makes recorded times step back and forth; a step of a machine's clock is
// noticed against the monotonic clock and corrected before the runner
// next writes, or reads what is due (its claimer's poll, its schedules);
// and samples with a round trip over a second are ignored, so that the
// estimate is off by at most half a second (plus what the clocks drift
// between heartbeats). A runner that writes without being started (a process that only calls Execute, say) reads the
// database's clock before its first write, and at most once a minute while
// it goes on writing (on SQLite, whose clock is the host's, that read
// costs no statement). The leader does not sweep until it has itself been
// healthy for one RunnerTimeout, so a restart or a database outage does not
// take work from runners that are alive; nor for one RunnerTimeout after
// its heartbeat finds the database's clock stepped ahead against its
// monotonic clock (NTP on the database's server, or on the SQLite host),
// which makes every heartbeat stamped before the step look older than it
// is. A runner with a fixed
// Config.RunnerID (a pod name, say) that crashed and comes back under the
// same id resets what it left Running when it starts, before it claims
// anything, instead of waiting for the timeout. A runner that lost a claim
// (it was too slow to heartbeat and its task was reset) learns it at its
// next heartbeat or fenced write: the task's context is cancelled and
// nothing it reports is recorded. Transient database errors (SQLite busy,
// serialization failures, deadlocks, lost connections, a server restart, a
// statement timeout, a full disk, a write refused by a read-only session
// such as a standby's after a failover, which is closed rather than
// reused) are retried on every state write. A
// task's result is never dropped: one the database refuses for another
// reason (a revoked privilege, say) is held and written again, with a
// growing delay, until it is taken or the runner stops; only a value the
// database cannot store at all fails the attempt with the reason. Names
// that PostgreSQL could not store (a NUL character, say) and context values
// that it could not store or its JSON functions could not read (text that
// is not UTF-8, a \u0000 escape, a number numeric cannot hold) are refused
// when they are set, on both backends, so a
// workflow behaves the same on SQLite and PostgreSQL. [Runner.Stop] lets
// running tasks finish (heartbeating meanwhile, and running the child runs
// they wait for), hands back those still running at its deadline, and
// removes the runner's row; results the database still refuses 10 s
// after the last task returned or was handed back are given up (their
// tasks run again once their claims are recovered), and Stop's error
// says how many. Execution is at-least-once: a task whose runner
// died mid-way runs again elsewhere, so make task bodies idempotent (use
// [TaskInfoFrom] for the run and task ids and the attempt; a later attempt
// of a task that started a child run can find it and wait for it with
// [Runner.Execution] rather than start another). A runner that
// is alive but stalls past its RunnerTimeout is declared dead too: it
// reads its claim before it begins a task it claimed before the stall,
// and does not begin one that was taken from it; a task it had begun is
// cancelled at its next heartbeat, and its completion changes nothing.
// A task whose run was cancelled before it began is not called. [DeferUntil]
// lets a task wait on an outside condition, and [Runner.Execute] on a
// child run, without holding a concurrency slot.
//
// # Tenants
//
// On PostgreSQL a tenant is a schema owned by a login role of its own;
// on SQLite it is a database file of its own. An administrator creates a
// PostgreSQL tenant with [CreateTenant] (or `cloacina tenant create`),
// which returns the URL its runners open:
//
//	tenant, err := cloacina.CreateTenant(ctx, adminURL, "acme", nil)
//	runner, err := cloacina.Open(ctx, tenant.URL, cfg) // …?schema=acme, as role acme
//
// Every statement names the tenant's schema; nothing depends on
// search_path, so a runner can never fall back to public, and the
// database, not Cloacina, keeps tenants apart: a tenant's role can use its
// own schema and nothing of other tenants'. A runner whose role cannot use
// the schema it is given fails to open with [ErrSchemaAccess]. Wake-ups
// go out on a channel per schema whose name is drawn at random and kept in
// the schema, so no other tenant's role can hear them or send false ones
// (PostgreSQL's channels themselves are open to every role). Runners for any number of tenants can
// run side by side in one process. [ListTenants] and [DropTenant] complete
// the set. Behind a transaction-pooling pooler such as PgBouncer, add
// default_query_exec_mode=exec to the URL (see package driver/postgres).
//
// # Testing
//
// Package [github.com/cloacina-go/cloacina/cloacinatest] tests an
// application's workflows against the real engine: a started runner on a
// SQLite file, or a PostgreSQL schema, of the test's own, stopped and
// removed when the test ends, and RunTask, which runs one task function
// alone, as a runner runs it, and returns its output, the error it
// returned and its events.
package cloacina
