package cloacina

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver/postgres"
	"github.com/cloacina-go/cloacina/driver/sqlite"
	"github.com/cloacina-go/cloacina/internal/testdb"
)

// leaseTerm is one row of the lease's terms, as stored.
type leaseTerm struct {
	term   int64
	holder string
}

// leaseTerms reads the terms of the leader lease, newest first.
func leaseTerms(t *testing.T, r *Runner) []leaseTerm {
	t.Helper()
	ctx := testContext(t)
	var terms []leaseTerm
	switch d := r.Driver().(type) {
	case *postgres.Driver:
		rows, err := d.Pool().Query(ctx, "SELECT term, holder FROM "+pgx.Identifier{d.Schema(), "cloacina_lease_terms"}.Sanitize()+
			" WHERE name = $1 ORDER BY term DESC", leaderLease)
		require.NoError(t, err)
		defer rows.Close()
		for rows.Next() {
			var lt leaseTerm
			require.NoError(t, rows.Scan(&lt.term, &lt.holder))
			terms = append(terms, lt)
		}
		require.NoError(t, rows.Err())
	case *sqlite.Driver:
		rows, err := d.DB().QueryContext(ctx, "SELECT term, holder FROM cloacina_lease_terms WHERE name = ? ORDER BY term DESC", leaderLease)
		require.NoError(t, err)
		defer rows.Close()
		for rows.Next() {
			var lt leaseTerm
			require.NoError(t, rows.Scan(&lt.term, &lt.holder))
			terms = append(terms, lt)
		}
		require.NoError(t, rows.Err())
	default:
		t.Fatalf("no lease reader for %T", d)
	}
	return terms
}

// leadershipTimeline records, in order, a runner's heartbeats ("beat")
// and leadership changes ("leader=true", "leader=false").
type leadershipTimeline struct {
	mu      sync.Mutex
	seen    []string
	changes chan bool     // each leadership change
	beats   chan struct{} // each heartbeat, inside its transaction
}

// watchLeadership starts recording r's timeline, replacing its beat and
// leader hooks.
func watchLeadership(r *Runner) *leadershipTimeline {
	tl := &leadershipTimeline{changes: make(chan bool, 16), beats: make(chan struct{}, 64)}
	leadHook := func(leader bool) {
		tl.note(fmt.Sprintf("leader=%v", leader))
		tl.changes <- leader
	}
	r.leaderHook.Store(&leadHook)
	beatHook := func() {
		tl.note("beat")
		select {
		case tl.beats <- struct{}{}:
		default:
		}
	}
	r.beatHook.Store(&beatHook)
	return tl
}

func (tl *leadershipTimeline) note(what string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.seen = append(tl.seen, what)
}

func (tl *leadershipTimeline) all() []string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return slices.Clone(tl.seen)
}

// first is the first entry, "" before any.
func (tl *leadershipTimeline) first() string {
	if all := tl.all(); len(all) > 0 {
		return all[0]
	}
	return ""
}

// countBeats returns a channel that receives a value at each heartbeat
// of r, inside its transaction, once the lease has been renewed.
func countBeats(r *Runner) <-chan struct{} {
	ch := make(chan struct{}, 1024)
	hook := func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	r.beatHook.Store(&hook)
	return ch
}

