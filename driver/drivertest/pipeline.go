package drivertest

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

// roundTripJSON exercises what a context may hold: nesting, unicode,
// escapes, numbers that do not fit a float64, decimals with trailing
// zeros, exponents, every JSON type, and the text a database could
// normalise: nested keys out of order, a duplicate key, spacing, escapes
// of characters that need none. It must read back byte for byte.
const roundTripJSON = `{"s":"héllo \"wörld\"\n\t✓ \u00e9\/<&> \ud83d\ude00","big":12345678901234567890,"neg":-42,"dec":1.50,` +
	`"exp":1e2,"EXP":-1.50E+2,"zero":-0,"t":true,"f":false,"nil":null,"arr":[1, "two",{"three":[3]}],` +
	`"obj":{"nested":{"zz":1,"deep":"x","a":2},"dup":1,"dup":2} ,"empty":{}}`

// roundTripTime has nanoseconds and a zone: backends store microseconds
// (truncating) and return UTC.
var roundTripTime = time.Date(2024, 2, 29, 23, 59, 58, 123456789, time.FixedZone("UTC+5", 5*3600))

func truncated(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func testPipelineInsert(t *testing.T, s *suite) {
	t.Run("IdempotentOnExistingID", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := b.insertPipeline(t)
		again := *p
		again.WorkflowName, again.Status, again.Input, again.Now = "other", driver.PipelineRunning, json.RawMessage(`{"x":2}`), b.at(time.Hour)
		b.inTx(t, func(tx driver.Tx) {
			ok, err := insertOne(b.ctx, tx, &again)
			require.NoError(t, err)
			require.False(t, ok, "inserting an existing id reports false")
			ok, err = insertOne(b.ctx, tx, &again)
			require.NoError(t, err)
			require.False(t, ok)
		})
		got := b.getPipeline(t, p.ID)
		require.Equal(t, "wf", got.WorkflowName, "the existing row is left as it was")
		require.Equal(t, driver.PipelinePending, got.Status)
		requireJSON(t, `{"run":1}`, got.Input)
		requireTime(t, b.now, got.CreatedAt)
	})

	t.Run("SameTransactionTwice", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
			Status: driver.PipelinePending, Input: json.RawMessage(`{}`), Now: b.now}
		b.inTx(t, func(tx driver.Tx) {
			ok, err := insertOne(b.ctx, tx, p)
			require.NoError(t, err)
			require.True(t, ok)
			ok, err = insertOne(b.ctx, tx, p)
			require.NoError(t, err)
			require.False(t, ok)
		})
	})
}

// insertOne inserts one pipeline and reports whether it was new.
func insertOne(ctx context.Context, exec driver.Executor, p *driver.PipelineInsertParams) (bool, error) {
	ids, err := exec.PipelineInsertMany(ctx, []*driver.PipelineInsertParams{p})
	if err != nil {
		return false, err
	}
	return slices.Contains(ids, p.ID), nil
}

func testPipelineInsertMany(t *testing.T, s *suite) {
	t.Run("ReturnsTheNewIDs", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		existing := b.insertPipeline(t)
		params := func(id uuid.UUID, input string) *driver.PipelineInsertParams {
			return &driver.PipelineInsertParams{ID: id, WorkflowName: "many", WorkflowVersion: "v2",
				Status: driver.PipelinePending, Input: json.RawMessage(input), Now: b.at(time.Minute)}
		}
		a, c := uuid.New(), uuid.New()
		b.inTx(t, func(tx driver.Tx) {
			ids, err := tx.PipelineInsertMany(b.ctx, []*driver.PipelineInsertParams{
				params(a, `{"n":1}`), params(existing.ID, `{"n":2}`), params(c, `{"n":3}`), params(a, `{"n":4}`)})
			require.NoError(t, err)
			require.ElementsMatch(t, []uuid.UUID{a, c}, ids, "new ids once each; the existing one is not reported")
			none, err := tx.PipelineInsertMany(b.ctx, nil)
			require.NoError(t, err)
			require.Empty(t, none)
		})
		got := b.getPipeline(t, a)
		require.Equal(t, "many", got.WorkflowName)
		require.Equal(t, "v2", got.WorkflowVersion)
		require.Equal(t, driver.PipelinePending, got.Status)
		requireJSON(t, `{"n":1}`, got.Input)
		requireTime(t, b.at(time.Minute), got.CreatedAt)
		requireJSON(t, `{"n":3}`, b.getPipeline(t, c).Input)
		old := b.getPipeline(t, existing.ID)
		require.Equal(t, "wf", old.WorkflowName, "the existing row is left as it was")
		requireJSON(t, `{"run":1}`, old.Input)
	})
}

