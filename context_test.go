package cloacina

import (
	"encoding/json"
	"errors"
	"math"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
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
	require.ErrorContains(t, err, `context key "n" holds null, which is not a int`)
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
	require.Contains(t, err.Error(), `context key "s" holds "hi", which is not a int`)
	_, err = Get[string](c, "missing")
	require.ErrorIs(t, err, ErrKeyNotFound)

	generic, found := c.Get("p")
	require.True(t, found)
	require.Equal(t, map[string]any{"X": 1.0, "Y": 2.0}, generic)
	_, found = c.Get("missing")
	require.False(t, found)
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
