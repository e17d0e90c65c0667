package cli

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/cloacina-go/cloacina"
)

// writeTimeline prints the events of one run as a table whose times are
// offsets in milliseconds from the first event.
func writeTimeline(w io.Writer, events []*cloacina.Event) error {
	if len(events) == 0 {
		_, err := fmt.Fprintln(w, "no events")
		return err
	}
	t0 := events[0].CreatedAt
	offset := func(t time.Time) string { return fmt.Sprintf("+%dms", t.Sub(t0).Milliseconds()) }
	tb := newTable("SEQ", "T+MS", "EVENT", "TASK", "ATTEMPT", "DETAIL").alignRight(0, 1, 4)
	for _, e := range events {
		d := payload(e)
		tb.add(strconv.FormatInt(e.SequenceNum, 10), strconv.FormatInt(e.CreatedAt.Sub(t0).Milliseconds(), 10),
			string(e.Type), dash(e.TaskName), attempt(d), eventDetail(e, d, offset))
	}
	return tb.render(w)
}

// writeEventList prints events of any runs with absolute times.
func writeEventList(w io.Writer, events []*cloacina.Event) error {
	if len(events) == 0 {
		_, err := fmt.Fprintln(w, "no events")
		return err
	}
	tb := newEventTable()
	for _, e := range events {
		tb.add(eventRow(e)...)
	}
	return tb.render(w)
}

// newEventTable is the table of writeEventList, without rows.
func newEventTable() *table {
	return newTable("SEQ", "TIME", "RUN", "EVENT", "TASK", "ATTEMPT", "DETAIL").alignRight(0, 5)
}

// eventRow is one event as a row of newEventTable.
func eventRow(e *cloacina.Event) []string {
	d := payload(e)
	return []string{strconv.FormatInt(e.SequenceNum, 10), formatTime(e.CreatedAt), e.PipelineID.String(),
		string(e.Type), dash(e.TaskName), attempt(d), eventDetail(e, d, formatTime)}
}

// payload decodes an event's data; an undecodable payload (written by a
// newer version, say) is shown raw rather than failing the listing.
func payload(e *cloacina.Event) *cloacina.EventData {
	d, err := e.Payload()
	if err != nil {
		return &cloacina.EventData{Reason: "undecodable data: " + string(e.Data)}
	}
	return d
}

func attempt(d *cloacina.EventData) string {
	if d.Attempt == 0 {
		return "-"
	}
	return strconv.Itoa(d.Attempt)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func durationMS(p *int64) string {
	if p == nil {
		return ""
	}
	return formatDuration(time.Duration(*p) * time.Millisecond)
}

// eventDetail summarises what matters about an event in one line; at
// formats a point in time (a retry's due time).
func eventDetail(e *cloacina.Event, d *cloacina.EventData, at func(time.Time) string) string {
	switch e.Type {
	case cloacina.EventPipelineStarted:
		return "workflow " + d.Workflow
	case cloacina.EventTaskCreated:
		if d.MaxAttempts > 1 {
			return fmt.Sprintf("up to %d attempts", d.MaxAttempts)
		}
		return ""
	case cloacina.EventTaskClaimed:
		if d.RunnerName == "" {
			return "by " + e.WorkerID
		}
		return "by " + d.RunnerName
	case cloacina.EventTaskCompleted:
		return "took " + durationMS(d.DurationMS)
	case cloacina.EventTaskFailed:
		return fmt.Sprintf("error: %s (after %s)", firstLine(d.Error), durationMS(d.DurationMS))
	case cloacina.EventTaskRetryScheduled:
		due := ""
		if d.RetryAt != nil {
			due = " due " + at(*d.RetryAt)
		}
		return fmt.Sprintf("error: %s; attempt %d of %d%s", firstLine(d.Error), d.NextAttempt, d.MaxAttempts, due)
	case cloacina.EventTaskSkipped, cloacina.EventTaskAbandoned:
		return "reason: " + d.Reason
	case cloacina.EventTaskReset:
		return fmt.Sprintf("reason: %s (recovery %d)", d.Reason, d.RecoveryCount)
	case cloacina.EventPipelineCompleted:
		return "took " + durationMS(d.DurationMS)
	case cloacina.EventPipelineFailed:
		return fmt.Sprintf("error: %s (after %s)", firstLine(d.Error), durationMS(d.DurationMS))
	case cloacina.EventPipelineCancelled:
		return fmt.Sprintf("reason: %s (after %s)", d.Reason, durationMS(d.DurationMS))
	case cloacina.EventPipelinePaused:
		if d.OutboxRows != nil {
			return fmt.Sprintf("%d queued task(s) held back", *d.OutboxRows)
		}
	case cloacina.EventPipelineResumed:
		if d.OutboxRows != nil {
			return fmt.Sprintf("%d task(s) queued again", *d.OutboxRows)
		}
	}
	switch {
	case d.Error != "":
		return "error: " + firstLine(d.Error)
	case d.Reason != "":
		return "reason: " + d.Reason
	}
	return ""
}
