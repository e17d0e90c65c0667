package cloacina

import (
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// deepest is the deepest nesting a context value may have: encoding/json
// reads 10,000 levels, and the context holding the value is one of them.
const deepest = 9999

// nested returns JSON text nesting arrays depth levels deep.
func nested(depth int) json.RawMessage {
	return json.RawMessage(strings.Repeat("[", depth) + strings.Repeat("]", depth))
}

// nestedAny returns a Go value nesting slices depth levels deep.
func nestedAny(depth int) any {
	var v any = []any{}
	for range depth - 1 {
		v = []any{v}
	}
	return v
}

// A context is itself one level of JSON, and encoding/json reads no more
// than 10,000: a value nested 10,000 deep would be stored as a task's
// output, and then no run could merge it or hand it on. Set refuses it
// at once, naming the key, like any other value a context cannot hold.
func TestContextRefusesValuesNestedTooDeep(t *testing.T) {
	t.Parallel()
	c := NewContext()
	require.NoError(t, c.Set("ok", nested(deepest)))
	require.NoError(t, c.Set("ok_go", nestedAny(deepest)))
	out, err := c.MarshalJSON()
	require.NoError(t, err)
	back := NewContext()
	require.NoError(t, back.UnmarshalJSON(out), "a context holding the deepest allowed value reads back")

	for name, v := range map[string]any{"raw": nested(deepest + 1), "go": nestedAny(deepest + 1),
		"in_object": map[string]any{"k": nested(deepest)}} {
		err := c.Set(name, v)
		require.ErrorContains(t, err, `context key "`+name+`"`)
		require.ErrorContains(t, err, "nested more than 9999 levels deep")
		require.False(t, c.Has(name))
	}
	// Brackets inside strings are text, not nesting.
	require.NoError(t, c.Set("text", strings.Repeat("[{", deepest+1)))
}

// A task that tries to hand on a value nested too deeply fails with the
// reason, and its run ends; before, the value was accepted, and the
// completion that merged it for the next task failed on every try, so
// the run never ended. The deepest value allowed flows through.
func TestTooDeepValueFailsTheTaskNotTheRun(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("deep",
			Task{Name: "a", Run: setKey("deep", nested(deepest+1))},
			Task{Name: "b", DependsOn: []string{"a"}, Run: ok},
			Task{Name: "c", Run: setKey("deepest", nested(deepest))},
			Task{Name: "d", DependsOn: []string{"c"}, Trigger: All(ContextValue("deepest", OpExists, nil)), Run: ok},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(testContext(t), "deep", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		require.Equal(t, TaskStatusFailed, res.Task("a").Status)
		require.Contains(t, res.Task("a").Error, `context key "deep": the value is nested more than 9999 levels deep`)
		require.Equal(t, TaskStatusSkipped, res.Task("b").Status)
		require.Equal(t, TaskStatusCompleted, res.Task("d").Status)
		raw, found := res.Context.Raw("deepest")
		require.True(t, found)
		require.Equal(t, string(nested(deepest)), string(raw))
	})
}

// Go encodes a float64 negative zero as -0: its value is the integer 0,
// which Get decodes into an unsigned type as it does -0.0 and 0e0.
func TestGetNegativeZeroIntoUnsigned(t *testing.T) {
	t.Parallel()
	c := NewContext()
	require.NoError(t, c.Set("z", math.Copysign(0, -1)))
	raw, _ := c.Raw("z")
	require.Equal(t, "-0", string(raw))
	u, err := Get[uint](c, "z")
	require.NoError(t, err)
	require.Equal(t, uint(0), u)
	require.NoError(t, c.UnmarshalJSON([]byte(`{"z":-0,"zf":-0.0,"in":{"n":-0}}`)))
	u8, err := Get[uint8](c, "zf")
	require.NoError(t, err)
	require.Equal(t, uint8(0), u8)
	in, err := Get[struct{ N uint }](c, "in")
	require.NoError(t, err)
	require.Equal(t, uint(0), in.N)
	u, err = Get[uint](c, "z")
	require.NoError(t, err, "-0 as written in JSON text")
	require.Equal(t, uint(0), u)
}

// json.Marshal replaces invalid UTF-8 in a Go string, but a
// json.RawMessage (or a context read with UnmarshalJSON) keeps its bytes:
// SQLite stored them and PostgreSQL refused them, so the same task
// completed on one and failed on the other. Set refuses them at once,
// naming the key, on both.
func TestContextRefusesTextThatIsNotUTF8(t *testing.T) {
	t.Parallel()
	c := NewContext()
	for name, v := range map[string]any{"raw": json.RawMessage("\"a\xffb\""), "nested": json.RawMessage("{\"k\":[\"\xc3\"]}"),
		"key": json.RawMessage("{\"k\xff\":1}")} {
		err := c.Set(name, v)
		require.ErrorContains(t, err, `context key "`+name+`": the value holds text that is not valid UTF-8`)
		require.False(t, c.Has(name))
	}
	require.ErrorContains(t, c.UnmarshalJSON([]byte("{\"k\":\"a\xffb\"}")), "not valid UTF-8")
	// A Go string is encoded with its invalid bytes replaced.
	require.NoError(t, c.Set("s", "a\xffb"))
	require.NoError(t, c.Set("u", json.RawMessage(`"é😀"`)))
}

// A task that writes such text fails the same way on every backend.
func TestTaskWritingTextThatIsNotUTF8FailsOnEveryBackend(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, url string) {
		wf := MustWorkflow("utf8",
			Task{Name: "a", Run: setKey("k", json.RawMessage("\"a\xffb\""))},
			Task{Name: "b", DependsOn: []string{"a"}, Run: ok},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		res, err := r.Execute(testContext(t), "utf8", nil)
		require.NoError(t, err)
		require.Equal(t, PipelineFailed, res.Status)
		require.Equal(t, TaskStatusFailed, res.Task("a").Status)
		require.Contains(t, res.Task("a").Error, `context key "k": the value holds text that is not valid UTF-8`)
		require.Equal(t, TaskStatusSkipped, res.Task("b").Status)
	})
}
