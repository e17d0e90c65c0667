package cloacina

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/internal/testdb"
)

// streamed is one StreamEvents iteration running in the background.
type streamed struct {
	events chan *Event
	errs   chan error
	polled chan int64 // the cursor after each read (latest kept)
	stop   context.CancelFunc
	ended  chan struct{}
}

// startStream iterates r.StreamEvents(q) with a 10 ms interval until the
// test ends or stop is called.
func startStream(t *testing.T, r *Runner, q *EventQuery) *streamed {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	s := &streamed{events: make(chan *Event, 1000), errs: make(chan error, 10), polled: make(chan int64, 1),
		stop: stop, ended: make(chan struct{})}
	hook := func(cursor int64) {
		select {
		case <-s.polled:
		default:
		}
		s.polled <- cursor
	}
	r.streamPolled.Store(&hook)
	go func() {
		defer close(s.ended)
		for e, err := range r.StreamEvents(ctx, q, &StreamOpts{Interval: 10 * time.Millisecond}) {
			if err != nil {
				s.errs <- err
				continue
			}
			s.events <- e
		}
	}()
	t.Cleanup(func() {
		stop()
		waitFor(t, s.ended, "the stream to end")
	})
	return s
}

// take receives n events.
func (s *streamed) take(t *testing.T, n int) []*Event {
	t.Helper()
	out := make([]*Event, n)
	for i := range out {
		out[i] = waitFor(t, s.events, "a streamed event")
	}
	return out
}

// pollAt waits until a read leaves the cursor at seq.
func (s *streamed) pollAt(t *testing.T, seq int64) {
	t.Helper()
	for deadline := time.Now().Add(testTimeout); ; {
		if c := waitFor(t, s.polled, "a read of the stream"); c == seq {
			return
		} else {
			require.True(t, time.Now().Before(deadline), "the stream's cursor stayed at %d, short of %d", c, seq)
		}
	}
}

func seqsOf(events []*Event) []int64 {
	out := make([]int64, len(events))
	for i, e := range events {
		out[i] = e.SequenceNum
	}
	return out
}

// A stream without a starting point begins with what is committed after
// it starts, and yields every event of what follows, once, in order.
func TestStreamEventsFromNow(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{MustWorkflow("one", Task{Name: "only", Run: ok})}})
		first, err := r.Execute(ctx, "one", nil)
		require.NoError(t, err)
		before, err := r.RunEvents(ctx, first.ID)
		require.NoError(t, err)
		s := startStream(t, r, nil)
		// "Now" is the newest event a follower can have seen: on
		// PostgreSQL a transaction open anywhere on the server (another
		// test's) can hold the first run's last events back, and then they
		// come first. Wait until the stream is past them.
		s.pollAt(t, before[len(before)-1].SequenceNum)
		for len(s.events) > 0 {
			e := <-s.events
			require.Equal(t, first.ID, e.PipelineID, "only the first run's events held back")
		}

		res, err := r.Execute(ctx, "one", nil)
		require.NoError(t, err)
		want, err := r.RunEvents(ctx, res.ID)
		require.NoError(t, err)
		got := s.take(t, len(want))
		require.Equal(t, seqsOf(want), seqsOf(got), "the second run's events and nothing of the first")
		require.Equal(t, EventPipelineCompleted, got[len(got)-1].Type)
		s.stop()
		waitFor(t, s.ended, "the stream to end with its context")
		require.Empty(t, s.errs, "a stream ends without error when its context does")
		require.Empty(t, s.events)
	})
}

