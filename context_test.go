package cloacina

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cloacina-go/cloacina/driver"
)

func TestContextInsertUpdateSetDelete(t *testing.T) {
	t.Parallel()
	c := NewContext()
	require.NoError(t, c.Insert("a", 1))
	err := c.Insert("a", 2)
	require.ErrorIs(t, err, ErrKeyExists)
	require.Contains(t, err.Error(), `"a"`)
	require.Contains(t, err.Error(), "Update or Set")

	err = c.Update("missing", 1)
	require.ErrorIs(t, err, ErrKeyNotFound)
	require.Contains(t, err.Error(), `"missing"`)
	require.NoError(t, c.Update("a", 3))
	v, err := Get[int](c, "a")
	require.NoError(t, err)
	require.Equal(t, 3, v)

	require.NoError(t, c.Set("b", "x"))
	require.NoError(t, c.Set("b", "y"))
	require.Equal(t, []string{"a", "b"}, c.Keys())
	require.True(t, c.Delete("b"))
	require.False(t, c.Delete("b"))
	require.False(t, c.Has("b"))
	require.Equal(t, 1, c.Len())
}

// The zero Context is empty and takes values like one from NewContext.
func TestZeroContextIsUsable(t *testing.T) {
	t.Parallel()
	var c Context
	require.Zero(t, c.Len())
	require.ErrorIs(t, c.Update("k", 1), ErrKeyNotFound)
	require.NoError(t, c.Set("k", 1))
	var z Context
	require.NoError(t, z.Insert("k", 2))
	require.ErrorIs(t, z.Insert("k", 3), ErrKeyExists)
	v, err := Get[int](&z, "k")
	require.NoError(t, err)
	require.Equal(t, 2, v)
	out, err := c.MarshalJSON()
	require.NoError(t, err)
	require.JSONEq(t, `{"k":1}`, string(out))
}

func TestContextRejectsNonJSONNamingTheKey(t *testing.T) {
	t.Parallel()
	c := NewContext()
	for name, v := range map[string]any{"chan": make(chan int), "func": func() {}, "nan": math.NaN(), "complex": complex(1, 2)} {
		err := c.Set(name, v)
		require.Error(t, err, name)
		require.Contains(t, err.Error(), `context key "`+name+`"`)
		require.Contains(t, err.Error(), "cannot be stored as JSON")
		require.False(t, c.Has(name), "a rejected value must not be stored")
	}
	require.Error(t, c.Insert("x", make(chan int)))
	require.Error(t, c.Set("", 1))
	_, err := ContextFrom(map[string]any{"ok": 1, "bad": func() {}})
	require.ErrorContains(t, err, `"bad"`)
}

// JSON null is no int or string: Get says so rather than return zero.
func TestGetNull(t *testing.T) {
	t.Parallel()
	c := NewContext()
	require.NoError(t, c.Set("n", nil))
	_, err := Get[int](c, "n")
	require.ErrorIs(t, err, ErrTypeMismatch)
	require.ErrorContains(t, err, `context key "n" holds null, which does not decode as int`)
	_, err = Get[string](c, "n")
	require.ErrorIs(t, err, ErrTypeMismatch)
	p, err := Get[*int](c, "n")
	require.NoError(t, err, "a pointer holds null")
	require.Nil(t, p)
	list, err := Get[[]int](c, "n")
	require.NoError(t, err)
	require.Nil(t, list)
	v, err := Get[any](c, "n")
	require.NoError(t, err)
	require.Nil(t, v)
}

func TestGetTyped(t *testing.T) {
	t.Parallel()
	type point struct {
		X, Y int
	}
	c, err := ContextFrom(map[string]any{"n": 5, "s": "hi", "p": point{1, 2}, "list": []string{"a"}})
	require.NoError(t, err)

	n, err := Get[float64](c, "n")
	require.NoError(t, err)
	require.Equal(t, 5.0, n)
	p, err := Get[point](c, "p")
	require.NoError(t, err)
	require.Equal(t, point{1, 2}, p)
	list, err := Get[[]string](c, "list")
	require.NoError(t, err)
	require.Equal(t, []string{"a"}, list)

	_, err = Get[int](c, "s")
	require.ErrorIs(t, err, ErrTypeMismatch)
	require.Contains(t, err.Error(), `context key "s" holds "hi", which does not decode as int`)
	_, err = Get[string](c, "missing")
	require.ErrorIs(t, err, ErrKeyNotFound)

	generic, found := c.Get("p")
	require.True(t, found)
	require.Equal(t, map[string]any{"X": 1.0, "Y": 2.0}, generic)
	_, found = c.Get("missing")
	require.False(t, found)
}

