package cloacina

import (
	"strconv"
	"time"

	"github.com/cloacina-go/cloacina/internal/jsonx"
)

// appendJSON appends d encoded exactly as json.Marshal encodes it (the
// same keys in the same order, the same omissions, the same escapes)
// without reflection: every transition writes an event, and json.Marshal
// was most of the cost of building one. eventjson_test.go holds it to
// json.Marshal. It fails only for a RetryAt that JSON cannot hold (a year
// outside 0–9999), as json.Marshal does.
func (d *EventData) appendJSON(b []byte) ([]byte, error) {
	b = append(b, '{')
	first := len(b)
	if d.Attempt != 0 {
		b = appendJSONKey(b, first, "attempt")
		b = strconv.AppendInt(b, int64(d.Attempt), 10)
	}
	if d.MaxAttempts != 0 {
		b = appendJSONKey(b, first, "max_attempts")
		b = strconv.AppendInt(b, int64(d.MaxAttempts), 10)
	}
	if d.NextAttempt != 0 {
		b = appendJSONKey(b, first, "next_attempt")
		b = strconv.AppendInt(b, int64(d.NextAttempt), 10)
	}
	if d.Error != "" {
		b = appendJSONKey(b, first, "error")
		b = jsonx.AppendString(b, d.Error)
	}
	if d.RetryAt != nil {
		b = appendJSONKey(b, first, "retry_at")
		var err error
		if b, err = appendJSONTime(b, *d.RetryAt); err != nil {
			return nil, err
		}
	}
	if d.DelayMS != nil {
		b = appendJSONKey(b, first, "delay_ms")
		b = strconv.AppendInt(b, *d.DelayMS, 10)
	}
	if d.Reason != "" {
		b = appendJSONKey(b, first, "reason")
		b = jsonx.AppendString(b, d.Reason)
	}
	if d.DurationMS != nil {
		b = appendJSONKey(b, first, "duration_ms")
		b = strconv.AppendInt(b, *d.DurationMS, 10)
	}
	if d.RunnerName != "" {
		b = appendJSONKey(b, first, "runner_name")
		b = jsonx.AppendString(b, d.RunnerName)
	}
	if d.Workflow != "" {
		b = appendJSONKey(b, first, "workflow")
		b = jsonx.AppendString(b, d.Workflow)
	}
	if d.WorkflowVersion != "" {
		b = appendJSONKey(b, first, "workflow_version")
		b = jsonx.AppendString(b, d.WorkflowVersion)
	}
	if d.RecoveryCount != 0 {
		b = appendJSONKey(b, first, "recovery_count")
		b = strconv.AppendInt(b, int64(d.RecoveryCount), 10)
	}
	if d.OutboxRows != nil {
		b = appendJSONKey(b, first, "outbox_rows")
		b = strconv.AppendInt(b, int64(*d.OutboxRows), 10)
	}
	return append(b, '}'), nil
}

// appendJSONKey appends a member's key, after a comma unless it is the
// first member of the object whose members begin at first.
func appendJSONKey(b []byte, first int, name string) []byte {
	if len(b) > first {
		b = append(b, ',')
	}
	b = append(b, '"')
	b = append(b, name...)
	return append(b, '"', ':')
}

// appendJSONTime appends t as time.Time's MarshalJSON writes it.
func appendJSONTime(b []byte, t time.Time) ([]byte, error) {
	b = append(b, '"')
	b, err := t.AppendText(b)
	if err != nil {
		return nil, err
	}
	return append(b, '"'), nil
}
