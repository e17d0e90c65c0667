package main

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// harnessMark starts the text of every query the harness itself sends
// while an engine works, so that the database's view leaves them out.
const harnessMark = "/* harness */ "

// dbView is the database's own account of a census work phase, from
// pg_stat_statements: what each statement cost the server, per unit of
// work. PostgreSQL counts execution time inside the server only (no
// network, no client), and the WAL each statement wrote.
type dbView struct {
	// Note says why there is no view (pg_stat_statements not loaded).
	Note string `json:"note,omitempty"`
	// ExecUSPerUnit is the server's execution time per unit, summed over
	// every statement of the engine.
	ExecUSPerUnit float64 `json:"exec_us_per_unit"`
	// WALBytesPerUnit and WALRecordsPerUnit are the WAL written per unit.
	WALBytesPerUnit   float64    `json:"wal_bytes_per_unit"`
	WALRecordsPerUnit float64    `json:"wal_records_per_unit"`
	Lines             []stmtLine `json:"lines,omitempty"`
}

// stmtLine is one statement of a dbView.
type stmtLine struct {
	Label             string  `json:"label"`
	CallsPerUnit      float64 `json:"calls_per_unit"`
	RowsPerCall       float64 `json:"rows_per_call"`
	ExecUSPerUnit     float64 `json:"exec_us_per_unit"`
	WALBytesPerUnit   float64 `json:"wal_bytes_per_unit"`
	WALRecordsPerUnit float64 `json:"wal_records_per_unit"`
	SharePct          float64 `json:"share_pct"`
}

// pgssReset empties pg_stat_statements before a work phase. It returns a
// note instead of an error when the extension is not available: the view
// is evidence, not a condition of the benchmark.
func pgssReset(ctx context.Context, admin *pgxpool.Pool) (note string) {
	if _, err := admin.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		return "pg_stat_statements is not installed: " + err.Error()
	}
	if _, err := admin.Exec(ctx, "SELECT pg_stat_statements_reset()"); err != nil {
		return "pg_stat_statements is not loaded (add it to shared_preload_libraries and restart the server): " + err.Error()
	}
	return ""
}

// pgssRead reads what the statements of the current database cost since
// pgssReset, per unit of work, leaving out the harness's own queries.
// The engine under test must be the only client of the database meanwhile.
func pgssRead(ctx context.Context, admin *pgxpool.Pool, schema string, units int) (*dbView, error) {
	rows, err := admin.Query(ctx, `SELECT query, calls, rows, total_exec_time, wal_records, wal_bytes
		FROM pg_stat_statements
		WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND query NOT LIKE $1 AND query NOT LIKE '%pg_stat_statements%'`, harnessMark+"%")
	if err != nil {
		return nil, fmt.Errorf("read pg_stat_statements: %w", err)
	}
	defer rows.Close()
	v := &dbView{}
	byLabel := map[string]*stmtLine{}
	var total float64
	n := float64(units)
	for rows.Next() {
		var (
			query                string
			calls, nrows, walRec int64
			execMS, walBytes     float64
		)
		if err := rows.Scan(&query, &calls, &nrows, &execMS, &walRec, &walBytes); err != nil {
			return nil, fmt.Errorf("read pg_stat_statements: %w", err)
		}
		if calls == 0 {
			continue
		}
		label := statementLabel(query, schema)
		l := byLabel[label]
		if l == nil {
			l = &stmtLine{Label: label}
			byLabel[label] = l
		}
		// Summed first, per unit at the end: one label can gather several
		// entries (the same text planned for different parameter types).
		l.CallsPerUnit += float64(calls)
		l.RowsPerCall += float64(nrows)
		l.ExecUSPerUnit += execMS * 1000
		l.WALBytesPerUnit += walBytes
		l.WALRecordsPerUnit += float64(walRec)
		total += execMS * 1000
		v.WALBytesPerUnit += walBytes
		v.WALRecordsPerUnit += float64(walRec)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read pg_stat_statements: %w", err)
	}
	for _, l := range byLabel {
		l.RowsPerCall /= l.CallsPerUnit
		l.SharePct = 100 * l.ExecUSPerUnit / total
		l.CallsPerUnit /= n
		l.ExecUSPerUnit /= n
		l.WALBytesPerUnit /= n
		l.WALRecordsPerUnit /= n
		v.Lines = append(v.Lines, *l)
	}
	sort.Slice(v.Lines, func(i, j int) bool { return v.Lines[i].ExecUSPerUnit > v.Lines[j].ExecUSPerUnit })
	if len(v.Lines) > 12 {
		v.Lines = v.Lines[:12]
	}
	v.ExecUSPerUnit = total / n
	v.WALBytesPerUnit /= n
	v.WALRecordsPerUnit /= n
	return v, nil
}

