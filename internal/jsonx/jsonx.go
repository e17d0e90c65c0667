// Package jsonx holds the JSON operations of context flow: deep merge of
// objects and comparison of decoded values.
package jsonx

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

// IsObject reports whether raw is a JSON object.
func IsObject(raw json.RawMessage) bool {
	t := bytes.TrimLeft(raw, " \t\r\n")
	return len(t) > 0 && t[0] == '{'
}

// Merge merges src into dst: keys of src win, except that when both
// values are JSON objects they are merged recursively. dst is modified.
func Merge(dst, src map[string]json.RawMessage) error {
	for k, sv := range src {
		dv, ok := dst[k]
		if ok && IsObject(dv) && IsObject(sv) {
			merged, err := MergeRaw(dv, sv)
			if err != nil {
				return fmt.Errorf("merge key %q: %w", k, err)
			}
			dst[k] = merged
			continue
		}
		dst[k] = sv
	}
	return nil
}

// MergeRaw deep-merges two JSON objects and returns the encoded result.
func MergeRaw(a, b json.RawMessage) (json.RawMessage, error) {
	var ma, mb map[string]json.RawMessage
	if err := json.Unmarshal(a, &ma); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &mb); err != nil {
		return nil, err
	}
	if ma == nil {
		ma = map[string]json.RawMessage{}
	}
	if err := Merge(ma, mb); err != nil {
		return nil, err
	}
	return json.Marshal(ma)
}

// Decode decodes raw into a generic value (float64 numbers, maps, slices).
func Decode(raw json.RawMessage) (any, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	return v, nil
}

// Normalize round-trips a Go value through JSON so that it compares with
// decoded values: ints become float64, structs become maps.
func Normalize(v any) (any, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return Decode(raw)
}

// Equal reports whether two decoded JSON values are equal.
func Equal(a, b any) bool { return reflect.DeepEqual(a, b) }

// Compare orders two decoded values: numbers numerically and strings
// lexically. ok is false when the values are not both numbers or both
// strings.
func Compare(a, b any) (cmp int, ok bool) {
	switch x := a.(type) {
	case float64:
		y, isNum := b.(float64)
		if !isNum {
			return 0, false
		}
		switch {
		case x < y:
			return -1, true
		case x > y:
			return 1, true
		}
		return 0, true
	case string:
		y, isStr := b.(string)
		if !isStr {
			return 0, false
		}
		return strings.Compare(x, y), true
	}
	return 0, false
}

// Contains reports whether haystack contains needle: a substring of a
// string, an element of an array, or a key of an object.
func Contains(haystack, needle any) bool {
	switch h := haystack.(type) {
	case string:
		n, ok := needle.(string)
		return ok && strings.Contains(h, n)
	case []any:
		for _, e := range h {
			if Equal(e, needle) {
				return true
			}
		}
	case map[string]any:
		n, ok := needle.(string)
		if ok {
			_, has := h[n]
			return has
		}
	}
	return false
}
