package cloacina

import (
	"bytes"
	"strings"
	"unicode/utf8"
)

// Text the engine stores goes to SQLite and PostgreSQL alike, and
// PostgreSQL refuses two things SQLite keeps: a NUL character (in text
// columns, and as \u0000 in jsonb) and invalid UTF-8. A workflow that works
// on SQLite must keep working when it moves to PostgreSQL, so names and
// context data with them are rejected up front on both backends, and
// error texts, which no caller can fix, are made storable.

// unstorable says why s cannot be stored on every backend, or returns ""
// when it can.
func unstorable(s string) string {
	switch {
	case strings.IndexByte(s, 0) >= 0:
		return `contains a NUL character (\x00), which PostgreSQL cannot store`
	case !utf8.ValidString(s):
		return "is not valid UTF-8, which PostgreSQL cannot store"
	}
	return ""
}

// storableText returns s with each NUL character and invalid UTF-8 byte
// sequence replaced by U+FFFD, the replacement character (as JSON encoding
// does with invalid UTF-8).
func storableText(s string) string {
	if unstorable(s) == "" {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// jsonHasNUL reports whether JSON text holds a NUL character, which JSON
// can only spell as the escape \u0000.
func jsonHasNUL(raw []byte) bool {
	esc := []byte(`\u0000`)
	for i := 0; ; {
		j := bytes.Index(raw[i:], esc)
		if j < 0 {
			return false
		}
		j += i
		backslashes := 0
		for k := j - 1; k >= 0 && raw[k] == '\\'; k-- {
			backslashes++
		}
		if backslashes%2 == 0 {
			return true // the escape itself, not an escaped backslash before "u0000"
		}
		i = j + 1
	}
}
