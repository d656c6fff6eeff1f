//go:build linux

package sidebyside_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"corral.dev/bench/sidebyside"
)

var binaryFlag = flag.String("bench.binary", "", "our containerd binary (default: build from the workspace)")

var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// ourBinary returns -bench.binary, or builds the binary once per test run.
func ourBinary(tb testing.TB) string {
	tb.Helper()
	if *binaryFlag != "" {
		return *binaryFlag
	}
	build.once.Do(func() {
		if build.dir, build.err = os.MkdirTemp("", "cbbuild"); build.err != nil {
			return
		}
		build.bin, build.err = sidebyside.BuildOurs(context.Background(), build.dir)
	})
	if build.err != nil {
		tb.Fatal(build.err)
	}
	return build.bin
}

// processesOf returns the pids of live processes running binary.
func processesOf(binary string) ([]int, error) {
	matches, err := filepath.Glob("/proc/[0-9]*/exe")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, m := range matches {
		if exe, err := os.Readlink(m); err == nil && exe == binary {
			var pid int
			fmt.Sscanf(m, "/proc/%d/exe", &pid)
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
