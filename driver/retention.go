package driver

import "time"

// PipelineDeleteParams selects finished runs to delete: Completed, Failed
// or Cancelled, ended (their completion time) before Before, and with no
// task still Running — a cancelled run's task that has not returned yet,
// whose outcome is still to be recorded. At most Limit are deleted, in no
// particular order. Their tasks, outbox rows and schedule ticks go with
// them; their events do not (see EventDeleteParams.ExcludeUnfinishedRuns:
// the events of a run whose row is gone count as finished), and before its
// tasks go each task's name is copied into the run's events that name none
// yet, so that EventList still names their task (Event.TaskName).
type PipelineDeleteParams struct {
	Before time.Time
	Limit  int
}

// PipelineCountParams counts the runs PipelineDeleteFinished would delete
// with the same Before and no limit.
type PipelineCountParams struct {
	Before time.Time
}

// ScheduleTickDeleteParams selects the records of skipped ticks (no run:
// see ScheduleTick) that fired before Before, at most Limit of them. The
// records of ticks that started a run go with their run.
type ScheduleTickDeleteParams struct {
	Before time.Time
	Limit  int
}
