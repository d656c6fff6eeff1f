package gotune

import "testing"

func TestGODEBUG(t *testing.T) {
	for _, tc := range []struct{ cur, want string }{
		{"", "schedtrace=2147483647"},
		{"madvdontneed=1", "madvdontneed=1,schedtrace=2147483647"},
		{"schedtrace=1000", "schedtrace=1000"},
		{"gctrace=1,schedtrace=0", "gctrace=1,schedtrace=0"},
	} {
		if got := GODEBUG(tc.cur); got != tc.want {
			t.Errorf("GODEBUG(%q) = %q, want %q", tc.cur, got, tc.want)
		}
	}
}