// A value given as JSON keeps its text, compacted as it will be stored:
// Raw returns the same bytes before a run stores it and after.
func TestUnmarshalJSONKeepsTheTextCompacted(t *testing.T) {
	t.Parallel()
	var c Context
	require.NoError(t, c.UnmarshalJSON([]byte(`{"b": {"z": [1e2, 1.50], "a": "<\u00e9>"}, "a": 1, "a": 2}`)))
	raw, ok := c.Raw("b")
	require.True(t, ok)
	require.Equal(t, `{"z":[1e2,1.50],"a":"\u003c\u00e9\u003e"}`, string(raw))
	raw, _ = c.Raw("a")
	require.Equal(t, `2`, string(raw), "of keys given twice, the last wins")
	require.NoError(t, c.Set("r", json.RawMessage(`[ 1 , {"y": 1, "x": 2} ]`)))
	raw, _ = c.Raw("r")
	require.Equal(t, `[1,{"y":1,"x":2}]`, string(raw), "as Set does with a json.RawMessage")
}

// An integral number decodes into an integer type however it is written;
// a fraction, a number too large for the type or a non-number does not.
func TestGetIntegralNumbers(t *testing.T) {
	t.Parallel()
	c := NewContext()
	require.NoError(t, c.UnmarshalJSON([]byte(`{"e":1e2,"dec":100.0,"neg":-1.50E+2,"frac":1.5,"huge":1e30,"k":1e3,`+
		`"obj":{"n":2e1},"s":"1e2","plain":7}`)))
	n, err := Get[int](c, "e")
	require.NoError(t, err)
	require.Equal(t, 100, n)
	n, err = Get[int](c, "dec")
	require.NoError(t, err)
	require.Equal(t, 100, n)
	i16, err := Get[int16](c, "neg")
	require.NoError(t, err)
	require.Equal(t, int16(-150), i16)
	type obj struct{ N int }
	o, err := Get[obj](c, "obj")
	require.NoError(t, err)
	require.Equal(t, 20, o.N)
	f, err := Get[float64](c, "e")
	require.NoError(t, err)
	require.Equal(t, 100.0, f)
	num, err := Get[json.Number](c, "e")
	require.NoError(t, err)
	require.Equal(t, json.Number("1e2"), num, "a json.Number keeps the text")
	p, err := Get[int](c, "plain")
	require.NoError(t, err)
	require.Equal(t, 7, p)

	for _, key := range []string{"frac", "huge", "s"} {
		_, err := Get[int](c, key)
		require.ErrorIs(t, err, ErrTypeMismatch, key)
	}
	_, err = Get[uint8](c, "k")
	require.ErrorIs(t, err, ErrTypeMismatch, "1e3 does not fit uint8")
	_, err = Get[int8](c, "neg")
	require.ErrorIs(t, err, ErrTypeMismatch, "-150 does not fit int8")
	_, err = Get[uint](c, "neg")
	require.ErrorIs(t, err, ErrTypeMismatch, "-150 is no uint")
	require.ErrorContains(t, err, `context key "neg" holds -1.50E+2, which does not decode as uint`)
}

func TestContextJSONRoundTrip(t *testing.T) {
	t.Parallel()
	c, err := ContextFrom(map[string]any{"b": []int{1}, "a": map[string]any{"x": true}})
	require.NoError(t, err)
	raw, err := json.Marshal(c)
	require.NoError(t, err)
	require.Equal(t, `{"a":{"x":true},"b":[1]}`, string(raw))
	var back Context
	require.NoError(t, json.Unmarshal(raw, &back))
	require.Equal(t, c.Keys(), back.Keys())
	require.Equal(t, "{}", NewContext().String())

	clone := c.Clone()
	require.NoError(t, clone.Set("c", 1))
	require.False(t, c.Has("c"))
}

func TestContextConcurrentUse(t *testing.T) {
	t.Parallel()
	c := NewContext()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 100 {
				require.NoError(t, c.Set(string(rune('a'+i)), j))
				c.Get(string(rune('a' + i)))
			}
		}()
	}
	wg.Wait()
	require.Equal(t, 8, c.Len())
}

func TestMergeContextsDeclaredOrder(t *testing.T) {
	t.Parallel()
	out, err := mergeContexts([]json.RawMessage{
		json.RawMessage(`{"x":1,"obj":{"a":1,"deep":{"k":1}}}`),
		nil,
		json.RawMessage(`{"x":2,"obj":{"b":2,"deep":{"j":2}}}`),
	})
	require.NoError(t, err)
	require.JSONEq(t, `{"x":2,"obj":{"a":1,"b":2,"deep":{"k":1,"j":2}}}`, string(out))
	_, err = mergeContexts([]json.RawMessage{json.RawMessage(`[1]`)})
	require.True(t, err != nil && !errors.Is(err, ErrKeyNotFound))
}

