package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the kernel's USER_HZ: /proc reports CPU times in these.
const clockTick = 10 * time.Millisecond

// cpuSample is the CPU time used so far by this process and by every
// PostgreSQL server process on the machine.
type cpuSample struct {
	self, postgres time.Duration
}

// sampleCPU reads /proc. The PostgreSQL figure covers the whole server,
// so it includes other users' queries on a shared machine.
func sampleCPU() cpuSample {
	var s cpuSample
	s.self, _ = procCPU("/proc/self/stat")
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		if d, comm := procCPU(path); comm == "postgres" {
			s.postgres += d
		}
	}
	return s
}

// procCPU returns utime+stime and the command name of one /proc/PID/stat.
func procCPU(path string) (time.Duration, string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, ""
	}
	s := string(b)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open {
		return 0, ""
	}
	comm := s[open+1 : closing]
	fields := strings.Fields(s[closing+1:])
	// After the command: state is field 3, utime field 14, stime field 15.
	if len(fields) < 13 {
		return 0, comm
	}
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut+st) * clockTick, comm
}

func (s cpuSample) sub(o cpuSample) cpuSample {
	return cpuSample{self: s.self - o.self, postgres: s.postgres - o.postgres}
}
