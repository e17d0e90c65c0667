package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// pgProxy is a TCP proxy in front of PostgreSQL that reads the frontend
// protocol to count what a client really sends: statements (Execute and
// simple Query messages) and round trips (Sync and simple Query, each
// answered by one ReadyForQuery), attributed to the statement text, with
// the time from the request to its ReadyForQuery. It sees only the
// connections of the client pointed at it, so other users of the server
// do not pollute the counts, and it counts what never reaches the
// executor (pings, BEGIN sent with a statement). pg_stat_statements, where
// loaded, adds the server's side of the same phases (pgss.go).
type pgProxy struct {
	ln       net.Listener
	upstream string
	schema   *regexp.Regexp

	mu    sync.Mutex
	stats proxyStats
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// proxyStats is a snapshot of the proxy's counters.
type proxyStats struct {
	Statements int64
	RoundTrips int64
	// Trips counts round trips by the statements they carried.
	Trips map[string]*tripStat
}

// tripStat aggregates the round trips of one kind.
type tripStat struct {
	Count int64
	Total time.Duration
	// Statements is how many statements one such round trip carries.
	Statements int
}

func (s proxyStats) clone() proxyStats {
	c := proxyStats{Statements: s.Statements, RoundTrips: s.RoundTrips, Trips: map[string]*tripStat{}}
	for k, v := range s.Trips {
		cp := *v
		c.Trips[k] = &cp
	}
	return c
}

// sub returns s minus an earlier snapshot.
func (s proxyStats) sub(earlier proxyStats) proxyStats {
	d := s.clone()
	d.Statements -= earlier.Statements
	d.RoundTrips -= earlier.RoundTrips
	for k, v := range earlier.Trips {
		if cur, ok := d.Trips[k]; ok {
			cur.Count -= v.Count
			cur.Total -= v.Total
			if cur.Count == 0 {
				delete(d.Trips, k)
			}
		}
	}
	return d
}

// proxySchemaPattern matches the harness's schema names in statements.
var proxySchemaPattern = regexp.MustCompile(`"?bench_[a-z]+_[a-z]+_[0-9a-f]+"?`)

// startProxy listens on a free loopback port and forwards to upstream.
// The harness's schema names are replaced by {s} in statement labels.
func startProxy(upstream string) (*pgProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &pgProxy{ln: ln, upstream: upstream, schema: proxySchemaPattern,
		stats: proxyStats{Trips: map[string]*tripStat{}}, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// addr is the proxy's host:port.
func (p *pgProxy) addr() string { return p.ln.Addr().String() }

// snapshot returns the counters so far.
func (p *pgProxy) snapshot() proxyStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats.clone()
}

// close stops accepting, closes every connection and waits for the
// forwarding goroutines.
func (p *pgProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *pgProxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		if p.conns == nil {
			return false
		}
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
	return true
}

func (p *pgProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.upstream)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.track(client, true)
		p.track(server, true)
		pc := &proxyConn{p: p}
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			pc.frontend(client, server)
			_ = server.Close()
			p.track(client, false)
		}()
		go func() {
			defer p.wg.Done()
			pc.backend(server, client)
			_ = client.Close()
			p.track(server, false)
		}()
	}
}

// pendingTrip is a request awaiting its ReadyForQuery.
type pendingTrip struct {
	at    time.Time
	label string
	stmts int
}

// proxyConn is the state of one proxied connection.
type proxyConn struct {
	p *pgProxy

	mu      sync.Mutex
	pending []pendingTrip
}

var ws = regexp.MustCompile(`\s+`)

var (
	tableRef   = regexp.MustCompile(`\{s\}\.([a-z_]+)`)
	leadingSQL = regexp.MustCompile(`^[A-Za-z_]+`)
)

// label names a statement: its sqlc name if it has one (River), else its
// leading keyword and the tables it names in order (Cloacina), e.g.
// "WITH task_outbox,task_executions" or "SELECT pipeline_executions FOR UPDATE".
func (p *pgProxy) label(sql string) string {
	s := strings.TrimSpace(sql)
	if rest, ok := strings.CutPrefix(s, "-- name: "); ok {
		if i := strings.IndexAny(rest, " \n"); i > 0 {
			return rest[:i]
		}
		return rest
	}
	s = p.schema.ReplaceAllString(ws.ReplaceAllString(s, " "), "{s}")
	var tables []string
	for _, m := range tableRef.FindAllStringSubmatch(s, -1) {
		if !slices.Contains(tables, m[1]) {
			tables = append(tables, m[1])
		}
	}
	if len(tables) == 0 {
		if len(s) > 60 {
			s = s[:60] + "…"
		}
		return s
	}
	l := strings.ToUpper(leadingSQL.FindString(s)) + " " + strings.Join(tables, ",")
	if strings.Contains(strings.ToUpper(s), "FOR UPDATE") {
		l += " FOR UPDATE"
	}
	return l
}

