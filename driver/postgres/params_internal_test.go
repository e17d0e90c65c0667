package postgres

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/stretchr/testify/require"
)

// encode encodes value as a parameter of type oid, as pgx does for a
// statement: in the format pgx prefers for the type (binary for arrays)
// when the server described the statement, and in text format for oid 0
// (default_query_exec_mode exec, where the Go type decides).
func encode(t *testing.T, m *pgtype.Map, oid uint32, value any) []byte {
	t.Helper()
	format := m.FormatCodeForOID(oid)
	if oid == 0 {
		format = pgtype.TextFormatCode
	}
	buf, err := m.Encode(oid, format, value, nil)
	require.NoError(t, err, "encode %T as oid %d", value, oid)
	return buf
}

// The array parameters send exactly the bytes pgx sends for the plain
// slices the backend bound before (so the server sees the same values),
// in both the described (binary) and the exec-mode (text) encodings, with
// the backend's types registered (arrayCodec encodes them) and without
// (pgx encodes them).
func TestArrayParamsEncodeAsPlainSlices(t *testing.T) {
	t.Parallel()
	m := pgtype.NewMap()
	RegisterTypes(m)
	bare := pgtype.NewMap()
	// Registration of the plain slices, for exec mode, as it was.
	m.RegisterDefaultPgType([]string{}, "_text")
	m.RegisterDefaultPgType([]*string{}, "_text")
	m.RegisterDefaultPgType([]int32{}, "_int4")
	m.RegisterDefaultPgType([]time.Time{}, "_timestamptz")
	m.RegisterDefaultPgType([]*time.Time{}, "_timestamptz")

	ids := []uuid.UUID{uuid.Nil, uuid.MustParse("0190a7a0-1b2c-7d3e-8f40-123456789abc"), uuid.Max}
	texts := []string{"", "running", `quote " backslash \ brace { } comma , space`, "é ✓ \u2028", "NULL"}
	ints := []int{0, 1, -1, 255, 256, 1 << 30, -(1 << 31)}
	local := time.FixedZone("x", -7*3600)
	times := []time.Time{
		time.Date(2026, 11, 26, 10, 0, 0, 123456789, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 999999000, local),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(1970, 1, 1, 0, 0, 0, 1999, time.UTC),
		time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 999999500, time.UTC),
		time.Now(),
	}
	docs := []json.RawMessage{nil, json.RawMessage(`{}`), json.RawMessage(`{"a":"b\"c","n":[1,2.5e300]}`), nil, json.RawMessage(`{"é":"\u0000x"}`)}

	plainIDs := make([][16]byte, len(ids))
	for i, id := range ids {
		plainIDs[i] = id
	}
	plainInts := make([]int32, len(ints))
	newInts := make(int4Array, len(ints))
	for i, n := range ints {
		plainInts[i], newInts[i] = int32(n), pgInt4(n)
	}
	newTexts := textsOf(texts)
	plainTimes := make([]time.Time, len(times))
	optTimes := make([]*time.Time, len(times)+1)
	newTimes := make(timeArray, len(times))
	newOptTimes := make(timeArray, len(times)+1)
	for i, tm := range times {
		plainTimes[i], newTimes[i] = tm.UTC(), pgTime(tm)
		optTimes[i+1], newOptTimes[i+1] = utcPtr(&tm), pgTimePtr(&tm)
	}
	newOptTimes[0] = pgTimePtr(nil)
	optDocs := make([]*string, len(docs))
	defaultDocs := make([]string, len(docs))
	for i, d := range docs {
		defaultDocs[i] = "{}"
		if d != nil {
			s := string(d)
			optDocs[i], defaultDocs[i] = &s, s
		}
	}
	optUUIDs := []pgtype.UUID{pgID(ids[0]), {}, pgID(ids[2])}

	cases := []struct {
		name       string
		oid        uint32
		plain, new any
	}{
		{"uuid", pgtype.UUIDArrayOID, plainIDs, pgIDs(ids)},
		{"nullable uuid", pgtype.UUIDArrayOID, optUUIDs, uuidArray(optUUIDs)},
		{"text", pgtype.TextArrayOID, texts, newTexts},
		{"int4", pgtype.Int4ArrayOID, plainInts, newInts},
		{"timestamptz", pgtype.TimestamptzArrayOID, plainTimes, newTimes},
		{"nullable timestamptz", pgtype.TimestamptzArrayOID, optTimes, newOptTimes},
		{"json or NULL", pgtype.TextArrayOID, optDocs, jsonArray(len(docs), func(i int) json.RawMessage { return docs[i] }, "")},
		{"json or {}", pgtype.TextArrayOID, defaultDocs, jsonArray(len(docs), func(i int) json.RawMessage { return docs[i] }, "{}")},
		{"empty", pgtype.TextArrayOID, []string{}, textArray{}},
	}
	for _, tc := range cases {
		for _, oid := range []uint32{tc.oid, 0} {
			t.Run(fmt.Sprintf("%s/oid %d", tc.name, oid), func(t *testing.T) {
				want := encode(t, m, oid, tc.plain)
				require.Equal(t, want, encode(t, m, oid, tc.new))
				if oid != 0 {
					_, ours := m.PlanEncode(oid, pgtype.BinaryFormatCode, tc.new).(binaryArrayPlan)
					require.True(t, ours, "arrayCodec does not encode %T", tc.new)
					require.Equal(t, want, encode(t, bare, oid, tc.new))
				}
			})
		}
	}
}

