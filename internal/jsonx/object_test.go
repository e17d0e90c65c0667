package jsonx

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// objectInputs are JSON texts, objects or not, valid or not.
var objectInputs = []string{
	`{}`, ` { } `, "\t\r\n{\n}\n", `{"a":1}`, `{"i": 5}`, `{"a": 1, "b": 2}`, `{ "a" : "x" , "b" : [ 1 , 2 ] }`,
	`{"a":1,"a":2}`, `{"a":{"b":1},"a":{"c":2}}`, `{"":0}`, `{"a":null,"b":true,"c":false}`,
	`{"n":-0.5e-300,"m":1E+400,"big":123456789012345678901234567890,"z":0}`,
	`{"s":"with \"quotes\" and \\ and \/ and \u0041 and \ud83d\ude00"}`, `{"s":"<b>&amp;</b>"}`,
	"{\"s\":\"line\u2028sep\u2029\"}", `{"é":"ü","日本":"語"}`, "{\"k\xff\":1}", `{"k\u00e9":1}`, `{"k\n":1}`,
	`{"\u0000":1}`, `{"a\"b":1}`, `{"a\\b":1}`, `{"<>&":1}`,
	`{"deep":{"a":[{"b":{"c":[1,[2,[3,{"d":"}]\"["}]]]}}]}}`, `{"arr":[],"obj":{},"str":"","sp":"  "}`,
	`{"a": {"x": 1, "y": [1, 2, {"z": "w w"}]}, "b": "v"}`,
	`null`, ` null `, `[]`, `[1,2]`, `"str"`, `5`, `true`, ``, ` `, `{`, `}`, `{"a"}`, `{"a":}`, `{"a":1,}`,
	`{"a":1}x`, `{"a":1} {}`, `{'a':1}`, `{a:1}`, `{"a":01}`, `{"a":"\x"}`, "{\"a\":\"\x01\"}", `{"a":tru}`,
	`{"a":1}}`, `{"a":[1,2}`, "{\"a\":\"\xff\"}", `{"a":"\ud800"}`,
}

func unmarshalMap(raw []byte) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	err := json.Unmarshal(raw, &m)
	return m, err
}

func requireDecodesAsUnmarshal(t *testing.T, raw []byte) {
	t.Helper()
	want, wantErr := unmarshalMap(raw)
	for _, decode := range []func([]byte) (map[string]json.RawMessage, error){DecodeObject, DecodeObjectShared} {
		got, err := decode(raw)
		if wantErr != nil {
			require.EqualError(t, err, wantErr.Error(), "%q", raw)
			continue
		}
		require.NoError(t, err, "%q", raw)
		require.Equal(t, want, got, "%q", raw)
		require.Equal(t, want == nil, got == nil, "%q", raw)
	}
}

func requireEncodesAsMarshal(t *testing.T, m map[string]json.RawMessage) {
	t.Helper()
	want, wantErr := json.Marshal(m)
	got, err := EncodeObject(m)
	if wantErr != nil {
		require.EqualError(t, err, wantErr.Error(), "%q", m)
		return
	}
	require.NoError(t, err, "%q", m)
	require.Equal(t, string(want), string(got), "%q", m)
}

