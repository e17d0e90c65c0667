package main

import (
	"strings"
	"testing"
)

func TestProbeVerify(t *testing.T) {
	t.Parallel()
	p := newProbe(3, 2, true)
	for run := range 3 {
		for step := range 2 {
			p.begin(run, step)
			p.end(run, step)
		}
	}
	select {
	case <-p.done:
	default:
		t.Fatal("done not closed after every unit ran")
	}
	if err := p.verify(); err != nil {
		t.Fatalf("verify: %v", err)
	}

	p.begin(1, 1) // a duplicate must fail loudly
	if err := p.verify(); err == nil || !strings.Contains(err.Error(), "ran 2 times") {
		t.Fatalf("verify after a duplicate = %v, want a duplicate error", err)
	}

	q := newProbe(2, 1, false)
	q.begin(0, 0)
	if err := q.verify(); err == nil || !strings.Contains(err.Error(), "never ran") {
		t.Fatalf("verify with a missing unit = %v, want a missing error", err)
	}
	q.begin(7, 0) // out of range counts as a duplicate of unit 0
	if err := q.verify(); err == nil {
		t.Fatal("verify after an out-of-range unit passed")
	}
}

func TestStats(t *testing.T) {
	t.Parallel()
	xs := []float64{5, 1, 4, 2, 3}
	if m := median(xs); m != 3 {
		t.Errorf("median = %v, want 3", m)
	}
	if m := median([]float64{1, 2, 3, 4}); m != 2.5 {
		t.Errorf("median of even count = %v, want 2.5", m)
	}
	if p := percentile(xs, 50); p != 3 {
		t.Errorf("p50 = %v, want 3", p)
	}
	if p := percentile(xs, 99); p != 5 {
		t.Errorf("p99 = %v, want 5", p)
	}
	if r := ratios([]float64{2, 3}, []float64{1, 6}); r[0] != 2 || r[1] != 0.5 {
		t.Errorf("ratios = %v, want [2 0.5]", r)
	}
}

func TestProxyLabel(t *testing.T) {
	t.Parallel()
	p := &pgProxy{schema: proxySchemaPattern}
	for sql, want := range map[string]string{
		"-- name: JobGetAvailable :many\nWITH locked_jobs AS (":                                          "JobGetAvailable",
		`SELECT id FROM "bench_ours_trips_0a1b2c3d4e".pipeline_executions WHERE id = ANY($1) FOR UPDATE`: "SELECT pipeline_executions FOR UPDATE",
		"begin": "begin",
	} {
		if got := p.label(sql); got != want {
			t.Errorf("label(%q) = %q, want %q", sql, got, want)
		}
	}
}