// A leader that freezes inside its heartbeat transaction (a GC pause, a
// SIGSTOP, a partition with the connection still open) holds the row of
// its lease term, and its runner row, for as long as it is frozen. Once
// its term expires another runner takes the next one and resets the
// frozen leader's tasks; when the leader wakes, its late renewal changes
// nothing, it stops leading, and nothing it does undoes the new leader's
// work. The lease used to be one row that the frozen transaction kept
// locked: nobody could lead, and no dead runner was swept, until
// PostgreSQL ended the session. PostgreSQL only: on SQLite a frozen
// writer stops every writer.
func TestLeadershipMovesFromALeaderFrozenInItsHeartbeat(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := testdb.PostgresSchemaURL(t)
	s := newStall()
	wf := MustWorkflow("z", Task{Name: "work", Run: s.run}, Task{Name: "after", DependsOn: []string{"work"}, Run: ok})
	old := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 1}))
	s.zombies[old.ID()] = true
	oldLeads := leadership(old)
	require.NoError(t, old.Start(ctx))
	waitLeader(t, oldLeads, true)
	next := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
	next.claimsPaused.Store(true)
	nextLeads := leadership(next)
	require.NoError(t, next.Start(ctx))
	resets := onEvent(next, eventOf(EventTaskReset))

	exec, err := old.ExecuteAsync(ctx, wf.Name(), nil)
	require.NoError(t, err)
	waitFor(t, s.started, "the task to start on the leader")

	frozen, thaw := make(chan struct{}), make(chan struct{})
	var freeze, thawOnce sync.Once
	unfreeze := func() { thawOnce.Do(func() { close(thaw) }) }
	t.Cleanup(unfreeze) // before the runner closes
	hook := func() { freeze.Do(func() { close(frozen); <-thaw }) }
	old.beatHook.Store(&hook)
	waitFor(t, frozen, "the leader to freeze inside its heartbeat transaction")

	waitLeader(t, nextLeads, true)
	reset := waitFor(t, resets, "the new leader to reset the frozen leader's task")
	require.Equal(t, next.ID(), reset.WorkerID)
	terms := leaseTerms(t, next)
	// The new leader holds a later term: the next one, or (on a loaded
	// machine, where it can miss its own 300 ms expiry and take the
	// lease again) one after that.
	require.Equal(t, next.ID(), terms[0].holder, "the new leader holds the newest term")
	require.GreaterOrEqual(t, terms[0].term, int64(2), "a term after the frozen leader's")
	setClaiming(next, true)
	res, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
	require.Equal(t, 1, res.Task("work").Recoveries)

	// The old leader wakes: its heartbeat commits late, and it steps down
	// at once, before another heartbeat (in which it could sweep), then
	// finds its claim lost and cancels the task.
	tl := watchLeadership(old)
	unfreeze()
	waitLeader(t, tl.changes, false)
	require.ErrorIs(t, waitFor(t, s.ended, "the old leader's task to be cancelled"), errClaimLost)
	for range 3 {
		waitFor(t, tl.beats, "a heartbeat of the old leader")
	}
	require.False(t, old.IsLeader())
	require.Equal(t, "leader=false", tl.first(), "the old leader stepped down as it woke (then: %v)", tl.all())
	require.True(t, next.IsLeader())
	select {
	case <-nextLeads:
		t.Fatal("the new leader lost the lease to the old one")
	default:
	}
	// With the old transaction over, the new leader collects the old term.
	require.Eventually(t, func() bool { return len(leaseTerms(t, next)) == 1 }, testTimeout, 10*time.Millisecond)
	require.Equal(t, []leaseTerm{{2, next.ID()}}, leaseTerms(t, next))

	after, err := next.Get(ctx, res.ID)
	require.NoError(t, err)
	require.Equal(t, res.Tasks, after.Tasks, "the old leader changed nothing once it woke")
	events, err := next.RunEvents(ctx, res.ID)
	require.NoError(t, err)
	resetCount := 0
	for _, e := range events {
		if resetCount > 0 {
			require.NotEqual(t, old.ID(), e.WorkerID, "the old leader emitted %s after the takeover", e.Type)
		}
		if e.Type == EventTaskReset {
			resetCount++
		}
	}
	require.Equal(t, 1, resetCount)
}

