// Package dag holds the graph algorithms behind workflow validation:
// cycle detection with the cycle's path, topological order, descendants, and
// the closest-name suggestion for a misspelt dependency.
package dag

import (
	"container/heap"
	"slices"
)

// Graph is a directed graph of named nodes; an edge from a node to each of
// its dependencies. Nodes are addressed by index in the order given.
type Graph struct {
	deps       [][]int
	dependents [][]int // the reverse edges, built on first use
}

// New returns a graph of n nodes where deps[i] lists the nodes i depends on.
func New(deps [][]int) *Graph { return &Graph{deps: deps} }

// FindCycle returns the node indexes of one dependency cycle, starting and
// ending with the same node, or nil when the graph is acyclic.
func (g *Graph) FindCycle() []int {
	const (
		unvisited = iota
		onStack
		done
	)
	state := make([]int, len(g.deps))
	var stack []int
	var cycle []int
	var visit func(n int) bool
	visit = func(n int) bool {
		state[n] = onStack
		stack = append(stack, n)
		for _, d := range g.deps[n] {
			switch state[d] {
			case onStack:
				// The cycle is the stack from d's position to the top; it is
				// reported in dependency direction: n depends on d.
				for i := len(stack) - 1; i >= 0; i-- {
					if stack[i] == d {
						cycle = append(cycle, stack[i:]...)
						cycle = append(cycle, d)
						return true
					}
				}
			case unvisited:
				if visit(d) {
					return true
				}
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = done
		return false
	}
	for n := range g.deps {
		if state[n] == unvisited && visit(n) {
			return cycle
		}
	}
	return nil
}

// TopoOrder returns the nodes so that every node comes after all of its
// dependencies; among nodes free at the same time the lower index comes
// first, so the order is deterministic. It must only be called on an
// acyclic graph.
func (g *Graph) TopoOrder() []int {
	n := len(g.deps)
	indegree := make([]int, n)
	dependents := make([][]int, n)
	for i, ds := range g.deps {
		indegree[i] = len(ds)
		for _, d := range ds {
			dependents[d] = append(dependents[d], i)
		}
	}
	order := make([]int, 0, n)
	ready := &minHeap{}
	for i := range indegree {
		if indegree[i] == 0 {
			heap.Push(ready, i)
		}
	}
	for ready.Len() > 0 {
		next := heap.Pop(ready).(int)
		order = append(order, next)
		for _, m := range dependents[next] {
			indegree[m]--
			if indegree[m] == 0 {
				heap.Push(ready, m)
			}
		}
	}
	if len(order) < n {
		panic("dag: TopoOrder on a graph with a cycle")
	}
	return order
}

// Descendants returns, indexed by node, whether the node depends on n,
// directly or transitively: the nodes of which n is an ancestor. It walks
// each edge once, without recursion, so that asking it for the few nodes
// trigger rules name keeps validation linear in the graph's size.
func (g *Graph) Descendants(n int) []bool {
	if g.dependents == nil {
		g.dependents = make([][]int, len(g.deps))
		for i, ds := range g.deps {
			for _, d := range ds {
				g.dependents[d] = append(g.dependents[d], i)
			}
		}
	}
	seen := make([]bool, len(g.deps))
	stack := []int{n}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, m := range g.dependents[i] {
			if !seen[m] {
				seen[m] = true
				stack = append(stack, m)
			}
		}
	}
	return seen
}

// Closest returns the candidate nearest to name by edit distance, or ""
// when none is close enough to be a plausible typo. Candidates whose
// length alone puts them out of reach are not compared, and a comparison
// stops once it cannot come within reach, so that a long list costs
// little more than reading it.
func Closest(name string, candidates []string) string {
	rn := []rune(name)
	limit := max(len(rn)/2, 2)
	best, bestDist := "", limit+1
	var rc []rune
	var prev, cur []int
	for _, c := range candidates {
		if len(c) > 4*(len(rn)+bestDist) {
			continue // too many bytes for runes within reach
		}
		rc = append(rc[:0], []rune(c)...)
		if abs(len(rc)-len(rn)) >= bestDist {
			continue
		}
		var d int
		d, prev, cur = distance(rn, rc, bestDist, prev, cur)
		if d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// distance is the Levenshtein edit distance between a and b, or a value
// of at least bound once it is sure to be that far or farther. prev and
// cur are scratch rows, returned for the next call.
func distance(a, b []rune, bound int, prev, cur []int) (int, []int, []int) {
	prev = slices.Grow(prev[:0], len(b)+1)[:len(b)+1]
	cur = slices.Grow(cur[:0], len(b)+1)[:len(b)+1]
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		rowMin := cur[0]
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			rowMin = min(rowMin, cur[j])
		}
		prev, cur = cur, prev
		if rowMin >= bound {
			return rowMin, prev, cur
		}
	}
	return prev[len(b)], prev, cur
}

// minHeap holds the nodes free to come next in TopoOrder, lowest first.
type minHeap []int

func (h minHeap) Len() int           { return len(h) }
func (h minHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h minHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *minHeap) Push(x any)        { *h = append(*h, x.(int)) }
func (h *minHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