// A context's text is the same on every backend, and is what the rule in
// Context's doc comment says: values as written, compacted and with <, >
// and & escaped; top-level keys sorted; objects merged under one key
// encoded anew with sorted keys. PostgreSQL's jsonb used to reorder nested
// keys, respace and reformat numbers (1e2 as 100) and decode escapes.
func TestContextTextIsTheSameOnEveryBackend(t *testing.T) {
	t.Parallel()
	const (
		// Spacing, nested keys out of order, exponents, a trailing zero,
		// an integer beyond 2^53, unicode raw and escaped, characters
		// encoding/json escapes and an escape it need not have.
		given = `{ "order": {"zeta": 1, "id": 12345678901234567890, "alpha": {"b": 2, "a": 1}},
			"price": 1.50, "count": 1e2, "neg": -1.50E+2,
			"text": "h\u00e9llo wörld 😀 \ud83d\ude00 <&> \/",
			"list": [ 3, 1e0, {"y": 1, "x": 2} ] }`
		text  = `"h\u00e9llo wörld 😀 \ud83d\ude00 \u003c\u0026\u003e \/"`
		input = `{"count":1e2,"list":[3,1e0,{"y":1,"x":2}],"neg":-1.50E+2,` +
			`"order":{"zeta":1,"id":12345678901234567890,"alpha":{"b":2,"a":1}},"price":1.50,"text":` + text + `}`
		// a adds three keys; b (after a) replaces one and adds one; c
		// (after a) adds one.
		aOut = `{"a_out":{"m":2,"k":[1.0,2e3]},"count":1e2,"list":[3,1e0,{"y":1,"x":2}],"neg":-1.50E+2,` +
			`"order":{"zeta":1,"id":12345678901234567890,"alpha":{"b":2,"a":1}},"price":1.50,"shared":{"z":0,"from_a":1},` +
			`"text":` + text + `,"typed":{"B":1,"A":"x\u003c"}}`
		bOut = `{"a_out":{"m":2,"k":[1.0,2e3]},"b_out":1e-7,"count":1e2,"list":[3,1e0,{"y":1,"x":2}],"neg":-1.50E+2,` +
			`"order":{"zeta":1,"id":12345678901234567890,"alpha":{"b":2,"a":1}},"price":1.50,"shared":{"from_b":2e0,"a":0},` +
			`"text":` + text + `,"typed":{"B":1,"A":"x\u003c"}}`
		cOut = `{"a_out":{"m":2,"k":[1.0,2e3]},"c_out":{"a":2.5,"z":1},"count":1e2,"list":[3,1e0,{"y":1,"x":2}],"neg":-1.50E+2,` +
			`"order":{"zeta":1,"id":12345678901234567890,"alpha":{"b":2,"a":1}},"price":1.50,"shared":{"z":0,"from_a":1},` +
			`"text":` + text + `,"typed":{"B":1,"A":"x\u003c"}}`
		// d merges b and c: the objects both hold are encoded anew.
		dIn = `{"a_out":{"k":[1.0,2e3],"m":2},"b_out":1e-7,"c_out":{"a":2.5,"z":1},"count":1e2,"list":[3,1e0,{"y":1,"x":2}],` +
			`"neg":-1.50E+2,"order":{"alpha":{"a":1,"b":2},"id":12345678901234567890,"zeta":1},"price":1.50,` +
			`"shared":{"a":0,"from_a":1,"from_b":2e0,"z":0},"text":` + text + `,"typed":{"A":"x\u003c","B":1}}`
		dOut = `{"a_out":{"k":[1.0,2e3],"m":2},"b_out":1e-7,"c_out":{"a":2.5,"z":1},"count":1e2,"d":true,"list":[3,1e0,{"y":1,"x":2}],` +
			`"neg":-1.50E+2,"order":{"alpha":{"a":1,"b":2},"id":12345678901234567890,"zeta":1},"price":1.50,` +
			`"shared":{"a":0,"from_a":1,"from_b":2e0,"z":0},"text":` + text + `,"typed":{"A":"x\u003c","B":1}}`
		// The leaves are d and e (which passes the input on): merged, the
		// only object both hold is already in sorted form.
		final   = dOut
		errText = "x < y & \"z\" é\u2028"
		errJSON = `"error":"x \u003c y \u0026 \"z\" é\u2028"`
	)
	forEachBackend(t, func(t *testing.T, url string) {
		var mu sync.Mutex
		seen := map[string]string{} // task: the context it received, as text
		record := func(name string, tc *Context) {
			raw, err := tc.MarshalJSON()
			require.NoError(t, err)
			mu.Lock()
			defer mu.Unlock()
			seen[name] = string(raw)
		}
		var (
			failedOnce atomic.Bool
			textRaw    json.RawMessage // a's Raw("text")
			count, neg int64           // d's Get of 1e2 and -1.50E+2
			getErrs    []error
			order      struct {
				ID uint64 `json:"id"`
			}
		)
		wf := MustWorkflow("text",
			Task{Name: "a", Run: func(_ context.Context, tc *Context) error {
				record("a", tc)
				mu.Lock()
				textRaw, _ = tc.Raw("text")
				mu.Unlock()
				if err := tc.Set("a_out", json.RawMessage(`{"m": 2, "k": [1.0, 2e3]}`)); err != nil {
					return err
				}
				if err := tc.Set("shared", json.RawMessage(`{"z": 0, "from_a": 1}`)); err != nil {
					return err
				}
				return tc.Set("typed", struct {
					B int
					A string
				}{1, "x<"})
			}},
			Task{Name: "b", DependsOn: []string{"a"}, Run: func(_ context.Context, tc *Context) error {
				record("b", tc)
				if err := tc.Set("shared", json.RawMessage(`{"from_b": 2e0, "a": 0}`)); err != nil {
					return err
				}
				return tc.Set("b_out", json.RawMessage(`1e-7`))
			}},
			Task{Name: "c", DependsOn: []string{"a"}, Run: func(_ context.Context, tc *Context) error {
				record("c", tc)
				return tc.Set("c_out", map[string]any{"z": 1, "a": 2.5})
			}},
			Task{Name: "d", DependsOn: []string{"b", "c"}, Run: func(_ context.Context, tc *Context) error {
				record("d", tc)
				mu.Lock()
				defer mu.Unlock()
				var err1, err2, err3 error
				count, err1 = Get[int64](tc, "count")
				neg, err2 = Get[int64](tc, "neg")
				order, err3 = Get[struct {
					ID uint64 `json:"id"`
				}](tc, "order")
				getErrs = []error{err1, err2, err3}
				return tc.Set("d", true)
			}},
			Task{Name: "e", Retry: &RetryPolicy{MaxAttempts: 2, InitialDelay: time.Millisecond}, Run: func(_ context.Context, tc *Context) error {
				record("e", tc)
				if !failedOnce.Swap(true) {
					return errors.New(errText)
				}
				return nil
			}},
		)
		r := startRunner(t, url, &Config{Workflows: []*Workflow{wf}})
		in := NewContext()
		require.NoError(t, in.UnmarshalJSON([]byte(given)))
		raw, err := in.MarshalJSON()
		require.NoError(t, err)
		require.Equal(t, input, string(raw))

		ctx := testContext(t)
		res, err := r.Execute(ctx, "text", in)
		require.NoError(t, err)
		require.Equal(t, PipelineCompleted, res.Status)
		require.Equal(t, final, res.Context.String(), "the final context")

		mu.Lock()
		defer mu.Unlock()
		require.Equal(t, map[string]string{"a": input, "b": aOut, "c": aOut, "d": dIn, "e": input}, seen,
			"what each task received")
		require.Equal(t, text, string(textRaw), "Raw returns the text as stored")
		require.Equal(t, []error{nil, nil, nil}, getErrs)
		require.Equal(t, []int64{100, -150}, []int64{count, neg}, "Get of an integer in exponent form")
		require.Equal(t, uint64(12345678901234567890), order.ID)
		p, err := r.drv.Reader().PipelineGet(ctx, res.ID)
		require.NoError(t, err)
		require.Equal(t, input, string(p.Input))
		require.Equal(t, final, string(p.Output))
		tasks, err := r.drv.Reader().TaskList(ctx, &driver.TaskListParams{PipelineIDs: []uuid.UUID{res.ID}, WithContexts: true})
		require.NoError(t, err)
		stored := map[string][2]string{}
		for _, task := range tasks {
			stored[task.Name] = [2]string{string(task.Input), string(task.Output)}
		}
		require.Equal(t, map[string][2]string{
			"a": {input, aOut}, "b": {aOut, bOut}, "c": {aOut, cOut}, "d": {dIn, dOut}, "e": {input, input},
		}, stored, "each task's stored input and output")

		// Event data is encoding/json's encoding of EventData, fields in
		// declaration order.
		events, err := r.Events(ctx, &EventQuery{RunID: &res.ID})
		require.NoError(t, err)
		var retried int
		for _, e := range events {
			d, err := e.Payload()
			require.NoError(t, err)
			want, err := json.Marshal(d)
			require.NoError(t, err)
			require.Equal(t, string(want), string(e.Data), "data of %s", e.Type)
			if e.Type == EventTaskRetryScheduled {
				retried++
				require.Equal(t, errText, d.Error)
				require.Contains(t, string(e.Data), errJSON)
			}
		}
		require.Equal(t, 1, retried)
	})
}
