// Package testkit holds what the project's tests share: the gate for tests that
// need root, mounts or runc, and fixtures built from real parts.
package testkit

import (
	"flag"
	"os"
	"testing"
)

var rootEnabled = flag.Bool("test.root", false, "run tests that need root, mounts or runc")

// RequiresRoot skips t unless the test binary runs as root with -test.root.
// The Makefile passes the flag to exactly the packages that call this.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if !*rootEnabled {
		t.Skip("needs -test.root")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}
