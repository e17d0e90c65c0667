package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// table renders rows as aligned columns separated by two spaces. Columns
// marked numeric are right-aligned; trailing blanks are trimmed. A table
// made without a header prints its rows only.
type table struct {
	header  []string
	numeric map[int]bool
	rows    [][]string
}

func newTable(header ...string) *table {
	return &table{header: header, numeric: map[int]bool{}}
}

// alignRight right-aligns the given columns.
func (t *table) alignRight(cols ...int) *table {
	for _, c := range cols {
		t.numeric[c] = true
	}
	return t
}

func (t *table) add(cells ...string) {
	t.rows = append(t.rows, cells)
}

func (t *table) render(w io.Writer) error {
	lines := t.rows
	if len(t.header) > 0 {
		lines = append([][]string{t.header}, t.rows...)
	}
	var widths []int
	for _, row := range lines {
		for i, cell := range row {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	var b strings.Builder
	for _, row := range lines {
		b.WriteString(formatRow(row, widths, t.numeric))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// formatRow renders one row of cells padded to widths, two spaces apart,
// right-aligning the numeric columns, with its trailing blanks trimmed and
// a newline.
func formatRow(cells []string, widths []int, numeric map[int]bool) string {
	var line strings.Builder
	for i, cell := range cells {
		if i > 0 {
			line.WriteString("  ")
		}
		pad := strings.Repeat(" ", max(widths[i]-utf8.RuneCountInString(cell), 0))
		if numeric[i] {
			line.WriteString(pad + cell)
		} else {
			line.WriteString(cell + pad)
		}
	}
	return strings.TrimRight(line.String(), " ") + "\n"
}

// stream prints a table a row at a time, for output that grows while it
// is read (events list --follow). The header is printed with the first
// row. Column widths start at the widths given and only grow, so what is
// printed stays aligned as long as values fit what came before.
type stream struct {
	w       io.Writer
	header  []string
	widths  []int
	numeric map[int]bool
	started bool
}

func newStream(w io.Writer, t *table, minWidths ...int) *stream {
	s := &stream{w: w, header: t.header, numeric: t.numeric, widths: make([]int, len(t.header))}
	for i, h := range t.header {
		s.widths[i] = utf8.RuneCountInString(h)
		if i < len(minWidths) {
			s.widths[i] = max(s.widths[i], minWidths[i])
		}
	}
	return s
}

// add prints rows (the header first, if it has not been printed yet).
func (s *stream) add(rows ...[]string) error {
	var b strings.Builder
	for _, row := range rows {
		for i, cell := range row {
			s.widths[i] = max(s.widths[i], utf8.RuneCountInString(cell))
		}
	}
	if !s.started && len(rows) > 0 {
		s.started = true
		b.WriteString(formatRow(s.header, s.widths, s.numeric))
	}
	for _, row := range rows {
		b.WriteString(formatRow(row, s.widths, s.numeric))
	}
	_, err := io.WriteString(s.w, b.String())
	return err
}

// timeLayout prints timestamps in UTC with milliseconds.
const timeLayout = "2006-01-02 15:04:05.000Z"

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func formatTimePtr(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return formatTime(*t)
}

// formatDuration prints whole milliseconds below a second and a rounded
// Go duration above, e.g. "312ms" or "1.204s".
func formatDuration(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
	return d.Round(time.Millisecond).String()
}

// plural is n with noun, made plural (an s added) unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