func testPipelineGet(t *testing.T, s *suite) {
	t.Run("NotFound", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p, err := b.drv.Reader().PipelineGet(b.ctx, uuid.New())
		require.ErrorIs(t, err, driver.ErrNotFound)
		require.Nil(t, p)
		b.inTx(t, func(tx driver.Tx) {
			_, err := tx.PipelineGet(b.ctx, uuid.New())
			require.ErrorIs(t, err, driver.ErrNotFound)
		})
	})

	t.Run("RoundTrip", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		p := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf-ü", WorkflowVersion: "sha256:abc",
			Status: driver.PipelinePending, Input: json.RawMessage(roundTripJSON), Now: roundTripTime}
		b.inTx(t, func(tx driver.Tx) {
			ok, err := insertOne(b.ctx, tx, p)
			require.NoError(t, err)
			require.True(t, ok)
		})
		got := b.getPipeline(t, p.ID)
		require.Equal(t, p.ID, got.ID)
		require.Equal(t, "wf-ü", got.WorkflowName)
		require.Equal(t, "sha256:abc", got.WorkflowVersion)
		require.Equal(t, driver.PipelinePending, got.Status)
		requireJSON(t, roundTripJSON, got.Input)
		require.Nil(t, got.Output, "no output until the run ends")
		require.Empty(t, got.Error)
		requireTime(t, truncated(roundTripTime), got.CreatedAt)
		requireTime(t, truncated(roundTripTime), got.UpdatedAt)
		require.Nil(t, got.StartedAt)
		require.Nil(t, got.CompletedAt)
	})
}