// frontend copies client → server, reading the message stream.
func (pc *proxyConn) frontend(client, server net.Conn) {
	r := bufio.NewReaderSize(client, 64<<10)
	w := bufio.NewWriterSize(server, 64<<10)
	send := func(b []byte) error {
		if _, err := w.Write(b); err != nil {
			return err
		}
		if r.Buffered() == 0 {
			return w.Flush()
		}
		return nil
	}
	// Startup phase: untyped messages (startup, SSL/GSS requests).
	for {
		head := make([]byte, 8)
		if _, err := io.ReadFull(r, head); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(head[:4]))
		code := binary.BigEndian.Uint32(head[4:8])
		body := make([]byte, max(n-8, 0))
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		if err := send(append(head, body...)); err != nil {
			return
		}
		if code != 80877103 && code != 80877104 { // not an SSL or GSSENC request
			break
		}
	}
	stmts := map[string]string{} // prepared statement name → label
	var batch []string
	for {
		head := make([]byte, 5)
		if _, err := io.ReadFull(r, head); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(head[1:5]))
		body := make([]byte, max(n-4, 0))
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		switch head[0] {
		case 'P': // Parse: name, query
			name, rest, _ := cutCString(body)
			query, _, _ := cutCString(rest)
			stmts[name] = pc.p.label(query)
		case 'B': // Bind: portal, statement
			_, rest, _ := cutCString(body)
			name, _, _ := cutCString(rest)
			batch = append(batch, stmts[name])
		case 'E': // Execute
			pc.p.mu.Lock()
			pc.p.stats.Statements++
			pc.p.mu.Unlock()
		case 'S': // Sync: one round trip
			label := strings.Join(batch, " + ")
			if label == "" {
				label = "(prepare/describe)"
			}
			pc.push(pendingTrip{at: time.Now(), label: label, stmts: len(batch)})
			batch = batch[:0]
		case 'Q': // simple query: one statement, one round trip
			q, _, _ := cutCString(body)
			pc.p.mu.Lock()
			pc.p.stats.Statements++
			pc.p.mu.Unlock()
			pc.push(pendingTrip{at: time.Now(), label: pc.p.label(q), stmts: 1})
		}
		if err := send(append(head, body...)); err != nil {
			return
		}
	}
}

func (pc *proxyConn) push(t pendingTrip) {
	pc.mu.Lock()
	pc.pending = append(pc.pending, t)
	pc.mu.Unlock()
}

// backend copies server → client, matching each ReadyForQuery to the
// oldest pending request.
func (pc *proxyConn) backend(server, client net.Conn) {
	// The reply to an SSL or GSSENC request would be a single untyped
	// byte; pgx with sslmode=disable sends neither, so the stream is typed.
	r := bufio.NewReaderSize(server, 64<<10)
	w := bufio.NewWriterSize(client, 64<<10)
	for {
		head := make([]byte, 5)
		if _, err := io.ReadFull(r, head); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(head[1:5]))
		body := make([]byte, max(n-4, 0))
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		if head[0] == 'Z' {
			pc.mu.Lock()
			var t pendingTrip
			ok := len(pc.pending) > 0
			if ok {
				t = pc.pending[0]
				pc.pending = pc.pending[1:]
			}
			pc.mu.Unlock()
			if ok { // the ReadyForQuery after authentication has no request
				d := time.Since(t.at)
				pc.p.mu.Lock()
				pc.p.stats.RoundTrips++
				ts := pc.p.stats.Trips[t.label]
				if ts == nil {
					ts = &tripStat{Statements: t.stmts}
					pc.p.stats.Trips[t.label] = ts
				}
				ts.Count++
				ts.Total += d
				pc.p.mu.Unlock()
			}
		}
		if _, err := w.Write(append(head, body...)); err != nil {
			return
		}
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

func cutCString(b []byte) (string, []byte, error) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], nil
		}
	}
	return "", nil, errors.New("unterminated string")
}
