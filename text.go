package cloacina

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Text the engine stores goes to SQLite and PostgreSQL alike, and
// PostgreSQL refuses two things SQLite keeps: a NUL character and invalid
// UTF-8 in text. A workflow that works on SQLite must keep working when it
// moves to PostgreSQL, so names and context data with them are rejected up
// front on both backends, and error texts, which no caller can fix, are
// made storable.
//
// Contexts are stored in json columns, which keep any valid JSON text as
// written. Some valid JSON is still no value PostgreSQL can read: its JSON
// operators (->>), jsonb and numeric refuse the escape \u0000, a lone
// UTF-16 surrogate and numbers numeric cannot hold — beyond its range, or
// with an exponent of 1073741823 or more, even on zero (and Go decodes a
// lone surrogate as U+FFFD, not as written). Contexts are refused with
// them on both backends, so that what a run stores stays readable by SQL
// and by Go alike.

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

// maxNameBytes bounds workflow, task and schedule names. PostgreSQL
// indexes them, and an index entry has to fit in a third of a page (about
// 2,700 bytes); a NOTIFY payload, which carries a workflow's name, in
// 8,000.
const maxNameBytes = 1024

// nameProblem says what is wrong with a name and how to fix it, or returns
// "" for a name every backend can store and index.
func nameProblem(s string) string {
	if why := unstorable(s); why != "" {
		return why + ": use UTF-8 text without NUL characters"
	}
	if len(s) > maxNameBytes {
		return fmt.Sprintf("is %d bytes long: use a name of at most %d bytes", len(s), maxNameBytes)
	}
	return ""
}

// shortName is s for an error message: its first 60 bytes when longer.
func shortName(s string) string {
	if len(s) <= 60 {
		return strconv.Quote(s)
	}
	cut := 60
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…"
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

// jsonProblem says what PostgreSQL's JSON functions could not read as a
// value in valid JSON text (the json column keeps the text, but ->>, casts
// to jsonb and numeric fail on it): a NUL character (\u0000), a lone UTF-16 surrogate escape, or
// a number numeric cannot hold (beyond its range, or with an exponent of
// 1073741823 or more, even on zero). It returns what it found and how
// to fix it, or "" when there is nothing.
func jsonProblem(raw []byte) (found, fix string) {
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case c == '"':
			for i++; i < len(raw) && raw[i] != '"'; i++ {
				if raw[i] != '\\' {
					continue
				}
				i++
				if i+4 >= len(raw) || raw[i] != 'u' {
					continue
				}
				r := hex4(raw[i+1 : i+5])
				switch {
				case r == 0:
					return `a NUL character (\u0000)`, "remove it, or store binary data as []byte (encoded as base64)"
				case r >= 0xD800 && r < 0xDC00 && i+10 < len(raw) && raw[i+5] == '\\' && raw[i+6] == 'u' &&
					hex4(raw[i+7:i+11]) >= 0xDC00 && hex4(raw[i+7:i+11]) < 0xE000:
					i += 6 // a surrogate pair: one character
				case r >= 0xD800 && r < 0xE000:
					return `a lone UTF-16 surrogate (\u` + string(raw[i+1:i+5]) + ")", "encode the text as valid UTF-8"
				}
				i += 4
			}
		case c == '-' || (c >= '0' && c <= '9'):
			j := i
			for j < len(raw) && strings.IndexByte("+-.0123456789eE", raw[j]) >= 0 {
				j++
			}
			if !numericFits(string(raw[i:j])) {
				return "the number " + abbreviate(raw[i:j]), "store it as a string"
			}
			i = j - 1
		}
	}
	return "", ""
}

// hex4 decodes four hex digits (valid JSON has nothing else after \u).
func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c-'a') + 10
		case c >= 'A' && c <= 'F':
			r |= rune(c-'A') + 10
		}
	}
	return r
}

// numericFits reports whether PostgreSQL's numeric holds the JSON number
// n: at most 131,072 digits before the decimal point and 16,383 after it.
func numericFits(n string) bool {
	mantissa, exp, _ := strings.Cut(strings.ToLower(strings.TrimPrefix(n, "-")), "e")
	intPart, frac, _ := strings.Cut(mantissa, ".")
	e := 0
	if exp != "" {
		v, err := strconv.Atoi(exp)
		if err != nil {
			return false // beyond any limit
		}
		e = v
	}
	if e >= 1<<30-1 || e <= -(1<<30-1) {
		return false // numeric refuses the exponent itself (INT_MAX/2), even on zero
	}
	scale := len(frac) - e // digits after the point, trailing zeros included
	if strings.Trim(intPart+frac, "0") == "" {
		return scale <= 16383 // zero has no digits before the point
	}
	return len(strings.TrimLeft(intPart, "0"))+e <= 131072 && scale <= 16383
}