var (
	spaces      = regexp.MustCompile(`\s+`)
	riverQuery  = regexp.MustCompile(`^-- name: (\S+)`)
	schemaQuote = regexp.MustCompile(`"bench_[a-z0-9_]+"\.`)
)

// statementLabel names a statement for the report: River's queries by the
// name sqlc gives them, ours by their first 100 characters without the
// round's schema name.
func statementLabel(query, schema string) string {
	if m := riverQuery.FindStringSubmatch(query); m != nil {
		return m[1]
	}
	q := strings.TrimSpace(spaces.ReplaceAllString(query, " "))
	q = strings.ReplaceAll(q, `"`+schema+`".`, "")
	q = schemaQuote.ReplaceAllString(q, "")
	if r := []rune(q); len(r) > 100 {
		q = string(r[:100]) + "…"
	}
	return q
}

// renderDBViews writes the database's view of the census work phases.
func renderDBViews(w func(string, ...any), trips []*tripReport) {
	var have bool
	for _, tr := range trips {
		have = have || tr.DB != nil
	}
	if !have {
		return
	}
	w("### The database's view of the same work phases (`pg_stat_statements`)\n\n")
	w("Reset before each work phase above and read after it (the harness's own polling left out): the server's execution time of every statement the engine sent, " +
		"inside PostgreSQL (no network, no client, no planning: plans are cached), and the WAL it wrote, per unit of work. `COMMIT` carries the WAL flush.\n\n")
	w("| Scenario | Engine | Server execution per unit | WAL per unit |\n|---|---|---|---|\n")
	for _, tr := range trips {
		switch {
		case tr.DB == nil:
		case tr.DB.Note != "":
			w("| %s | %s | %s | — |\n", tr.Scenario, tr.Engine, tr.DB.Note)
		default:
			w("| %s | %s | %.1f µs | %.0f bytes in %.1f records |\n", tr.Scenario, tr.Engine, tr.DB.ExecUSPerUnit,
				tr.DB.WALBytesPerUnit, tr.DB.WALRecordsPerUnit)
		}
	}
	w("\n")
	for _, tr := range trips {
		if tr.DB == nil || tr.DB.Note != "" {
			continue
		}
		w("<details><summary>%s / %s: statements by server time (top %d)</summary>\n\n", tr.Scenario, tr.Engine, len(tr.DB.Lines))
		w("| Statement | Calls per %s | Rows per call | Server µs per %s | WAL bytes (records) per %s | Share |\n|---|---|---|---|---|---|\n",
			tr.Per, tr.Per, tr.Per)
		for _, l := range tr.DB.Lines {
			w("| `%s` | %.3f | %.1f | %.1f | %.0f (%.1f) | %.1f%% |\n", strings.ReplaceAll(l.Label, "|", "\\|"), l.CallsPerUnit,
				l.RowsPerCall, l.ExecUSPerUnit, l.WALBytesPerUnit, l.WALRecordsPerUnit, l.SharePct)
		}
		w("\n</details>\n\n")
	}
}
