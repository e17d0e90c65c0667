package main

import "testing"

func TestStatementLabel(t *testing.T) {
	long := `INSERT INTO "bench_ours_x_1"."execution_events"` + " (id,\n\t pipeline_execution_id, task_execution_id, event_type, event_data, worker_id, created_at) SELECT 1"
	for _, c := range []struct{ query, schema, want string }{
		{"-- name: JobGetAvailable :many\nWITH locked_jobs AS (SELECT 1)", "s", "JobGetAvailable"},
		{"SELECT   1\n\tFROM \"bench_ours_a_1\".t", "bench_ours_a_1", "SELECT 1 FROM t"},
		{`DELETE FROM "bench_river_b_2".river_job`, "other", "DELETE FROM river_job"},
		{long, "bench_ours_x_1", `INSERT INTO "execution_events" (id, pipeline_execution_id, task_execution_id, event_type, event_data…`},
	} {
		if got := statementLabel(c.query, c.schema); got != c.want {
			t.Errorf("statementLabel(%q) = %q, want %q", c.query, got, c.want)
		}
	}
}
