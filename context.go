package cloacina

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"sync"
	"unicode/utf8"

	"github.com/cloacina-go/cloacina/internal/jsonx"
)

// Context is the JSON key/value data a run carries from task to task. A
// task receives a Context, reads what its dependencies produced and writes
// its own results; what it holds when the task returns is the task's
// output. Values are encoded to JSON when they are set, so a value that
// cannot be stored is rejected at once, naming its key. That includes text
// holding a NUL character, and keys and text (in a [json.RawMessage]) that
// are not UTF-8: SQLite would keep them, PostgreSQL cannot, and a workflow
// behaves the same on both. So is a value that nests arrays and objects
// more than 9,999 levels deep, which the context holding it would take
// beyond the 10,000 levels that encoding/json reads.
//
// Each value is kept as JSON text, and a run reads back the same bytes on
// every backend. The text is the value as encoding/json encodes it (a
// map's keys sorted, a struct's fields in order) or, for a value given as
// JSON ([json.RawMessage], [Context.UnmarshalJSON]), as written: nested
// keys keep their order and numbers their form (1e2, 1.50, integers
// beyond 2^53 to the last digit). Either way it is compact, without
// spaces between tokens, and <, > and & are escaped (\u003c, \u003e,
// \u0026), as encoding/json writes them. A context encodes as one object
// with its keys sorted ([Context.MarshalJSON]): that is what a task's
// output, a run's input and its final context are. Where objects under
// the same key are merged (see Context flow in the package docs), the
// merged object is encoded anew, its keys sorted.
//
// A Context is safe for concurrent use by the goroutines of one task. The
// zero Context is empty and ready to use, like one from [NewContext].
type Context struct {
	mu     sync.RWMutex
	values map[string]json.RawMessage
}

// NewContext returns an empty Context.
func NewContext() *Context {
	return &Context{values: map[string]json.RawMessage{}}
}