// A filtered stream resumes after a saved cursor, and retention deleting
// the last event it yielded does not make it yield old events again.
func TestStreamEventsResumesAndOutlastsRetention(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started, release := make(chan struct{}, 1), make(chan struct{})
		gate := MustWorkflow("gate", Task{Name: "wait", Run: func(context.Context, *Context) error {
			started <- struct{}{}
			<-release
			return nil
		}})
		r := startRunner(t, url, &Config{Workflows: []*Workflow{gate, MustWorkflow("one", Task{Name: "only", Run: ok})}})
		t.Cleanup(func() { close(release) }) // before the runner closes: cleanups run last first
		startedSeq := func(run uuid.UUID) int64 {
			t.Helper()
			evs, err := r.Events(ctx, &EventQuery{RunID: &run, Types: []EventType{EventTaskStarted}})
			require.NoError(t, err)
			require.Len(t, evs, 1)
			return evs[0].SequenceNum
		}
		// run0 stays unfinished, so retention keeps its events; run1
		// finishes, so retention deletes its.
		run0, err := r.ExecuteAsync(ctx, "gate", nil)
		require.NoError(t, err)
		waitFor(t, started, "the gate task to start")
		run1, err := r.Execute(ctx, "one", nil)
		require.NoError(t, err)
		s0, s1 := startedSeq(run0.ID()), startedSeq(run1.ID)

		// Resuming after s0 yields s1 and not s0.
		s := startStream(t, r, &EventQuery{Types: []EventType{EventTaskStarted}, AfterSeq: s0})
		require.Equal(t, []int64{s1}, seqsOf(s.take(t, 1)))
		s.stop()
		waitFor(t, s.ended, "the stream to end")

		s = startStream(t, r, &EventQuery{Types: []EventType{EventTaskStarted}, Follow: true})
		require.Equal(t, []int64{s0, s1}, seqsOf(s.take(t, 2)))
		// A newer event of another type: the stream's place moves to it.
		require.NoError(t, r.Pause(ctx, run0.ID()))
		paused, err := r.Events(ctx, &EventQuery{Types: []EventType{EventPipelinePaused}})
		require.NoError(t, err)
		require.Len(t, paused, 1)
		s.pollAt(t, paused[0].SequenceNum)

		deleted, err := r.DeleteEventsBefore(ctx, paused[0].CreatedAt, nil)
		require.NoError(t, err)
		require.Positive(t, deleted)
		left, err := r.Events(ctx, &EventQuery{RunID: &run1.ID})
		require.NoError(t, err)
		require.Empty(t, left, "retention took the last event the stream yielded")

		run3, err := r.Execute(ctx, "one", nil)
		require.NoError(t, err)
		require.Equal(t, []int64{startedSeq(run3.ID)}, seqsOf(s.take(t, 1)), "the new event, not s0 again")
		for range 2 { // a read that starts after the take, and ends
			waitFor(t, s.polled, "another read")
		}
		require.Empty(t, s.events, "nothing more")
	})
}

// logRecorder collects the messages a runner logs.
type logRecorder struct {
	mu   *sync.Mutex
	msgs *[]string
	seen chan struct{} // one per message, best effort
}

func newLogRecorder() logRecorder {
	return logRecorder{mu: &sync.Mutex{}, msgs: new([]string), seen: make(chan struct{}, 100)}
}

func (h logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h logRecorder) WithGroup(string) slog.Handler            { return h }
func (h logRecorder) Handle(_ context.Context, rec slog.Record) error {
	h.mu.Lock()
	*h.msgs = append(*h.msgs, rec.Message)
	h.mu.Unlock()
	select {
	case h.seen <- struct{}{}:
	default:
	}
	return nil
}

func (h logRecorder) logged(msg string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Contains(*h.msgs, msg)
}

// A stream outlasts lost connections: it warns once, retries, goes on
// where it was and says when the database answers again. PostgreSQL only:
// a SQLite file has no connection to lose.
func TestStreamEventsOutlastsLostConnections(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := testdb.PostgresSchemaURL(t)
	writer := startRunner(t, url, &Config{Workflows: []*Workflow{MustWorkflow("one", Task{Name: "only", Run: ok})}})
	app := "stream_" + strings.ReplaceAll(uuid.NewString(), "-", "")
	rec := newLogRecorder()
	reader := openRunner(t, url+"&application_name="+app, &Config{ReadOnly: true, Logger: slog.New(rec)})
	s := startStream(t, reader, nil)
	waitFor(t, s.polled, "the first read")

	admin, err := pgx.Connect(ctx, testdb.PostgresURL())
	require.NoError(t, err)
	defer admin.Close(context.Background())
	// A connection idle for a while is pinged, and replaced unseen, when
	// the pool hands it out; so kill the reader's connections until one
	// dies under a read.
	const warning = "cannot read the event log; retrying until the database answers"
	for deadline := time.Now().Add(testTimeout); !rec.logged(warning); {
		require.True(t, time.Now().Before(deadline), "no read failed in %s of killing the reader's connections", testTimeout)
		_, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app)
		require.NoError(t, err)
		select {
		case <-s.polled:
		case <-rec.seen:
		case err := <-s.errs:
			t.Fatalf("the stream gave up on a lost connection: %v", err)
		case <-time.After(testTimeout):
		}
	}
	res, err := writer.Execute(ctx, "one", nil)
	require.NoError(t, err)
	want, err := writer.RunEvents(ctx, res.ID)
	require.NoError(t, err)
	require.Equal(t, seqsOf(want), seqsOf(s.take(t, len(want))))
	require.True(t, rec.logged("the database answers again; streaming events on"))
	require.Empty(t, s.errs)
}