func testPipelineList(t *testing.T, s *suite) {
	// fixture: five runs, two sharing a creation time, newest first:
	// tie[0], tie[1] (by id, descending), p3, p2, p1.
	type fixture struct {
		b                  *bundle
		p1, p2, p3, t1, t2 uuid.UUID
		all                []uuid.UUID // newest first
	}
	setup := func(t *testing.T) *fixture {
		b := s.setup(t)
		f := &fixture{b: b}
		f.p1 = b.insertPipeline(t, createdAt(b.at(1*time.Second)), withWorkflow("a")).ID
		f.p2 = b.insertPipeline(t, createdAt(b.at(2*time.Second)), withWorkflow("b"), withStatus(driver.PipelineRunning)).ID
		f.p3 = b.insertPipeline(t, createdAt(b.at(3*time.Second)), withWorkflow("a"), withStatus(driver.PipelineCompleted)).ID
		f.t1 = b.insertPipeline(t, createdAt(b.at(4*time.Second)), withWorkflow("a")).ID
		f.t2 = b.insertPipeline(t, createdAt(b.at(4*time.Second)), withWorkflow("b"), withStatus(driver.PipelineFailed)).ID
		ties := []uuid.UUID{f.t1, f.t2}
		slices.SortFunc(ties, func(x, y uuid.UUID) int { return -bytes.Compare(x[:], y[:]) })
		f.all = append(ties, f.p3, f.p2, f.p1)
		return f
	}
	list := func(t *testing.T, b *bundle, params *driver.PipelineListParams) []uuid.UUID {
		t.Helper()
		ps, err := b.drv.Reader().PipelineList(b.ctx, params)
		require.NoError(t, err)
		return pipelineIDs(ps)
	}

	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		require.Empty(t, list(t, b, &driver.PipelineListParams{}))
	})

	t.Run("CreatedRange", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		since, until := f.b.at(2*time.Second), f.b.at(4*time.Second)
		require.Equal(t, []uuid.UUID{f.p3, f.p2}, list(t, f.b, &driver.PipelineListParams{CreatedSince: &since, CreatedUntil: &until}),
			"since is inclusive, until exclusive")
		require.Equal(t, f.all[:4], list(t, f.b, &driver.PipelineListParams{CreatedSince: &since}))
		require.Equal(t, []uuid.UUID{f.p3}, list(t, f.b, &driver.PipelineListParams{CreatedSince: &since, CreatedUntil: &until, WorkflowName: "a"}))
		require.Equal(t, []uuid.UUID{f.p2}, list(t, f.b, &driver.PipelineListParams{CreatedSince: &since,
			Statuses: []driver.PipelineStatus{driver.PipelineRunning}}))
		// Paging inside the range.
		first := list(t, f.b, &driver.PipelineListParams{CreatedSince: &since, Limit: 3})
		require.Equal(t, f.all[:3], first)
		last := f.b.getPipeline(t, first[2])
		require.Equal(t, []uuid.UUID{f.p2}, list(t, f.b, &driver.PipelineListParams{CreatedSince: &since,
			CreatedBefore: &last.CreatedAt, BeforeID: last.ID}))
	})

	t.Run("NewestFirst", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		require.Equal(t, f.all, list(t, f.b, &driver.PipelineListParams{}),
			"ordered by creation time descending, then id descending")
	})

	t.Run("Filters", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		require.Equal(t, []uuid.UUID{f.p3, f.p1}, list(t, f.b, &driver.PipelineListParams{IDs: []uuid.UUID{f.p1, f.p3, uuid.New()}}))
		require.Equal(t, []uuid.UUID{f.p3, f.p2}, list(t, f.b, &driver.PipelineListParams{
			Statuses: []driver.PipelineStatus{driver.PipelineRunning, driver.PipelineCompleted}}))
		require.Equal(t, []uuid.UUID{f.t1, f.p3, f.p1}, list(t, f.b, &driver.PipelineListParams{WorkflowName: "a"}))
		require.Empty(t, list(t, f.b, &driver.PipelineListParams{WorkflowName: "nope"}))
		// Filters combine with AND.
		require.Equal(t, []uuid.UUID{f.t1, f.p1}, list(t, f.b, &driver.PipelineListParams{
			WorkflowName: "a", Statuses: []driver.PipelineStatus{driver.PipelinePending}}))
		require.Equal(t, []uuid.UUID{f.p1}, list(t, f.b, &driver.PipelineListParams{
			WorkflowName: "a", Statuses: []driver.PipelineStatus{driver.PipelinePending}, IDs: []uuid.UUID{f.p1, f.p2}}))
	})

	t.Run("Limit", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		require.Equal(t, f.all[:3], list(t, f.b, &driver.PipelineListParams{Limit: 3}))
		require.Equal(t, f.all, list(t, f.b, &driver.PipelineListParams{Limit: 100}))
	})

	t.Run("Paging", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		for _, size := range []int{1, 2, 3} {
			var got []uuid.UUID
			params := &driver.PipelineListParams{Limit: size}
			for range 10 {
				ps, err := f.b.drv.Reader().PipelineList(f.b.ctx, params)
				require.NoError(t, err)
				if len(ps) == 0 {
					break
				}
				got = append(got, pipelineIDs(ps)...)
				last := ps[len(ps)-1]
				params = &driver.PipelineListParams{Limit: size, CreatedBefore: &last.CreatedAt, BeforeID: last.ID}
			}
			require.Equal(t, f.all, got, "pages of %d, cutting through a creation-time tie", size)
		}
		// Without BeforeID, the cut is strictly before CreatedBefore.
		cut := f.b.at(4 * time.Second)
		require.Equal(t, []uuid.UUID{f.p3, f.p2, f.p1}, list(t, f.b, &driver.PipelineListParams{CreatedBefore: &cut}))
		// Paging combines with filters.
		p3 := f.b.getPipeline(t, f.p3)
		require.Equal(t, []uuid.UUID{f.p1}, list(t, f.b, &driver.PipelineListParams{
			WorkflowName: "a", CreatedBefore: &p3.CreatedAt, BeforeID: p3.ID}))
	})
}