// ContextFrom returns a Context holding every entry of m. It fails, naming
// the key, when a value cannot be encoded as JSON.
func ContextFrom(m map[string]any) (*Context, error) {
	c := NewContext()
	for k, v := range m {
		if err := c.Set(k, v); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// contextFromJSON decodes a stored context; null or empty is an empty one.
func contextFromJSON(raw json.RawMessage) (*Context, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return NewContext(), nil
	}
	values, err := jsonx.DecodeObject(raw)
	if err != nil {
		return nil, fmt.Errorf("decode context: %w", err)
	}
	if values == nil {
		values = map[string]json.RawMessage{}
	}
	return &Context{values: values}, nil
}

func encodeValue(key string, value any) (json.RawMessage, error) {
	if key == "" {
		return nil, errors.New("context key is empty: give every value a name")
	}
	raw, err := json.Marshal(value)
	if err != nil {
		return nil, fmt.Errorf("context key %q: value of type %T cannot be stored as JSON: %w", key, value, err)
	}
	if err := checkEntry(key, raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// checkEntry refuses a key that one of the backends could not store (see
// unstorable), a value holding text that is not UTF-8 (json.Marshal
// replaces invalid bytes in a Go string, but keeps those of a
// json.RawMessage), a value nested too deeply for a context to hold (see
// maxValueDepth), or an encoded value that PostgreSQL would store as json
// text but could not read as a value (see jsonProblem).
func checkEntry(key string, raw json.RawMessage) error {
	if why := unstorable(key); why != "" {
		return fmt.Errorf("context key %q %s: use a key of UTF-8 text without NUL characters", key, why)
	}
	if !utf8.Valid(raw) {
		return fmt.Errorf("context key %q: the value holds text that is not valid UTF-8, which PostgreSQL cannot store: encode text as UTF-8 (json.Marshal does so for a Go string), or store binary data as []byte (encoded as base64)", key)
	}
	if nestedTooDeep(raw) {
		return fmt.Errorf("context key %q: the value is nested more than %d levels deep, which a context cannot hold (encoding/json reads at most %d levels, the context itself being one): flatten it, or store it as a string",
			key, maxValueDepth, maxValueDepth+1)
	}
	if found, fix := jsonProblem(raw); found != "" {
		return fmt.Errorf("context key %q: the value holds %s, which PostgreSQL's JSON functions cannot read: %s", key, found, fix)
	}
	return nil
}

// maxValueDepth is how deeply a context value may nest arrays and
// objects: encoding/json decodes at most 10,000 levels, and the context
// holding the value is one of them. A deeper value would be stored, and
// then no task could receive it and no run could merge it.
const maxValueDepth = 9999

// nestedTooDeep reports whether the valid JSON text raw nests arrays and
// objects more than maxValueDepth levels deep.
func nestedTooDeep(raw []byte) bool {
	depth := 0
	for i := 0; i < len(raw); i++ {
		switch raw[i] {
		case '"':
			for i++; i < len(raw) && raw[i] != '"'; i++ {
				if raw[i] == '\\' {
					i++
				}
			}
		case '[', '{':
			if depth++; depth > maxValueDepth {
				return true
			}
		case ']', '}':
			depth--
		}
	}
	return false
}

// Insert adds a new key. It fails with ErrKeyExists when the key is already
// present: use Update or Set to change it.
func (c *Context) Insert(key string, value any) error {
	raw, err := encodeValue(key, value)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.values[key]; ok {
		return fmt.Errorf("context key %q: %w (use Update or Set to change it)", key, ErrKeyExists)
	}
	c.put(key, raw)
	return nil
}

// Update changes an existing key. It fails with ErrKeyNotFound when the key
// is missing: use Insert or Set to add it.
func (c *Context) Update(key string, value any) error {
	raw, err := encodeValue(key, value)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.values[key]; !ok {
		return fmt.Errorf("context key %q: %w (use Insert or Set to add it)", key, ErrKeyNotFound)
	}
	c.values[key] = raw
	return nil
}

// Set adds or changes a key.
func (c *Context) Set(key string, value any) error {
	raw, err := encodeValue(key, value)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.put(key, raw)
	return nil
}

// put stores raw under key, making the map of a zero Context; c.mu is
// held.
func (c *Context) put(key string, raw json.RawMessage) {
	if c.values == nil {
		c.values = map[string]json.RawMessage{}
	}
	c.values[key] = raw
}

// Get returns the value of key decoded into a generic Go value (numbers are
// float64, objects map[string]any, arrays []any), and whether it exists.
// Use the generic [Get] function for a typed value.
func (c *Context) Get(key string) (any, bool) {
	raw, ok := c.Raw(key)
	if !ok {
		return nil, false
	}
	v, err := jsonx.Decode(raw)
	if err != nil {
		return nil, false
	}
	return v, true
}

// Raw returns the JSON text of key's value (see [Context] for its form),
// and whether it exists.
func (c *Context) Raw(key string) (json.RawMessage, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	raw, ok := c.values[key]
	return raw, ok
}

// Has reports whether key exists.
func (c *Context) Has(key string) bool {
	_, ok := c.Raw(key)
	return ok
}

// Delete removes key and reports whether it existed.
func (c *Context) Delete(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.values[key]
	delete(c.values, key)
	return ok
}

// Keys returns the keys in sorted order.
func (c *Context) Keys() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	keys := make([]string, 0, len(c.values))
	for k := range c.values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Len returns the number of keys.
func (c *Context) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.values)
}

// Clone returns an independent copy.
func (c *Context) Clone() *Context {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := &Context{values: make(map[string]json.RawMessage, len(c.values))}
	for k, v := range c.values {
		out.values[k] = v
	}
	return out
}

// MarshalJSON encodes the context as one JSON object with sorted keys,
// each value as the context holds it.
func (c *Context) MarshalJSON() ([]byte, error) {
	if c == nil {
		return []byte("{}"), nil
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if len(c.values) == 0 {
		return []byte("{}"), nil
	}
	return jsonx.EncodeObject(c.values)
}

// UnmarshalJSON replaces the context's contents with a JSON object. Each
// value keeps its text, compacted (see [Context]); of keys given twice,
// the last wins. Like Set, it refuses keys and values that cannot be
// stored on every backend.
func (c *Context) UnmarshalJSON(data []byte) error {
	fresh, err := contextFromJSON(data)
	if err != nil {
		return err
	}
	for k, raw := range fresh.values {
		if err := checkEntry(k, raw); err != nil {
			return err
		}
		// The form a stored context has, so that Raw returns the same
		// text before a run stores the value and after.
		compact, err := json.Marshal(raw)
		if err != nil {
			return fmt.Errorf("context key %q: %w", k, err)
		}
		fresh.values[k] = compact
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.values = fresh.values
	return nil
}

// String returns the context as JSON.
func (c *Context) String() string {
	b, err := c.MarshalJSON()
	if err != nil {
		return fmt.Sprintf("<context: %v>", err)
	}
	return string(b)
}

// Get returns the value of key decoded as T. It fails with ErrKeyNotFound
// when the key is missing and with ErrTypeMismatch, naming the key, the
// stored JSON and T, when the value does not decode as T.
//
// Values decode as encoding/json decodes them, but for one thing: a number
// whose value is an integer decodes into an integer type however it is
// written (1e2, 100.0 and -1.50E+2 as 100, 100 and -150), anywhere in T,
// as trigger rules compare numbers by value. A fraction (1.5) or an
// integer too large for the type is a mismatch.
func Get[T any](c *Context, key string) (T, error) {
	var zero T
	raw, ok := c.Raw(key)
	if !ok {
		return zero, fmt.Errorf("context key %q: %w", key, ErrKeyNotFound)
	}
	var v T
	err := json.Unmarshal(raw, &v)
	if err != nil {
		// Only numbers change: a value that failed for anything else fails
		// again. A json.RawMessage or json.Number inside T then sees the
		// integer form too, but only when some integer field needed it.
		if plain, changed := jsonx.IntegerForms(raw); changed {
			v = zero
			err = json.Unmarshal(plain, &v)
		}
	}
	if err != nil || (string(raw) == "null" && !nullable(reflect.TypeFor[T]())) {
		return zero, fmt.Errorf("context key %q holds %s, which does not decode as %s: %w", key, abbreviate(raw), reflect.TypeFor[T](), ErrTypeMismatch)
	}
	return v, nil
}

// nullable reports whether JSON null is a value of type t (json.Unmarshal
// leaves any other type untouched: null would read as the zero value).
func nullable(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice:
		return true
	}
	return false
}

func abbreviate(raw json.RawMessage) string {
	const limit = 60
	if len(raw) <= limit {
		return string(raw)
	}
	return string(raw[:limit]) + "…"
}

// mergeContexts deep-merges JSON objects in order: later keys win, and
// objects under the same key merge recursively.
func mergeContexts(parts []json.RawMessage) (json.RawMessage, error) {
	var merged map[string]json.RawMessage
	for _, p := range parts {
		if len(p) == 0 {
			continue
		}
		// The members only pass through to the encoded result.
		m, err := jsonx.DecodeObjectShared(p)
		if err != nil {
			return nil, fmt.Errorf("decode context: %w", err)
		}
		if merged == nil && m != nil {
			// The first object merged into nothing is itself; it is ours.
			merged = m
			continue
		}
		if merged == nil {
			merged = map[string]json.RawMessage{}
		}
		if err := jsonx.Merge(merged, m); err != nil {
			return nil, err
		}
	}
	if merged == nil {
		merged = map[string]json.RawMessage{}
	}
	return jsonx.EncodeObject(merged)
}