// RegisterTypes can be called again (a pool's AfterConnect, say) and
// leaves arrayCodec in place.
func TestRegisterTypesTwice(t *testing.T) {
	t.Parallel()
	m := pgtype.NewMap()
	RegisterTypes(m)
	RegisterTypes(m)
	typ, ok := m.TypeForOID(pgtype.TextArrayOID)
	require.True(t, ok)
	_, ok = typ.Codec.(*arrayCodec)
	require.True(t, ok)
	require.Equal(t, encode(t, pgtype.NewMap(), pgtype.TextArrayOID, []string{"a"}), encode(t, m, pgtype.TextArrayOID, textsOf([]string{"a"})))
}

// Encoding an array parameter allocates nothing per element, and into a
// buffer large enough, nothing at all.
func TestArrayParamsAllocateNothingPerElement(t *testing.T) {
	m := pgtype.NewMap()
	RegisterTypes(m)
	now := time.Now()
	build := func(n int) []any {
		ids, texts, ints, times := make(uuidArray, n), make(textArray, n), make(int4Array, n), make(timeArray, n)
		for i := range n {
			ids[i], texts[i], ints[i], times[i] = pgID(uuid.New()), pgText(fmt.Sprint("text ", i)), pgInt4(1000+i), pgTime(now)
		}
		docs := jsonArray(n, func(int) json.RawMessage { return json.RawMessage(`{"a":1}`) }, "{}")
		return []any{ids, texts, ints, times, docs}
	}
	oids := []uint32{pgtype.UUIDArrayOID, pgtype.TextArrayOID, pgtype.Int4ArrayOID, pgtype.TimestamptzArrayOID, pgtype.TextArrayOID}
	allocs := func(n int) float64 {
		values := build(n)
		buf := make([]byte, 0, 1<<16)
		return testing.AllocsPerRun(20, func() {
			for i, v := range values {
				if _, err := m.Encode(oids[i], pgtype.BinaryFormatCode, v, buf[:0]); err != nil {
					panic(err)
				}
			}
		})
	}
	require.Zero(t, allocs(1))
	require.Zero(t, allocs(100))
}

// The event insert's seven arrays for 500 events (a claim of 100
// single-task runs writes 300, a completion 200), encoded into pgx's
// parameter buffer as a statement does (from a fresh 256-byte buffer),
// by pgx's array codec and by arrayCodec.
func BenchmarkEventArraysEncode(b *testing.B) {
	const n = 500
	ids, pids, tids := make(uuidArray, n), make(uuidArray, n), make(uuidArray, n)
	types, workers, created := make(textArray, n), make(textArray, n), make(timeArray, n)
	now := time.Now()
	for i := range n {
		ids[i], pids[i], tids[i] = pgID(uuid.New()), pgID(uuid.New()), pgID(uuid.New())
		types[i], workers[i], created[i] = pgText("task_completed"), pgText(uuid.NewString()), pgTime(now)
	}
	data := jsonArray(n, func(int) json.RawMessage { return json.RawMessage(`{"attempt":1,"duration_ms":3}`) }, "{}")
	values := []any{ids, pids, tids, types, data, workers, created}
	oids := []uint32{pgtype.UUIDArrayOID, pgtype.UUIDArrayOID, pgtype.UUIDArrayOID, pgtype.TextArrayOID, pgtype.TextArrayOID,
		pgtype.TextArrayOID, pgtype.TimestamptzArrayOID}
	registered := pgtype.NewMap()
	RegisterTypes(registered)
	for _, tc := range []struct {
		name string
		m    *pgtype.Map
	}{{"pgx", pgtype.NewMap()}, {"arrayCodec", registered}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				buf := make([]byte, 0, 256)
				for i, v := range values {
					var err error
					if buf, err = tc.m.Encode(oids[i], pgtype.BinaryFormatCode, v, buf); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