func testPipelineLock(t *testing.T, s *suite) {
	t.Run("ReturnsInIDOrder", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		var want []uuid.UUID
		for range 5 {
			want = append(want, b.insertPipeline(t).ID)
		}
		slices.SortFunc(want, func(x, y uuid.UUID) int { return bytes.Compare(x[:], y[:]) })
		asked := append([]uuid.UUID{uuid.New()}, want...)
		slices.Reverse(asked)
		b.inTx(t, func(tx driver.Tx) {
			ps, err := tx.PipelineLock(b.ctx, asked)
			require.NoError(t, err)
			require.Equal(t, want, pipelineIDs(ps), "locked in id order; unknown ids are left out")
			require.Equal(t, driver.PipelinePending, ps[0].Status)
			requireJSON(t, `{"run":1}`, ps[0].Input)

			ps, err = tx.PipelineLock(b.ctx, nil)
			require.NoError(t, err)
			require.Empty(t, ps)
		})
	})

	// A second locker waits for the first and then sees its committed
	// decision, never the state from before it.
	t.Run("SecondLockerSeesCommittedState", func(t *testing.T) {
		t.Parallel()
		if !s.opts.ConcurrentTx {
			t.Skip("write transactions of this backend are serialised: a lock is never contended")
		}
		b := s.setup(t)
		p := b.insertPipeline(t)
		tx1, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		defer tx1.Rollback(context.WithoutCancel(b.ctx))
		_, err = tx1.PipelineLock(b.ctx, []uuid.UUID{p.ID})
		require.NoError(t, err)

		type result struct {
			ps  []*driver.Pipeline
			err error
		}
		done := make(chan result, 1)
		go func() {
			tx2, err := b.drv.Begin(b.ctx)
			if err != nil {
				done <- result{err: err}
				return
			}
			defer tx2.Rollback(context.WithoutCancel(b.ctx))
			ps, err := tx2.PipelineLock(b.ctx, []uuid.UUID{p.ID})
			done <- result{ps, err}
		}()
		require.NoError(t, tx1.ChangeSetApply(b.ctx, &driver.ChangeSet{Pipelines: []driver.PipelineUpdate{
			{ID: p.ID, FromStatus: driver.PipelinePending, Status: driver.PipelinePaused, Now: b.now}}}))
		require.NoError(t, tx1.Commit(b.ctx))
		res := <-done
		require.NoError(t, res.err)
		require.Len(t, res.ps, 1)
		require.Equal(t, driver.PipelinePaused, res.ps[0].Status)
	})
}

// testPipelineLockNoWait pins that PipelineLockNoWait locks like
// PipelineLock when nothing holds the runs, and fails at once, with a
// transient error, when another transaction holds one.
func testPipelineLockNoWait(t *testing.T, s *suite) {
	b := s.setup(t)
	p, q := b.insertPipeline(t), b.insertPipeline(t)
	b.inTx(t, func(tx driver.Tx) {
		ps, err := tx.PipelineLockNoWait(b.ctx, []uuid.UUID{q.ID, p.ID})
		require.NoError(t, err)
		require.Len(t, ps, 2)
	})
	if !s.opts.ConcurrentTx {
		t.Skip("write transactions of this backend are serialised: a lock is never contended")
	}
	holder, err := b.drv.Begin(b.ctx)
	require.NoError(t, err)
	defer holder.Rollback(context.WithoutCancel(b.ctx))
	_, err = holder.PipelineLock(b.ctx, []uuid.UUID{p.ID})
	require.NoError(t, err)
	tx, err := b.drv.Begin(b.ctx)
	require.NoError(t, err)
	defer tx.Rollback(context.WithoutCancel(b.ctx))
	_, err = tx.PipelineLockNoWait(b.ctx, []uuid.UUID{p.ID, q.ID})
	require.ErrorIs(t, err, driver.ErrTransient, "held by another transaction: refused at once")
}

