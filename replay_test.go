package cloacina

import (
	"testing"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
)

// Replay takes events in following order too (StreamEvents, Events with
// AfterSeq or Follow), where on PostgreSQL an event of an older
// transaction comes before events numbered lower than it. A resumed run
// that had started is Running again whatever event comes between: Replay
// used to look for its pipeline_started among the events before the
// first one numbered at or above the resume, stopping at such an event,
// and call the run Pending (and walked the log from its start for every
// resume, quadratic on a long log).
func TestReplayResumedRunInFollowingOrder(t *testing.T) {
	t.Parallel()
	run, other := uuid.New(), uuid.New()
	task := uuid.New()
	events := []*Event{
		// Another run's transaction took its id first and numbered its
		// event last: following order puts it first.
		{SequenceNum: 14, PipelineID: other, Type: EventPipelineStarted},
		{SequenceNum: 10, PipelineID: run, Type: EventPipelineStarted},
		{SequenceNum: 11, PipelineID: run, TaskID: &task, Type: EventTaskClaimed},
		{SequenceNum: 12, PipelineID: run, Type: EventPipelinePaused},
		{SequenceNum: 13, PipelineID: run, Type: EventPipelineResumed},
	}
	got := Replay(events)
	require.Equal(t, PipelineRunning, got.Runs[run])
	require.Equal(t, PipelineRunning, got.Runs[other])
	require.Equal(t, TaskStatusRunning, got.Tasks[task])

	// A run paused and resumed before it started is Pending again.
	fresh := uuid.New()
	got = Replay([]*Event{
		{SequenceNum: 1, PipelineID: fresh, Type: EventPipelinePaused},
		{SequenceNum: 2, PipelineID: fresh, Type: EventPipelineResumed},
	})
	require.Equal(t, PipelinePending, got.Runs[fresh])
}

// BenchmarkReplayManyResumes replays a log where many runs were paused
// and resumed: each event is handled once, however long the log.
func BenchmarkReplayManyResumes(b *testing.B) {
	var events []*Event
	seq := int64(0)
	for range 5000 {
		run := uuid.New()
		for _, typ := range []EventType{EventPipelineStarted, EventPipelinePaused, EventPipelineResumed, EventPipelineCompleted} {
			seq++
			events = append(events, &Event{SequenceNum: seq, PipelineID: run, Type: typ})
		}
	}
	for b.Loop() {
		Replay(events)
	}
}
