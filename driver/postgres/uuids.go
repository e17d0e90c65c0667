package postgres

import (
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// pgx encodes a github.com/google/uuid value through driver.Valuer: a
// string, a failed binary encode, a text parse and a second encode, for
// every element of every array. The backend hands pgx pgtype.UUID values
// (arrays of them: see params.go), which it encodes and scans directly;
// on the hot paths that was over a third of the engine's CPU.

func pgID(id uuid.UUID) pgtype.UUID { return pgtype.UUID{Bytes: id, Valid: true} }

// pgOptID is pgID for a nullable id: nil is NULL.
func pgOptID(id *uuid.UUID) pgtype.UUID {
	if id == nil {
		return pgtype.UUID{}
	}
	return pgID(*id)
}

// scanID scans a non-null uuid column into a uuid.UUID.
type scanID struct{ dst *uuid.UUID }

func (s scanID) ScanUUID(v pgtype.UUID) error {
	if !v.Valid {
		return fmt.Errorf("postgres: unexpected NULL uuid")
	}
	*s.dst = v.Bytes
	return nil
}

// scanOptID scans a nullable uuid column into a *uuid.UUID.
type scanOptID struct{ dst **uuid.UUID }

func (s scanOptID) ScanUUID(v pgtype.UUID) error {
	if !v.Valid {
		*s.dst = nil
		return nil
	}
	id := uuid.UUID(v.Bytes)
	*s.dst = &id
	return nil
}

// collectIDs reads a one-column result of uuids.
func collectIDs(rows pgx.Rows, err error) ([]uuid.UUID, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []uuid.UUID
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(scanID{&id}); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}
