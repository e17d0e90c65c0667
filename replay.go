package cloacina

import "github.com/google/uuid"

// Replayed is the state rebuilt from an event stream alone.
type Replayed struct {
	// Runs holds each run's status.
	Runs map[uuid.UUID]PipelineStatus
	// Tasks holds each task execution's status.
	Tasks map[uuid.UUID]TaskStatus
}

// Replay rebuilds run and task statuses from events in sequence order
// (as Events returns them). It is the audit log's contract: the statuses
// it returns equal those stored by the engine. Retention
// ([Runner.DeleteEventsBefore]) keeps every event of a run until the run
// finishes, unless told to delete by age alone, so Replay of an unfinished
// run's events still gives each of its tasks' status.
func Replay(events []*Event) *Replayed {
	out := &Replayed{Runs: map[uuid.UUID]PipelineStatus{}, Tasks: map[uuid.UUID]TaskStatus{}}
	// started holds the runs whose pipeline_started came already: a
	// resume makes those Running again, the others Pending.
	started := map[uuid.UUID]bool{}
	for _, e := range events {
		if e.TaskID == nil {
			switch e.Type {
			case EventPipelineStarted:
				started[e.PipelineID] = true
				// A run paused while its first claim committed starts
				// Paused (its claimed task runs; no other is claimed).
				if out.Runs[e.PipelineID] != PipelinePaused {
					out.Runs[e.PipelineID] = PipelineRunning
				}
			case EventPipelineCompleted:
				out.Runs[e.PipelineID] = PipelineCompleted
			case EventPipelineFailed:
				out.Runs[e.PipelineID] = PipelineFailed
			case EventPipelineCancelled:
				out.Runs[e.PipelineID] = PipelineCancelled
			case EventPipelinePaused:
				out.Runs[e.PipelineID] = PipelinePaused
			case EventPipelineResumed:
				// A run resumed before any task was claimed is Pending again.
				if out.Runs[e.PipelineID] == PipelinePaused {
					out.Runs[e.PipelineID] = PipelinePending
					if started[e.PipelineID] {
						out.Runs[e.PipelineID] = PipelineRunning
					}
				}
			}
			continue
		}
		if _, ok := out.Runs[e.PipelineID]; !ok {
			out.Runs[e.PipelineID] = PipelinePending
		}
		id := *e.TaskID
		switch e.Type {
		case EventTaskCreated:
			out.Tasks[id] = TaskStatusNotStarted
		case EventTaskMarkedReady, EventTaskRetryScheduled, EventTaskReset:
			out.Tasks[id] = TaskStatusReady
		case EventTaskClaimed, EventTaskStarted, EventTaskDeferred, EventTaskResumed:
			out.Tasks[id] = TaskStatusRunning
		case EventTaskCompleted:
			out.Tasks[id] = TaskStatusCompleted
		case EventTaskFailed, EventTaskAbandoned:
			out.Tasks[id] = TaskStatusFailed
		case EventTaskSkipped:
			out.Tasks[id] = TaskStatusSkipped
		}
	}
	return out
}
