//go:build !unix

package testdb

import "time"

// ProcessCPU returns 0 where the platform does not say: benchmarks then
// report no CPU time.
func ProcessCPU() time.Duration { return 0 }