// A query StreamEvents cannot honour is one error, and the stream ends.
func TestStreamEventsBadQuery(t *testing.T) {
	t.Parallel()
	r := openRunner(t, testdb.SQLiteURL(t), nil)
	for q, want := range map[*EventQuery]string{
		{Newest: true}: "leave EventQuery.Newest and Limit zero",
		{Limit: 5}:     "leave EventQuery.Newest and Limit zero",
		{AfterSeq: -1}: "sequence numbers are positive",
		{BeforeSeq: 5}: "leave EventQuery.BeforeSeq zero",
	} {
		var errs []error
		for e, err := range r.StreamEvents(testContext(t), q, nil) {
			require.Nil(t, e)
			errs = append(errs, err)
		}
		require.Len(t, errs, 1)
		require.ErrorContains(t, errs[0], want)
	}
	var errs []error
	for _, err := range r.StreamEvents(testContext(t), nil, &StreamOpts{Interval: -time.Second}) {
		errs = append(errs, err)
	}
	require.Len(t, errs, 1)
	require.ErrorContains(t, errs[0], "StreamOpts.Interval -1s is negative")
}

// A follower keeps its place when retention deletes the event it read
// last but keeps older ones (here those of a run still going): on
// PostgreSQL it used to look that event up, find nothing, and follow from
// the start of the log again, repeating the events retention kept.
func TestStreamKeepsItsPlaceWhenRetentionDeletesItsCursor(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		ctx := testContext(t)
		started, release := make(chan struct{}), make(chan struct{})
		var releaseOnce sync.Once
		unblock := func() { releaseOnce.Do(func() { close(release) }) }
		hold := MustWorkflow("hold", Task{Name: "a", Run: func(context.Context, *Context) error {
			close(started)
			<-release
			return nil
		}})
		quick := MustWorkflow("quick", Task{Name: "a", Run: ok})
		// This runner lives 40 days in the past: its events are old enough
		// for retention, but for those of the run still going.
		old := openRunner(t, url, &Config{Workflows: []*Workflow{hold, quick}})
		old.now = func() time.Time { return time.Now().UTC().Add(-40 * 24 * time.Hour) }
		require.NoError(t, old.Start(ctx))
		t.Cleanup(unblock) // before the runner's Close
		held, err := old.ExecuteAsync(ctx, "hold", nil)
		require.NoError(t, err)
		waitFor(t, started, "the held task to start")
		for range 3 {
			_, err := old.Execute(ctx, "quick", nil)
			require.NoError(t, err)
		}
		all, err := old.Events(ctx, nil)
		require.NoError(t, err)
		kept, err := old.RunEvents(ctx, held.ID())
		require.NoError(t, err)

		r := openRunner(t, url, nil)
		s := startStream(t, r, &EventQuery{Follow: true})
		seen := map[int64]bool{}
		var cursor int64
		for _, e := range s.take(t, len(all)) {
			seen[e.SequenceNum], cursor = true, e.SequenceNum
		}
		s.pollAt(t, cursor)
		n, err := r.DeleteEventsBefore(ctx, time.Now().Add(-30*24*time.Hour), nil)
		require.NoError(t, err)
		require.EqualValues(t, len(all)-len(kept), n, "the quick runs' events, the follower's last among them")

		unblock()
		_, err = held.Wait(ctx)
		require.NoError(t, err)
		final, err := r.RunEvents(ctx, held.ID())
		require.NoError(t, err)
		for _, e := range s.take(t, len(final)-len(kept)) {
			require.False(t, seen[e.SequenceNum], "event %d (%s) streamed twice", e.SequenceNum, e.Type)
			require.Equal(t, held.ID(), e.PipelineID)
			seen[e.SequenceNum] = true
		}
	})
}