// testPipelineStart pins how a claim starts runs: the first claim of a
// Pending run makes it Running.
func testPipelineStart(t *testing.T, s *suite) {
	t.Run("OnlyPending", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		runs := map[uuid.UUID]*driver.PipelineInsertParams{}
		add := func(p *driver.PipelineInsertParams) uuid.UUID { runs[p.ID] = p; return p.ID }
		pending1 := add(b.insertPipeline(t))
		pending2 := add(b.insertPipeline(t))
		running := add(b.insertPipeline(t, withStatus(driver.PipelineRunning)))
		paused := add(b.insertPipeline(t, withStatus(driver.PipelinePaused)))
		var tasks []driver.TaskInsert
		for i, id := range []uuid.UUID{pending1, pending1, running, paused, pending2} {
			tasks = append(tasks, b.readyTask(runs[id], i))
		}
		// Due well before the claim, which happens at a time with
		// sub-microsecond digits and an offset, to check how it is stored.
		b.enqueue(t, roundTripTime.Add(-time.Hour), tasks...)
		start := roundTripTime
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.TaskClaim(b.ctx, &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{"wf"}, Limit: 10, Now: start})
			require.NoError(t, err)
			require.Len(t, res.Tasks, 5)
			require.ElementsMatch(t, []uuid.UUID{pending1, pending2}, res.Started, "each started run once")
			require.Empty(t, res.Unstarted, "every Pending run was started; Running and Paused ones are not to start")
		})
		p := b.getPipeline(t, pending1)
		require.Equal(t, driver.PipelineRunning, p.Status)
		requireTimePtr(t, truncated(start), p.StartedAt)
		requireTime(t, truncated(start), p.UpdatedAt)
		requireTime(t, b.now, p.CreatedAt)
		p = b.getPipeline(t, running)
		require.Equal(t, driver.PipelineRunning, p.Status)
		requireTimePtr(t, b.now, p.StartedAt, "a run created Running started when it was created")
		p = b.getPipeline(t, paused)
		require.Equal(t, driver.PipelinePaused, p.Status)
		require.Nil(t, p.StartedAt)

		// A later claim of a started run does not start it again.
		b.enqueue(t, roundTripTime.Add(-time.Hour), b.readyTask(runs[pending1], 9))
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.TaskClaim(b.ctx, &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{"wf"}, Limit: 10, Now: start})
			require.NoError(t, err)
			require.Len(t, res.Tasks, 1)
			require.Empty(t, res.Started)
			require.Empty(t, res.Unstarted)
		})
	})

	t.Run("SkipsLockedInsteadOfWaiting", func(t *testing.T) {
		t.Parallel()
		if !s.opts.ConcurrentTx {
			t.Skip("write transactions of this backend are serialised: a pipeline is never locked by another open transaction")
		}
		b := s.setup(t)
		lockedRun, freeRun := b.insertPipeline(t), b.insertPipeline(t)
		locked, free := lockedRun.ID, freeRun.ID
		b.enqueue(t, b.now, b.readyTask(lockedRun, 0), b.readyTask(freeRun, 1))
		tx1, err := b.drv.Begin(b.ctx)
		require.NoError(t, err)
		defer tx1.Rollback(context.WithoutCancel(b.ctx))
		_, err = tx1.PipelineLock(b.ctx, []uuid.UUID{locked})
		require.NoError(t, err)

		// Waiting on the lock would run into this deadline.
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		defer cancel()
		tx2, err := b.drv.Begin(ctx)
		require.NoError(t, err)
		defer tx2.Rollback(context.WithoutCancel(b.ctx))
		res, err := tx2.TaskClaim(ctx, &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{"wf"}, Limit: 10, Now: b.now})
		require.NoError(t, err)
		require.Len(t, res.Tasks, 2, "the tasks are claimed all the same")
		require.Equal(t, []uuid.UUID{free}, res.Started)
		require.Equal(t, []uuid.UUID{locked}, res.Unstarted, "the caller learns which Pending run it could not start")
		require.NoError(t, tx2.Commit(ctx))
		require.NoError(t, tx1.Rollback(b.ctx))
		require.Equal(t, driver.PipelinePending, b.getPipeline(t, locked).Status)

		b.enqueue(t, b.now, b.readyTask(lockedRun, 2))
		b.inTx(t, func(tx driver.Tx) {
			res, err := tx.TaskClaim(b.ctx, &driver.TaskClaimParams{RunnerID: "r", Workflows: []string{"wf"}, Limit: 10, Now: b.now})
			require.NoError(t, err)
			require.Equal(t, []uuid.UUID{locked}, res.Started, "once unlocked, the skipped run starts with its next claim")
		})
	})
}

