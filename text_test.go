package cloacina

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestJSONProblem(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		`"a\u0000b"`:            "a NUL character",
		`{"k":["x","\u0000"]}`:  "a NUL character",
		`"\\\u0000"`:            "a NUL character", // an escaped backslash, then the NUL escape
		`"\\u0000"`:             "",                // the six characters \u0000 as text
		`"\\\\u0000"`:           "",
		`"u0000"`:               "",
		`"\u0001 \n \""`:        "",
		`"\ud83d\ude00"`:        "", // a surrogate pair (😀)
		`"\uD83D\uDE00 \ud800"`: `a lone UTF-16 surrogate (\ud800)`,
		`"\ude00"`:              `a lone UTF-16 surrogate (\ude00)`,
		`"\ud800x"`:             `a lone UTF-16 surrogate (\ud800)`,
		`[1, -2.5, 1e400, 0e200000, 1e131071, 0e-16383]`: "", // wider than float64, as numeric is
		`[0e-16384]`: "the number 0e-16384",
		`[1e131072]`: "the number 1e131072",
		// PostgreSQL 15 reads 0e1073741822 and refuses 0e1073741823
		// ("value overflows numeric format"): the exponent's own limit.
		`[0e1073741822]`:           "",
		`[0e1073741823]`:           "the number 0e1073741823",
		`[-0.0E+1073741823]`:       "the number -0.0E+1073741823",
		`{"x":1e999999}`:           "the number 1e999999",
		`[1e-20000]`:               "the number 1e-20000",
		`[123.456e-16381]`:         "the number 123.456e-16381",
		`[1e99999999999999999999]`: "the number 1e99999999999999999999",
		`"1e999999"`:               "", // text, not a number
		``:                         "",
	} {
		found, fix := jsonProblem([]byte(raw))
		if want == "" {
			require.Empty(t, found, raw)
			continue
		}
		require.Contains(t, found, want, raw)
		require.NotEmpty(t, fix, raw)
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
	require.ErrorContains(t, json.Unmarshal([]byte(`{"s":"\ud800"}`), &fromJSON), `context key "s": the value holds a lone UTF-16 surrogate (\ud800), which PostgreSQL's JSON functions cannot read: encode the text as valid UTF-8`)
	require.ErrorContains(t, json.Unmarshal([]byte(`{"x":1e999999}`), &fromJSON), `context key "x": the value holds the number 1e999999, which PostgreSQL's JSON functions cannot read: store it as a string`)
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
