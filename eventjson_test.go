package cloacina

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// jsonStrings are strings that exercise every escape json.Marshal makes.
var jsonStrings = []string{
	"", "plain text", "host-4242", "0123456789abcdef0123456789abcdef01234567",
	`say "hi"`, `back\slash`, `<script>alert("x") && y</script>`, "a/b",
	"\x00", "nul\x00inside", "\x01\x02\x1e\x1f", "\x7f", "\b\f\n\r\t", "line one\nline two\r\n\ttabbed",
	"é", "naïve café", "日本語", "😀 emoji", "\u2028", "x\u2029y", "\ufffd",
	"\xff", "\xc3", "a\xffb", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x80", "ok\xe2\x80\xa8ok",
	strings.Repeat("long ", 200) + "\"end\"",
}

var jsonTimes = []time.Time{
	{},
	time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC),
	time.Date(2026, 11, 26, 10, 0, 0, 123456789, time.UTC),
	time.Date(2026, 11, 26, 10, 0, 0, 120000000, time.UTC),
	time.Date(1999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("west", -7*3600-30*60)),
	time.Date(2000, 2, 29, 12, 0, 0, 1, time.FixedZone("east", 14*3600)),
	time.Date(2000, 1, 1, 0, 0, 0, 0, time.FixedZone("seconds", 3600+17)),
	time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
	time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
	time.Now(),
}

// badJSONTimes are times json.Marshal refuses.
var badJSONTimes = []time.Time{
	time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
	time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
	time.Date(2000, 1, 1, 0, 0, 0, 0, time.FixedZone("far", 24*3600)),
}

var jsonInts = []int{0, 1, -1, 2, 100, 1 << 31, -(1 << 31) - 1, math.MaxInt, math.MinInt}
var jsonInt64s = []int64{0, 1, -1, 999, 1 << 53, 1<<53 + 1, math.MaxInt64, math.MinInt64}

func requireSameJSON(t *testing.T, d *EventData) {
	t.Helper()
	want, err := json.Marshal(d)
	require.NoError(t, err)
	got, err := d.appendJSON(nil)
	require.NoError(t, err)
	require.Equal(t, string(want), string(got), "%#v", d)
}

// The hand-written encoder writes what json.Marshal writes, for each field
// alone, for the events the engine records, and for many random values.
func TestEventDataAppendJSONMatchesMarshal(t *testing.T) {
	t.Parallel()
	requireSameJSON(t, &EventData{})
	for _, s := range jsonStrings {
		requireSameJSON(t, &EventData{Error: s})
		requireSameJSON(t, &EventData{Reason: s})
		requireSameJSON(t, &EventData{RunnerName: s})
		requireSameJSON(t, &EventData{Workflow: s, WorkflowVersion: s})
	}
	for _, n := range jsonInts {
		requireSameJSON(t, &EventData{Attempt: n})
		requireSameJSON(t, &EventData{MaxAttempts: n, NextAttempt: n, RecoveryCount: n})
		requireSameJSON(t, &EventData{OutboxRows: &n})
	}
	for _, n := range jsonInt64s {
		requireSameJSON(t, &EventData{DelayMS: &n})
		requireSameJSON(t, &EventData{DurationMS: &n, Attempt: 3})
	}
	for _, tm := range jsonTimes {
		requireSameJSON(t, &EventData{RetryAt: &tm})
	}
	// The events the engine writes, as it writes them.
	dur, delay, rows := int64(12), int64(2000), 0
	retry := time.Date(2026, 11, 26, 10, 0, 2, 345000000, time.UTC)
	for _, d := range []*EventData{
		{Workflow: "single", WorkflowVersion: "5f2c0e1a9b7d4c3e"},
		{Attempt: 1, RunnerName: "worker-1-4242"},
		{Attempt: 1},
		{Attempt: 1, DurationMS: &dur},
		{Attempt: 1, MaxAttempts: 3},
		{Attempt: 2, MaxAttempts: 3, NextAttempt: 3, Error: `task "a": boom`, RetryAt: &retry, DelayMS: &delay},
		{Attempt: 3, MaxAttempts: 3, Error: "boom", DurationMS: &dur},
		{Attempt: 1, Reason: "runner stopped before the task returned", RecoveryCount: 1},
		{Reason: `dependency "a" failed`},
		{OutboxRows: &rows},
		{Error: "", DurationMS: &dur},
	} {
		requireSameJSON(t, d)
	}

	rng := rand.New(rand.NewPCG(1, 2))
	pick := func() bool { return rng.IntN(2) == 0 }
	for range 5000 {
		var d EventData
		if pick() {
			d.Attempt = jsonInts[rng.IntN(len(jsonInts))]
		}
		if pick() {
			d.MaxAttempts = rng.IntN(10)
		}
		if pick() {
			d.NextAttempt = rng.Int()
		}
		if pick() {
			d.Error = jsonStrings[rng.IntN(len(jsonStrings))] + randomString(rng)
		}
		if pick() {
			d.RetryAt = &jsonTimes[rng.IntN(len(jsonTimes))]
		}
		if pick() {
			n := rng.Int64() - rng.Int64()
			d.DelayMS = &n
		}
		if pick() {
			d.Reason = randomString(rng)
		}
		if pick() {
			d.DurationMS = &jsonInt64s[rng.IntN(len(jsonInt64s))]
		}
		if pick() {
			d.RunnerName = randomString(rng)
		}
		if pick() {
			d.Workflow, d.WorkflowVersion = randomString(rng), randomString(rng)
		}
		if pick() {
			d.RecoveryCount = rng.IntN(5)
		}
		if pick() {
			n := rng.Int() - rng.Int()
			d.OutboxRows = &n
		}
		requireSameJSON(t, &d)
	}
}

