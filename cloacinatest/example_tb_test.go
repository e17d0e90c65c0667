package cloacinatest_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
)

// exampleTB stands in for the *testing.T an example has no access to: it
// gives the helpers a temporary directory, cleanups and a context, and
// panics where a test would fail.
type exampleTB struct {
	testing.TB
	ctx      context.Context
	cleanups []func()
}

// exampleT returns a stand-in test and the function that ends it,
// running its cleanups as a test's end does.
func exampleT() (*exampleTB, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	t := &exampleTB{ctx: ctx}
	return t, func() {
		cancel()
		for i := len(t.cleanups) - 1; i >= 0; i-- {
			t.cleanups[i]()
		}
	}
}

func (t *exampleTB) Helper()                   {}
func (t *exampleTB) Name() string              { return "Example" }
func (t *exampleTB) Context() context.Context  { return t.ctx }
func (t *exampleTB) Output() io.Writer         { return io.Discard }
func (t *exampleTB) Cleanup(f func())          { t.cleanups = append(t.cleanups, f) }
func (t *exampleTB) Errorf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (t *exampleTB) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }

func (t *exampleTB) TempDir() string {
	dir, err := os.MkdirTemp("", "cloacinatest-example")
	if err != nil {
		panic(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
