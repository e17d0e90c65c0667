//go:build !unix

package sqlite_test

import "time"

// processCPU returns zero where the platform does not say.
func processCPU() time.Duration { return 0 }
