// Package jsonx holds the JSON operations of context flow: deep merge of
// objects and comparison of decoded values.
package jsonx

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"strconv"
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
	// Both only pass through to the encoded result.
	ma, err := DecodeObjectShared(a)
	if err != nil {
		return nil, err
	}
	mb, err := DecodeObjectShared(b)
	if err != nil {
		return nil, err
	}
	if ma == nil {
		ma = map[string]json.RawMessage{}
	}
	if err := Merge(ma, mb); err != nil {
		return nil, err
	}
	return EncodeObject(ma)
}

// Decode decodes raw into a generic value (float64 numbers, maps, slices).
func Decode(raw json.RawMessage) (any, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	return v, nil
}

// DecodeExact decodes raw like Decode, but keeps numbers as json.Number,
// so that comparisons do not round integers beyond 2^53.
func DecodeExact(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// Normalize round-trips a Go value through JSON so that it compares with
// decoded values: numbers become json.Number, structs become maps.
func Normalize(v any) (any, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return DecodeExact(raw)
}

// number returns a decoded number (json.Number or float64) exactly.
func number(v any) (*big.Rat, bool) {
	switch x := v.(type) {
	case json.Number:
		return new(big.Rat).SetString(string(x))
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return nil, false
		}
		return new(big.Rat).SetFloat64(x), true
	}
	return nil, false
}

// Equal reports whether two decoded JSON values are equal; numbers are
// equal when their values are (1 and 1.0), exactly.
func Equal(a, b any) bool {
	if x, ok := number(a); ok {
		y, ok := number(b)
		return ok && x.Cmp(y) == 0
	}
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, xv := range x {
			yv, has := y[k]
			if !has || !Equal(xv, yv) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !Equal(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}

// Compare orders two decoded values: numbers numerically (exactly) and
// strings lexically. ok is false when the values are not both numbers or
// both strings.
func Compare(a, b any) (cmp int, ok bool) {
	if x, isNum := number(a); isNum {
		y, isNum := number(b)
		if !isNum {
			return 0, false
		}
		return x.Cmp(y), true
	}
	switch x := a.(type) {
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

// maxIntegerDigits is the length of the largest Go integer, uint64's
// 18446744073709551615: a longer integer fits no integer type.
const maxIntegerDigits = 20

// IntegerForms rewrites every number in the valid JSON text raw whose
// value is an integer but that is written with a fraction or an exponent
// (1e2, 100.0, -1.50E+2), or as -0, as a plain integer (100, 100, -150,
// 0), and reports
// whether it changed anything. encoding/json decodes only plain integers
// into integer types; after this, every integral value decodes. Numbers
// of more than 20 digits, which no Go integer holds, stay as written.
func IntegerForms(raw []byte) ([]byte, bool) {
	var out []byte
	last := 0
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case c == '"':
			for i++; i < len(raw) && raw[i] != '"'; i++ {
				if raw[i] == '\\' {
					i++
				}
			}
		case c == '-' || (c >= '0' && c <= '9'):
			j := i
			for j < len(raw) && strings.IndexByte("+-.0123456789eE", raw[j]) >= 0 {
				j++
			}
			if plain, ok := integerForm(string(raw[i:j])); ok {
				out = append(append(out, raw[last:i]...), plain...)
				last = j
			}
			i = j - 1
		}
	}
	if out == nil {
		return raw, false
	}
	return append(out, raw[last:]...), true
}

// integerForm returns the JSON number n as a plain integer when it is
// written with a fraction or an exponent, or as -0 (Go's encoding of a
// negative zero, which unsigned types refuse), its value is an integer,
// and that integer has at most maxIntegerDigits digits.
func integerForm(n string) (string, bool) {
	if !strings.ContainsAny(n, ".eE") {
		if n == "-0" {
			return "0", true
		}
		return "", false
	}
	neg := strings.HasPrefix(n, "-")
	mantissa, exp, _ := strings.Cut(strings.ToLower(strings.TrimPrefix(n, "-")), "e")
	intPart, frac, _ := strings.Cut(mantissa, ".")
	digits := strings.TrimLeft(intPart+frac, "0")
	if digits == "" {
		return "0", true // zero in any form, -0 included
	}
	e := 0
	if exp != "" {
		v, err := strconv.Atoi(exp)
		if err != nil || v > maxIntegerDigits+len(frac) || v < -len(intPart+frac) {
			return "", false // too large for any integer, or a fraction
		}
		e = v
	}
	// The value is digits × 10^shift.
	switch shift := e - len(frac); {
	case shift >= 0:
		digits += strings.Repeat("0", shift)
	case -shift >= len(digits) || strings.Trim(digits[len(digits)+shift:], "0") != "":
		return "", false // a fraction
	default:
		digits = digits[:len(digits)+shift]
	}
	if len(digits) > maxIntegerDigits {
		return "", false
	}
	if neg {
		digits = "-" + digits
	}
	return digits, true
}
