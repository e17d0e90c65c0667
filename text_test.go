package cloacina

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestJSONHasNUL(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]bool{
		`"a\u0000b"`:           true,
		`{"k":["x","\u0000"]}`: true,
		`"\\\u0000"`:           true,  // an escaped backslash, then the NUL escape
		`"\\u0000"`:            false, // the six characters \u0000 as text
		`"\\\\u0000"`:          false,
		`"\u00001"`:            true,
		`"u0000"`:              false,
		`"\u0001"`:             false,
		``:                     false,
	} {
		require.Equal(t, want, jsonHasNUL([]byte(raw)), raw)
	}
}

func TestStorableText(t *testing.T) {
	t.Parallel()
	require.Equal(t, "plain ünïcode", storableText("plain ünïcode"))
	require.Equal(t, "a\uFFFDb\uFFFDc", storableText("a\x00b\xffc"))
	require.Empty(t, unstorable(storableText("\x00\xfe\xff\x00")))
}

func TestContextRefusesWhatABackendCannotStore(t *testing.T) {
	t.Parallel()
	type nested struct{ Note string }
	c := NewContext()
	for name, v := range map[string]any{"string": "x\x00y", "nested": nested{Note: "\x00"}, "list": []string{"ok", "\x00"}} {
		err := c.Set(name, v)
		require.ErrorContains(t, err, `context key "`+name+`": the value holds a NUL character`, name)
		require.ErrorContains(t, err, "base64", "the error names the fix")
		require.False(t, c.Has(name), "a refused value is not stored")
	}
	require.ErrorContains(t, c.Insert("k\x00", 1), `context key "k\x00" contains a NUL character`)
	require.ErrorContains(t, c.Set("k\xff", 1), `is not valid UTF-8`)
	require.Equal(t, 0, c.Len())

	// What every backend stores is accepted: the text \u0000, bytes with
	// zeros (base64), invalid UTF-8 in a value (encoded as U+FFFD).
	require.NoError(t, c.Set("escape_as_text", `\u0000`))
	require.NoError(t, c.Set("bytes", []byte{0, 1, 0}))
	require.NoError(t, c.Set("bad_utf8", "a\xffb"))
	text, err := Get[string](c, "escape_as_text")
	require.NoError(t, err)
	require.Equal(t, `\u0000`, text)
	b, err := Get[[]byte](c, "bytes")
	require.NoError(t, err)
	require.Equal(t, []byte{0, 1, 0}, b)

	var fromJSON Context
	require.ErrorContains(t, json.Unmarshal([]byte(`{"ok":1,"bad":"\u0000"}`), &fromJSON), `context key "bad": the value holds a NUL character`)
	require.ErrorContains(t, json.Unmarshal([]byte(`{"a\u0000":1}`), &fromJSON), "contains a NUL character")
	require.NoError(t, json.Unmarshal([]byte(`{"a":"\\u0000"}`), &fromJSON))
}

// A task's error text is whatever the function returned, NUL characters
// and broken UTF-8 included. PostgreSQL refuses both in text and jsonb; the
// failure used to be unrecordable there, and the run never ended. It is now
// recorded on both backends, the offending characters replaced.
func TestUnstorableErrorTextIsRecorded(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("w",
			Task{Name: "a", Retry: &RetryPolicy{MaxAttempts: 2}, Run: func(context.Context, *Context) error {
				return errors.New("bad\x00byte \xff")
			}},
			Task{Name: "b", DependsOn: []string{"a"}, Run: ok},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(testContext(t), "w", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		want := "bad\uFFFDbyte \uFFFD"
		require.Equal(t, want, res.Task("a").Error)
		require.Equal(t, TaskStatusSkipped, res.Task("b").Status)

		events, err := r.Events(testContext(t), &EventQuery{RunID: &res.ID})
		require.NoError(t, err)
		var retried, failed int
		for _, e := range events {
			d, err := e.Payload()
			require.NoError(t, err)
			switch e.Type {
			case EventTaskRetryScheduled:
				retried++
				require.Equal(t, want, d.Error)
			case EventTaskFailed:
				failed++
				require.Equal(t, want, d.Error)
			}
		}
		require.Equal(t, 1, retried)
		require.Equal(t, 1, failed)
	})
}
