package sqlite

import (
	"testing"
	"time"
)

// FuzzParseFixedTime holds the fast timestamp reader to time.Parse: what
// it accepts, time.Parse reads as the same instant, and every timestamp
// formatTime writes is one it accepts.
func FuzzParseFixedTime(f *testing.F) {
	for _, s := range []string{
		"2026-11-27T12:34:56.789012Z", "0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z",
		"2024-02-29T00:00:00.000000Z", "2023-02-29T00:00:00.000000Z", "2026-04-31T00:00:00.000000Z",
		"2026-13-01T00:00:00.000000Z", "2026-00-10T00:00:00.000000Z", "2026-01-01T24:00:00.000000Z",
		"2026-01-01T23:60:00.000000Z", "2026-01-01T23:59:60.000000Z", "2026-01-01 00:00:00.000000Z",
		"2026-01-01T00:00:00.00000aZ", "+026-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.000000",
		"2026-1-01T00:00:00.0000000Z", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseFixedTime(s)
		want, err := time.Parse(timeLayout, s)
		if ok && (err != nil || got != want) {
			t.Fatalf("parseFixedTime(%q) = %v; time.Parse gives %v, %v", s, got, want, err)
		}
		if err == nil && formatTime(want) == s && !ok {
			t.Fatalf("parseFixedTime(%q) refused a timestamp formatTime writes", s)
		}
		parsed, perr := parseTime(s)
		if (perr == nil) != (err == nil) || (err == nil && parsed != want) {
			t.Fatalf("parseTime(%q) = %v, %v; time.Parse gives %v, %v", s, parsed, perr, want, err)
		}
	})
}

func TestParseFixedTimeRoundTrips(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(2026, 11, 27, 12, 34, 56, 789012000, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC),
		time.Date(2024, 2, 29, 1, 2, 3, 4000, time.UTC),
	} {
		got, ok := parseFixedTime(formatTime(tm))
		if !ok || !got.Equal(tm) {
			t.Errorf("parseFixedTime(formatTime(%v)) = %v, %v", tm, got, ok)
		}
	}
}

func BenchmarkParseTime(b *testing.B) {
	s := formatTime(time.Date(2026, 11, 27, 12, 34, 56, 789012000, time.UTC))
	b.Run("fixed", func(b *testing.B) {
		for range b.N {
			if _, err := parseTime(s); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("time.Parse", func(b *testing.B) {
		for range b.N {
			if _, err := time.Parse(timeLayout, s); err != nil {
				b.Fatal(err)
			}
		}
	})
}
