package jsonx

import (
	"encoding/json"
	"errors"
	"slices"
	"unicode/utf8"
)

// A context is a JSON object kept as its members: a map from key to the
// member's raw JSON. Every task decodes its input into one and encodes its
// output from one, and every step of context flow (a merge, a trigger
// rule's view) does both again; encoding/json does it by reflection. The
// two functions below do it by hand and produce exactly what encoding/json
// produces (object_test.go holds them to it), falling back to encoding/json
// for what they do not handle themselves.

// DecodeObject decodes a JSON object into its members, exactly as
// json.Unmarshal into a map[string]json.RawMessage does: the same keys
// (later duplicates win), the same values (the member's bytes, without the
// whitespace around them) and the same errors. The values share one copy
// of raw.
func DecodeObject(raw []byte) (map[string]json.RawMessage, error) {
	return decode(raw, true)
}

// DecodeObjectShared is DecodeObject for a caller that only reads the
// members while it uses them, and does not change raw meanwhile: the
// values may be slices of raw rather than of a copy.
func DecodeObjectShared(raw []byte) (map[string]json.RawMessage, error) {
	return decode(raw, false)
}

func decode(raw []byte, copied bool) (map[string]json.RawMessage, error) {
	if m, ok := decodeObject(raw, copied); ok {
		return m, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	return m, nil
}

// decodeObject is DecodeObject for a valid object whose keys need no
// unescaping, its values slices of a copy of raw or of raw itself; ok is
// false for any other input.
func decodeObject(raw []byte, copied bool) (m map[string]json.RawMessage, ok bool) {
	i := skipSpace(raw, 0)
	if i == len(raw) || raw[i] != '{' || !json.Valid(raw) {
		return nil, false
	}
	// From here raw is valid JSON, so only the keys need checking.
	buf := raw
	if copied {
		buf = slices.Clone(raw)
	}
	m = make(map[string]json.RawMessage)
	i = skipSpace(buf, i+1)
	if buf[i] == '}' {
		return m, true
	}
	for {
		end, plain := plainString(buf, i)
		if !plain {
			return nil, false
		}
		key := string(buf[i+1 : end-1])
		i = skipSpace(buf, end)
		i = skipSpace(buf, i+1) // the colon
		end = valueEnd(buf, i)
		m[key] = buf[i:end:end]
		i = skipSpace(buf, end)
		if buf[i] == '}' {
			return m, true
		}
		i = skipSpace(buf, i+1) // the comma
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString returns the end (after the closing quote) of the string that
// starts at b[i], and whether its text is its bytes as they are: no escape,
// and valid UTF-8 (encoding/json replaces invalid bytes in a key).
func plainString(b []byte, i int) (end int, plain bool) {
	for j := i + 1; j < len(b); {
		c := b[j]
		switch {
		case c == '"':
			return j + 1, true
		case c == '\\':
			return 0, false
		case c < utf8.RuneSelf:
			j++
		default:
			r, size := utf8.DecodeRune(b[j:])
			if r == utf8.RuneError && size == 1 {
				return 0, false
			}
			j += size
		}
	}
	return 0, false
}

// valueEnd returns the end of the valid JSON value that starts at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = stringEnd(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	return j
}

// stringEnd returns the end (after the closing quote) of the valid JSON
// string that starts at b[i].
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// EncodeObject encodes members as one JSON object, exactly as json.Marshal
// encodes the map: keys sorted and escaped as encoding/json escapes
// strings, values compacted with '<', '>', '&', U+2028 and U+2029
// escaped, and a nil map as null. Each value must be valid JSON, as
// DecodeObject and json.Marshal produce; a nil value is null.
func EncodeObject(members map[string]json.RawMessage) ([]byte, error) {
	if members == nil {
		return []byte("null"), nil
	}
	keys := make([]string, 0, len(members))
	size := 2
	for k, v := range members {
		keys = append(keys, k)
		size += len(k) + len(v) + 4
	}
	slices.Sort(keys)
	b := make([]byte, 0, size)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendString(b, k)
		b = append(b, ':')
		v := members[k]
		switch {
		case v == nil:
			b = append(b, "null"...)
		case len(v) == 0:
			return nil, errors.New("json: error calling MarshalJSON for type json.RawMessage: unexpected end of JSON input")
		default:
			b = appendCompact(b, v)
		}
	}
	return append(b, '}'), nil
}

const hexDigits = "0123456789abcdef"

// appendCompact appends the valid JSON value v without whitespace outside
// strings, and with '<', '>', '&', U+2028 and U+2029 escaped as
// json.Marshal escapes them (those can only be inside strings).
func appendCompact(b, v []byte) []byte {
	start := 0 // v[start:i] is still to be copied as it is
	inString := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '<' || c == '>' || c == '&':
			b = append(b, v[start:i]...)
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			start = i + 1
		case c == 0xe2 && i+2 < len(v) && v[i+1] == 0x80 && v[i+2]&^1 == 0xa8:
			b = append(b, v[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[v[i+2]&0xf])
			i += 2
			start = i + 1
		case inString:
			switch c {
			case '\\':
				i++ // the escaped character is never one of the above
			case '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			b = append(b, v[start:i]...)
			start = i + 1
		}
	}
	return append(b, v[start:]...)
}

// AppendString appends s as a JSON string the way json.Marshal writes one:
// '"' and '\\' escaped, control characters as \n, \r, \t, \b, \f or
// \u00XX, '<', '>' and '&' as \u003c, \u003e and \u0026, U+2028 and U+2029
// as \u2028 and \u2029, and each byte of invalid UTF-8 as \ufffd.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0 // s[start:i] is still to be copied as it is
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