// The same failure seen from outside: a transaction that takes the locks
// of a leader's heartbeat (its runner row and its lease term) and never
// ends, and a leader that heartbeats no more. Another runner takes the
// lease over and resets the dead leader's Running task; the run finishes.
// It used to wait for the lease until the transaction ended.
func TestLeadershipMovesPastALeaseLockedElsewhere(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := testdb.PostgresSchemaURL(t)
	s := newStall()
	wf := MustWorkflow("z", Task{Name: "work", Run: s.run})
	dead := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}, MaxConcurrentTasks: 1}))
	t.Cleanup(func() { close(s.release) }) // before the runner closes: its task returns
	s.zombies[dead.ID()] = true
	deadLeads := leadership(dead)
	require.NoError(t, dead.Start(ctx))
	waitLeader(t, deadLeads, true)
	next := openRunner(t, url, fastLiveness(&Config{Workflows: []*Workflow{wf}}))
	next.claimsPaused.Store(true)
	nextLeads := leadership(next)
	require.NoError(t, next.Start(ctx))
	resets := onEvent(next, eventOf(EventTaskReset))
	exec, err := dead.ExecuteAsync(ctx, wf.Name(), nil)
	require.NoError(t, err)
	waitFor(t, s.started, "the task to start on the leader")

	dead.heartbeatFrozen.Store(true)
	d := dead.Driver().(*postgres.Driver)
	stranded, err := d.Pool().Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = stranded.Rollback(context.WithoutCancel(ctx)) })
	_, err = stranded.Exec(ctx, "UPDATE "+pgx.Identifier{d.Schema(), "cloacina_runners"}.Sanitize()+
		" SET heartbeat_at = heartbeat_at WHERE id = $1", dead.ID())
	require.NoError(t, err)
	tag, err := stranded.Exec(ctx, "UPDATE "+pgx.Identifier{d.Schema(), "cloacina_lease_terms"}.Sanitize()+
		" SET expires_at = expires_at WHERE holder = $1", dead.ID())
	require.NoError(t, err)
	require.Positive(t, tag.RowsAffected(), "the leader's term is locked")

	waitLeader(t, nextLeads, true)
	waitFor(t, resets, "the new leader to reset the dead leader's task")
	setClaiming(next, true)
	res, err := exec.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, PipelineCompleted, res.Status)
	require.Equal(t, 1, res.Task("work").Recoveries)
	require.NoError(t, stranded.Rollback(ctx))
}

// Runners whose clocks disagree agree on the leader all the same: a
// term's expiry is set and judged by the database's clock. A runner whose
// clock ran ahead used to find the leader's lease expired and take it at
// every heartbeat; a leader whose clock ran behind wrote a lease that had
// expired already.
//
// The runners' recording clocks are replaced outright, so no sample of
// the database's clock corrects them: leadership must not lean on that
// correction either (it is missing before the first sample, and off
// while samples are dropped).
func TestLeaseIgnoresRunnerClockSkew(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		behind := openRunner(t, url, fastLiveness(&Config{}))
		behind.now = func() time.Time { return time.Now().UTC().Add(-time.Hour) }
		behindLeads := leadership(behind)
		require.NoError(t, behind.Start(ctx))
		waitLeader(t, behindLeads, true)

		ahead := openRunner(t, url, fastLiveness(&Config{}))
		ahead.now = func() time.Time { return time.Now().UTC().Add(time.Hour) }
		aheadLeads := leadership(ahead)
		beats := countBeats(ahead)
		require.NoError(t, ahead.Start(ctx))
		// Each heartbeat runs the takeover of the one before, if any.
		for range 5 {
			waitFor(t, beats, "a heartbeat of the runner whose clock is ahead")
		}
		require.True(t, behind.IsLeader())
		require.False(t, ahead.IsLeader())
		select {
		case held := <-aheadLeads:
			t.Fatalf("the runner whose clock is ahead changed leadership to %v", held)
		case held := <-behindLeads:
			t.Fatalf("the leader whose clock is behind changed leadership to %v", held)
		default:
		}
	})
}

// A runner that finds the leader lease vacant leads from its start, not
// from its first heartbeat a HeartbeatInterval later.
func TestVacantLeaseTakenAtStart(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		r := openRunner(t, url, &Config{HeartbeatInterval: time.Hour, RunnerTimeout: 3 * time.Hour})
		leads := leadership(r)
		require.NoError(t, r.Start(ctx))
		waitLeader(t, leads, true)
		require.True(t, r.IsLeader())
	})
}