// randomString mixes printable ASCII, characters that need escapes, valid
// multi-byte runes and stray bytes that are not UTF-8.
func randomString(rng *rand.Rand) string {
	var b strings.Builder
	for range rng.IntN(24) {
		switch rng.IntN(6) {
		case 0:
			b.WriteByte(byte(rng.IntN(0x20)))
		case 1:
			b.WriteByte(`"\<>&`[rng.IntN(5)])
		case 2:
			b.WriteRune(rune(rng.IntN(0x10ffff)))
		case 3:
			b.WriteByte(byte(0x80 + rng.IntN(0x80)))
		default:
			b.WriteByte(byte(0x20 + rng.IntN(0x5f)))
		}
	}
	return b.String()
}

// A RetryAt that JSON cannot hold fails the encoder as it fails
// json.Marshal.
func TestEventDataAppendJSONRefusesWhatMarshalRefuses(t *testing.T) {
	t.Parallel()
	for _, tm := range badJSONTimes {
		d := &EventData{Attempt: 1, RetryAt: &tm}
		_, err := json.Marshal(d)
		require.Error(t, err, tm)
		_, err = d.appendJSON(nil)
		require.Error(t, err, tm)
	}
}

// Appending to a buffer leaves what it held before untouched.
func TestEventDataAppendJSONAppends(t *testing.T) {
	t.Parallel()
	b, err := (&EventData{Attempt: 1}).appendJSON([]byte("prefix"))
	require.NoError(t, err)
	require.Equal(t, `prefix{"attempt":1}`, string(b))
}

// The data of the five events of a single-task run, encoded as the engine
// did (json.Marshal each) and as it does (appended to one buffer, which a
// transaction of many tasks grows a few times in all).
func BenchmarkEventDataEncode(b *testing.B) {
	dur := int64(3)
	events := []*EventData{
		{Workflow: "single", WorkflowVersion: "5f2c0e1a9b7d4c3e8a1b"},
		{Attempt: 1, RunnerName: "worker-1-4242"},
		{Attempt: 1},
		{Attempt: 1, DurationMS: &dur},
		{DurationMS: &dur},
	}
	b.Run("marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, d := range events {
				if _, err := json.Marshal(d); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf = buf[:0]
			for _, d := range events {
				var err error
				if buf, err = d.appendJSON(buf); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}

// Every field of EventData is encoded: a value with each field set (by
// reflection, so a field added later is set too) encodes as json.Marshal
// encodes it.
func TestEventDataAppendJSONCoversEveryField(t *testing.T) {
	t.Parallel()
	var d EventData
	v := reflect.ValueOf(&d).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.Int, reflect.Int64:
			f.SetInt(int64(i + 1))
		case reflect.String:
			f.SetString("field " + v.Type().Field(i).Name)
		case reflect.Pointer:
			p := reflect.New(f.Type().Elem())
			switch p.Elem().Kind() {
			case reflect.Int, reflect.Int64:
				p.Elem().SetInt(int64(i + 1))
			case reflect.Struct: // time.Time
				p.Elem().Set(reflect.ValueOf(time.Date(2026, 11, 26, 12, 0, 0, i, time.UTC)))
			default:
				t.Fatalf("EventData.%s: set a %s in this test, and encode it in appendJSON", v.Type().Field(i).Name, f.Type())
			}
			f.Set(p)
		default:
			t.Fatalf("EventData.%s: set a %s in this test, and encode it in appendJSON", v.Type().Field(i).Name, f.Type())
		}
	}
	requireSameJSON(t, &d)
}
