package postgres

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// Array parameters. The hot statements take parallel arrays (unnest), one
// element per row. pgx encodes a plain []T through a generic wrapper whose
// Index boxes every element into an interface, an allocation each, and
// wraps a [16]byte or a time.Time once more before encoding it: in the
// burn-down that was the largest source of garbage in the process. An
// array holds pgtype values instead and hands pgx a pointer to each
// element, which fits in an interface as it is; pgx encodes the element
// in place. The bytes sent are the same as for the plain slices
// (params_internal_test.go compares them).

// array is a one-dimensional array parameter of pgtype values (UUID, Text,
// Int4, Timestamptz); an invalid element is NULL.
type array[T any] []T

// Dimensions implements pgtype.ArrayGetter.
func (a array[T]) Dimensions() []pgtype.ArrayDimension {
	if a == nil {
		return nil
	}
	return []pgtype.ArrayDimension{{Length: int32(len(a)), LowerBound: 1}}
}

// Index implements pgtype.ArrayGetter: a pointer into the array.
func (a array[T]) Index(i int) any { return &a[i] }

// IndexType implements pgtype.ArrayGetter.
func (a array[T]) IndexType() any { return (*T)(nil) }

type (
	uuidArray = array[pgtype.UUID]
	textArray = array[pgtype.Text]
	int4Array = array[pgtype.Int4]
	timeArray = array[pgtype.Timestamptz]
)

func pgText(s string) pgtype.Text { return pgtype.Text{String: s, Valid: true} }

func pgInt4(n int) pgtype.Int4 { return pgtype.Int4{Int32: int32(n), Valid: true} }

func pgTime(t time.Time) pgtype.Timestamptz { return pgtype.Timestamptz{Time: t.UTC(), Valid: true} }

func pgTimePtr(t *time.Time) pgtype.Timestamptz {
	if t == nil {
		return pgtype.Timestamptz{}
	}
	return pgTime(*t)
}

func pgIDs(ids []uuid.UUID) uuidArray {
	out := make(uuidArray, len(ids))
	for i, id := range ids {
		out[i] = pgID(id)
	}
	return out
}

func textsOf[S ~string](ss []S) textArray {
	out := make(textArray, len(ss))
	for i, s := range ss {
		out[i] = pgText(string(s))
	}
	return out
}

// jsonArray returns n JSON documents, doc(0) to doc(n-1), as a text
// array held in a single string: one allocation for the array rather than
// one per document. A nil document is NULL, or orNull when that is set.
func jsonArray(n int, doc func(i int) json.RawMessage, orNull string) textArray {
	size := 0
	for i := range n {
		size += len(doc(i))
	}
	var b strings.Builder
	b.Grow(size)
	for i := range n {
		b.Write(doc(i))
	}
	all := b.String()
	out := make(textArray, n)
	at := 0
	for i := range n {
		switch d := doc(i); {
		case d != nil:
			out[i] = pgText(all[at : at+len(d)])
			at += len(d)
		case orNull != "":
			out[i] = pgText(orNull)
		}
	}
	return out
}