// Runners names the leader, from any runner's point of view, and the
// next one once the lease has moved.
func TestRunnersNameTheLeader(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		first := openRunner(t, url, &Config{HeartbeatInterval: time.Hour, RunnerTimeout: 3 * time.Hour})
		leads := leadership(first)
		require.NoError(t, first.Start(ctx))
		waitLeader(t, leads, true)
		second := openRunner(t, url, &Config{HeartbeatInterval: 20 * time.Millisecond, RunnerTimeout: time.Hour})
		secondLeads := leadership(second)
		require.NoError(t, second.Start(ctx))

		leaders := func(r *Runner) map[string]bool {
			t.Helper()
			infos, err := r.Runners(ctx)
			require.NoError(t, err)
			out := map[string]bool{}
			for _, info := range infos {
				out[info.ID] = info.Leader
			}
			return out
		}
		want := map[string]bool{first.ID(): true, second.ID(): false}
		require.Equal(t, want, leaders(first))
		require.Equal(t, want, leaders(second))
		require.Equal(t, want, leaders(openRunner(t, url, &Config{ReadOnly: true})), "a read-only runner sees it too")

		require.NoError(t, first.Stop(ctx)) // gives the lease up
		waitLeader(t, secondLeads, true)
		require.Equal(t, map[string]bool{second.ID(): true}, leaders(second))
	})
}

// A renewal that commits after the term it renewed ran out steps down at
// once, however little time it took: on PostgreSQL a takeover does not
// wait for a renewal that has not committed, so another runner may hold
// the next term by then. Here the leader renews with 300 ms left and
// commits only once the other runner has taken over; it used to keep
// leading until its next heartbeat (its renewal took less than the 2 s
// RunnerTimeout), and could sweep beside the new leader meanwhile.
// PostgreSQL only: SQLite's takeover waits for the renewal's write lock.
func TestRenewalCommittedAfterItsTermStepsDown(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := testdb.PostgresSchemaURL(t)
	cfg := func() *Config {
		return &Config{HeartbeatInterval: 40 * time.Millisecond, RunnerTimeout: 2 * time.Second}
	}
	old := openRunner(t, url, cfg())
	oldLeads := leadership(old)
	require.NoError(t, old.Start(ctx))
	waitLeader(t, oldLeads, true)
	next := openRunner(t, url, cfg())
	nextLeads := leadership(next)
	require.NoError(t, next.Start(ctx))

	// Stop the leader's heartbeats after one that renewed, then leave its
	// term 300 ms: the next renewal comes late in the term.
	stopped := make(chan struct{})
	var stopOnce sync.Once
	stopHook := func() { stopOnce.Do(func() { old.heartbeatFrozen.Store(true); close(stopped) }) }
	old.beatHook.Store(&stopHook)
	waitFor(t, stopped, "a renewal by the leader")
	d := old.Driver().(*postgres.Driver)
	_, err := d.Pool().Exec(ctx, "UPDATE "+pgx.Identifier{d.Schema(), "cloacina_lease_terms"}.Sanitize()+
		" SET expires_at = clock_timestamp() + interval '300 milliseconds' WHERE name = $1 AND holder = $2", leaderLease, old.ID())
	require.NoError(t, err) // after that beat's commit: it holds the row until then

	held, release := make(chan struct{}), make(chan struct{})
	var heldOnce, releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the runners close
	lateHook := func() { heldOnce.Do(func() { close(held); <-release }) }
	old.beatHook.Store(&lateHook)
	old.heartbeatFrozen.Store(false)
	waitFor(t, held, "the leader's renewal late in its term")
	waitLeader(t, nextLeads, true) // once the old term has run out

	tl := watchLeadership(old)
	unblock()
	waitLeader(t, tl.changes, false)
	require.Equal(t, "leader=false", tl.first(), "the late renewal's own beat stepped down (then: %v)", tl.all())
	require.True(t, next.IsLeader())
	require.Equal(t, next.ID(), leaseTerms(t, next)[0].holder)
}