// A run started from inside a task records the run and task that started
// it. Every way of creating a run keeps the link, every read returns it,
// and a listing finds the children of runs.
func testPipelineParent(t *testing.T, s *suite) {
	requireParent := func(t *testing.T, p *driver.Pipeline, run, task uuid.UUID) {
		t.Helper()
		require.NotNil(t, p.ParentPipelineID, "run %s has a parent", p.ID)
		require.NotNil(t, p.ParentTaskID, "run %s has a parent task", p.ID)
		require.Equal(t, run, *p.ParentPipelineID)
		require.Equal(t, task, *p.ParentTaskID)
	}

	t.Run("RoundTrip", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		root := b.insertPipeline(t)
		task := uuid.New()
		many := b.insertPipeline(t, withParent(root.ID, task))
		// A fresh start writes its runs through the change set.
		fresh := &driver.PipelineInsertParams{ID: uuid.New(), WorkflowName: "wf", WorkflowVersion: "v1",
			Status: driver.PipelineRunning, Input: json.RawMessage(`{}`), Now: b.now, ParentPipelineID: &many.ID, ParentTaskID: &task}
		b.apply(t, &driver.ChangeSet{NewPipelines: []*driver.PipelineInsertParams{fresh}})

		got := b.getPipeline(t, root.ID)
		require.Nil(t, got.ParentPipelineID, "a run started outside a task has no parent")
		require.Nil(t, got.ParentTaskID)
		requireParent(t, b.getPipeline(t, many.ID), root.ID, task)
		requireParent(t, b.getPipeline(t, fresh.ID), many.ID, task)

		ps, err := b.drv.Reader().PipelineList(b.ctx, &driver.PipelineListParams{IDs: []uuid.UUID{root.ID, many.ID, fresh.ID}})
		require.NoError(t, err)
		byID := map[uuid.UUID]*driver.Pipeline{}
		for _, p := range ps {
			byID[p.ID] = p
		}
		require.Len(t, byID, 3)
		require.Nil(t, byID[root.ID].ParentPipelineID)
		requireParent(t, byID[many.ID], root.ID, task)
		requireParent(t, byID[fresh.ID], many.ID, task)

		b.inTx(t, func(tx driver.Tx) {
			ps, err := tx.PipelineLock(b.ctx, []uuid.UUID{fresh.ID, root.ID})
			require.NoError(t, err)
			require.Len(t, ps, 2)
			for _, p := range ps {
				if p.ID == root.ID {
					require.Nil(t, p.ParentPipelineID)
					require.Nil(t, p.ParentTaskID)
				} else {
					requireParent(t, p, many.ID, task)
				}
			}
		})
	})

	t.Run("ListChildren", func(t *testing.T) {
		t.Parallel()
		b := s.setup(t)
		a, c := b.insertPipeline(t).ID, b.insertPipeline(t).ID
		ta, tc := uuid.New(), uuid.New()
		a1 := b.insertPipeline(t, withParent(a, ta), createdAt(b.at(1*time.Second))).ID
		a2 := b.insertPipeline(t, withParent(a, ta), createdAt(b.at(2*time.Second)), withStatus(driver.PipelineCompleted)).ID
		a3 := b.insertPipeline(t, withParent(a, ta), createdAt(b.at(3*time.Second))).ID
		c1 := b.insertPipeline(t, withParent(c, tc), createdAt(b.at(4*time.Second))).ID
		grand := b.insertPipeline(t, withParent(a1, uuid.New()), createdAt(b.at(5*time.Second))).ID
		list := func(params *driver.PipelineListParams) []uuid.UUID {
			t.Helper()
			ps, err := b.drv.Reader().PipelineList(b.ctx, params)
			require.NoError(t, err)
			return pipelineIDs(ps)
		}
		require.Equal(t, []uuid.UUID{a3, a2, a1}, list(&driver.PipelineListParams{ParentPipelineIDs: []uuid.UUID{a}}),
			"children only, not grandchildren, newest first")
		require.Equal(t, []uuid.UUID{grand, c1, a3, a2, a1}, list(&driver.PipelineListParams{ParentPipelineIDs: []uuid.UUID{a, c, a1}}))
		require.Empty(t, list(&driver.PipelineListParams{ParentPipelineIDs: []uuid.UUID{a3, uuid.New()}}), "a run without children")
		// The filter combines with the others, and pages.
		require.Equal(t, []uuid.UUID{a3, a1}, list(&driver.PipelineListParams{ParentPipelineIDs: []uuid.UUID{a},
			Statuses: []driver.PipelineStatus{driver.PipelinePending}}))
		at := b.at(3 * time.Second)
		require.Equal(t, []uuid.UUID{a2}, list(&driver.PipelineListParams{ParentPipelineIDs: []uuid.UUID{a},
			CreatedBefore: &at, BeforeID: a3, Limit: 1}))
		require.Len(t, list(&driver.PipelineListParams{}), 7, "without the filter every run is listed")
	})
}