// DecodeObject decodes as json.Unmarshal into a map of raw members does:
// the same members or the same error, for objects and everything else.
func TestDecodeObjectMatchesUnmarshal(t *testing.T) {
	t.Parallel()
	for _, in := range objectInputs {
		requireDecodesAsUnmarshal(t, []byte(in))
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 3000 {
		requireDecodesAsUnmarshal(t, randomObject(rng, 0))
	}
}

// The members share one copy of the input: changing the input afterwards
// changes none of them, and appending to one overwrites no other.
func TestDecodeObjectCopies(t *testing.T) {
	t.Parallel()
	raw := []byte(`{"a":"x","b":"y"}`)
	m, err := DecodeObject(raw)
	require.NoError(t, err)
	copy(raw, strings.Repeat("#", len(raw)))
	_ = append(m["a"], "zzzz"...)
	require.Equal(t, `"x"`, string(m["a"]))
	require.Equal(t, `"y"`, string(m["b"]))
}

// DecodeObjectShared's members are slices of its input.
func TestDecodeObjectShares(t *testing.T) {
	t.Parallel()
	raw := []byte(`{"a":"x","b":"y"}`)
	m, err := DecodeObjectShared(raw)
	require.NoError(t, err)
	copy(raw, `{"a":"z"`)
	require.Equal(t, `"z"`, string(m["a"]))
	require.Equal(t, `"y"`, string(m["b"]))
}

// EncodeObject encodes as json.Marshal encodes the map.
func TestEncodeObjectMatchesMarshal(t *testing.T) {
	t.Parallel()
	requireEncodesAsMarshal(t, nil)
	requireEncodesAsMarshal(t, map[string]json.RawMessage{})
	requireEncodesAsMarshal(t, map[string]json.RawMessage{"null": nil})
	requireEncodesAsMarshal(t, map[string]json.RawMessage{"empty": {}})
	for _, in := range objectInputs {
		if m, err := unmarshalMap([]byte(in)); err == nil && m != nil {
			requireEncodesAsMarshal(t, m)
			// Each member as a key, too.
			keyed := map[string]json.RawMessage{}
			for k, v := range m {
				keyed[string(v)] = json.RawMessage(`1`)
				keyed[k+"\x00\xfe"] = v
			}
			requireEncodesAsMarshal(t, keyed)
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for range 3000 {
		m, err := unmarshalMap(randomObject(rng, 0))
		if err == nil && m != nil {
			requireEncodesAsMarshal(t, m)
		}
	}
}

var plainKeys = []string{"", "i", "run", "a b", "<&>", "/", "é", "日本", "\u2028", "x\u2029", "\U0001F600"}

// randomObject returns an object with random keys and members, laid out
// with random whitespace; once in a while a byte of it is changed, so
// that some are not valid.
func randomObject(rng *rand.Rand, depth int) []byte {
	var b strings.Builder
	space := func() {
		for range rng.IntN(3) {
			b.WriteByte(" \t\r\n"[rng.IntN(4)])
		}
	}
	space()
	b.WriteByte('{')
	for i := range rng.IntN(6) {
		if i > 0 {
			space()
			b.WriteByte(',')
		}
		space()
		if rng.IntN(4) == 0 {
			b.WriteString(randomJSONString(rng))
		} else {
			// A key without escapes, which DecodeObject decodes itself.
			b.WriteString(`"` + plainKeys[rng.IntN(len(plainKeys))] + plainKeys[rng.IntN(len(plainKeys))] + `"`)
		}
		space()
		b.WriteByte(':')
		space()
		b.Write(randomValue(rng, depth))
		space()
	}
	b.WriteByte('}')
	space()
	out := []byte(b.String())
	if len(out) > 0 && rng.IntN(20) == 0 {
		out[rng.IntN(len(out))] = byte(rng.IntN(256))
	}
	return out
}

func randomValue(rng *rand.Rand, depth int) []byte {
	switch n := rng.IntN(10); {
	case n < 2 && depth < 3:
		return randomObject(rng, depth+1)
	case n < 3 && depth < 3:
		var b strings.Builder
		b.WriteString("[ ")
		for i := range rng.IntN(4) {
			if i > 0 {
				b.WriteString(" ,\n")
			}
			b.Write(randomValue(rng, depth+1))
		}
		b.WriteString(" ]")
		return []byte(b.String())
	case n < 6:
		return []byte(randomJSONString(rng))
	case n < 8:
		return []byte([]string{"0", "-1", "3.25", "1e400", "-0.0E-7", "12345678901234567890123"}[rng.IntN(6)])
	}
	return []byte([]string{"true", "false", "null"}[rng.IntN(3)])
}

// randomJSONString returns a JSON string literal: plain text, escapes of
// every kind, characters json.Marshal escapes, and raw bytes that are not
// UTF-8.
func randomJSONString(rng *rand.Rand) string {
	var b strings.Builder
	b.WriteByte('"')
	for range rng.IntN(8) {
		switch rng.IntN(8) {
		case 0:
			b.WriteString([]string{`\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, `\u0000`, `\u00e9`, `\ud83d\ude00`, `\ud800`, `\u2028`}[rng.IntN(13)])
		case 1:
			b.WriteString([]string{"<", ">", "&", "\u2028", "\u2029", "é", "日", "\U0001F600"}[rng.IntN(8)])
		case 2:
			b.WriteByte(byte(0x80 + rng.IntN(0x80)))
		default:
			b.WriteByte(byte(0x20 + rng.IntN(0x5f)))
		}
	}
	s := b.String()
	if strings.HasSuffix(s, `\`) && !strings.HasSuffix(s, `\\`) {
		s += `\`
	}
	return s + `"`
}

func FuzzDecodeObject(f *testing.F) {
	for _, in := range objectInputs {
		f.Add([]byte(in))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		requireDecodesAsUnmarshal(t, raw)
		if m, err := unmarshalMap(raw); err == nil && m != nil {
			requireEncodesAsMarshal(t, m)
		}
	})
}

// AppendString writes strings as json.Marshal does.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", `"q" \ /`, "<>&", "\x00\x01\x1f\x7f", "\b\f\n\r\t", "é 日本 😀",
		"\u2028\u2029", "\ufffd", "\xff", "a\xc3", "\xed\xa0\x80", "\xf4\x90\x80\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		require.NoError(t, err)
		require.Equal(t, string(want), string(AppendString(nil, s)))
	})
}

// A context decoded and encoded again, as a task's input read back from
// PostgreSQL (jsonb's layout) and its output, with encoding/json and with
// DecodeObject and EncodeObject.
func BenchmarkObjectRoundTrip(b *testing.B) {
	for _, in := range []string{
		`{"i": 4242}`,
		`{"run": "0190a7a0-1b2c-7d3e-8f40-123456789abc", "step": 3, "tags": ["a", "b"], "meta": {"owner": "x", "n": 1.5}}`,
	} {
		raw := []byte(in)
		b.Run("encoding/json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var m map[string]json.RawMessage
				if err := json.Unmarshal(raw, &m); err != nil {
					b.Fatal(err)
				}
				if _, err := json.Marshal(m); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("jsonx", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				m, err := DecodeObject(raw)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := EncodeObject(m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
