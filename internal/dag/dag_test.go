package dag

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFindCycle(t *testing.T) {
	t.Parallel()
	// 0 <- 1 <- 2 <- 0 (each depends on the previous), plus an acyclic 3.
	g := New([][]int{{2}, {0}, {1}, {0}})
	cycle := g.FindCycle()
	require.Equal(t, cycle[0], cycle[len(cycle)-1])
	require.Len(t, cycle, 4)
	require.ElementsMatch(t, []int{0, 1, 2}, cycle[:3])

	require.Nil(t, New([][]int{{}, {0}, {0, 1}}).FindCycle())
	require.Equal(t, []int{0, 0}, New([][]int{{0}}).FindCycle())
}

func TestTopoOrder(t *testing.T) {
	t.Parallel()
	// 3 depends on 1 and 2, which depend on 0.
	order := New([][]int{{}, {0}, {0}, {1, 2}}).TopoOrder()
	require.Equal(t, []int{0, 1, 2, 3}, order)
	// Declaration order breaks ties deterministically.
	require.Equal(t, []int{1, 0, 2}, New([][]int{{1}, {}, {}}).TopoOrder())
}

func TestDescendants(t *testing.T) {
	t.Parallel()
	// 1 depends on 0, 2 on 1 and 3 on 0; 4 stands alone.
	g := New([][]int{{}, {0}, {1}, {0}, {}})
	require.Equal(t, []bool{false, true, true, true, false}, g.Descendants(0))
	require.Equal(t, []bool{false, false, true, false, false}, g.Descendants(1))
	require.Equal(t, []bool{false, false, false, false, false}, g.Descendants(4))
}

func TestClosest(t *testing.T) {
	t.Parallel()
	names := []string{"extract", "transform", "load"}
	require.Equal(t, "extract", Closest("extrct", names))
	require.Equal(t, "load", Closest("laod", names))
	require.Equal(t, "", Closest("completely-different", names))
	require.Equal(t, "", Closest("x", nil))
}
