package postgres

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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

// arrayCodec replaces pgx's codec for the array types the backend binds
// (RegisterTypes registers it on every connection). pgx encodes an array
// element by element, each append growing the parameter buffer by a
// quarter when full, and starts every statement from a fresh 256-byte
// buffer: for the thousands of elements of a claim's or a completion's
// arrays, most of the bytes the process allocated were those buffers'
// copies. arrayCodec encodes an array[T] in binary in one pass into a
// buffer grown at most once (appendArray), and leaves every other value,
// and scanning, to pgx's codec. The bytes are pgx's
// (params_internal_test.go).
type arrayCodec struct {
	*pgtype.ArrayCodec
}

// PlanEncode implements pgtype.Codec.
func (c *arrayCodec) PlanEncode(m *pgtype.Map, oid uint32, format int16, value any) pgtype.EncodePlan {
	if format == pgtype.BinaryFormatCode {
		switch value.(type) {
		case uuidArray, textArray, int4Array, timeArray:
			return binaryArrayPlan{elementOID: c.ElementType.OID}
		}
	}
	return c.ArrayCodec.PlanEncode(m, oid, format, value)
}

// registerArrayCodecs puts arrayCodec in front of pgx's codec for the
// array types the backend binds.
func registerArrayCodecs(m *pgtype.Map) {
	for _, oid := range []uint32{pgtype.UUIDArrayOID, pgtype.TextArrayOID, pgtype.Int4ArrayOID, pgtype.TimestamptzArrayOID} {
		t, ok := m.TypeForOID(oid)
		if !ok {
			continue
		}
		if ac, ok := t.Codec.(*pgtype.ArrayCodec); ok { // not registered yet
			m.RegisterType(&pgtype.Type{Name: t.Name, OID: t.OID, Codec: &arrayCodec{ac}})
		}
	}
}

// binaryArrayPlan encodes an array[T] as PostgreSQL's binary array.
type binaryArrayPlan struct{ elementOID uint32 }

// Encode implements pgtype.EncodePlan.
func (p binaryArrayPlan) Encode(value any, buf []byte) ([]byte, error) {
	switch a := value.(type) {
	case uuidArray:
		return appendArray(buf, a, p.elementOID, func(e *pgtype.UUID) int { return length(e.Valid, 16) },
			func(b []byte, e *pgtype.UUID) []byte { return append(b, e.Bytes[:]...) }), nil
	case textArray:
		return appendArray(buf, a, p.elementOID, func(e *pgtype.Text) int { return length(e.Valid, len(e.String)) },
			func(b []byte, e *pgtype.Text) []byte { return append(b, e.String...) }), nil
	case int4Array:
		return appendArray(buf, a, p.elementOID, func(e *pgtype.Int4) int { return length(e.Valid, 4) },
			func(b []byte, e *pgtype.Int4) []byte { return binary.BigEndian.AppendUint32(b, uint32(e.Int32)) }), nil
	case timeArray:
		for _, e := range a {
			if e.Valid && e.InfinityModifier != pgtype.Finite {
				return nil, errors.New("postgres: an infinite timestamp is never bound")
			}
		}
		return appendArray(buf, a, p.elementOID, func(e *pgtype.Timestamptz) int { return length(e.Valid, 8) },
			func(b []byte, e *pgtype.Timestamptz) []byte {
				// Microseconds since 2000-01-01 UTC, as pgx computes them.
				us := e.Time.Unix()*1_000_000 + int64(e.Time.Nanosecond())/1000 - 946_684_800*1_000_000
				return binary.BigEndian.AppendUint64(b, uint64(us))
			}), nil
	}
	return nil, fmt.Errorf("postgres: cannot encode %T as an array", value)
}

// length is an element's encoded length: n, or -1 for NULL.
func length(valid bool, n int) int {
	if !valid {
		return -1
	}
	return n
}

// appendArray appends a (nil: NULL) as a binary array of elements of type
// elementOID: a header (one dimension, whether an element is NULL, the
// element type, the length and lower bound 1), then each element's length
// (-1 for NULL) and bytes. size returns an element's length; put appends
// its bytes. The buffer grows once.
func appendArray[T any](buf []byte, a array[T], elementOID uint32, size func(*T) int, put func([]byte, *T) []byte) []byte {
	if a == nil {
		return nil
	}
	body, nulls := 0, uint32(0)
	for i := range a {
		n := size(&a[i])
		if n < 0 {
			nulls, n = 1, 0
		}
		body += 4 + n
	}
	need := 20 + body
	if len(buf) == 0 {
		// The first parameter of a statement, into the fresh buffer pgx
		// starts each statement with: make room for the parallel arrays
		// that follow too, rather than copy the buffer again for each.
		// The hot statements bind 5 to 12 arrays of as many elements,
		// their rows about 8 times the 20 bytes of the id column they
		// begin with; a statement that binds less leaves the room unused
		// (one allocation either way).
		need *= 8
	}
	buf = slices.Grow(buf, need)
	buf = binary.BigEndian.AppendUint32(buf, 1)
	buf = binary.BigEndian.AppendUint32(buf, nulls)
	buf = binary.BigEndian.AppendUint32(buf, elementOID)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(a)))
	buf = binary.BigEndian.AppendUint32(buf, 1)
	for i := range a {
		n := size(&a[i])
		if n < 0 {
			buf = binary.BigEndian.AppendUint32(buf, 0xffffffff)
			continue
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(n))
		buf = put(buf, &a[i])
	}
	return buf
}
