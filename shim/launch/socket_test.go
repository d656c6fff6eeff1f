package launch

import (
	"strings"
	"testing"
)

func TestSocketPath(t *testing.T) {
	long := strings.Repeat("x", 250)
	tests := []struct {
		name, address, ns, id string
	}{
		{"short", "/run/containerd/containerd.sock.ttrpc", "default", "c1"},
		{"long", "/" + long, long, long},
	}
	seen := make(map[string]bool)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := socketPath(tt.address, tt.ns, tt.id)
			if len(p) >= 108 || !strings.HasPrefix(p, socketDir+"/") {
				t.Errorf("socketPath = %q (%d bytes), want a path in %s under 108 bytes", p, len(p), socketDir)
			}
			if p != socketPath(tt.address, tt.ns, tt.id) {
				t.Error("socketPath is not stable")
			}
			if seen[p] {
				t.Errorf("socketPath %q collides", p)
			}
			seen[p] = true
		})
	}
	if socketPath("a", "b", "c") == socketPath("a", "bc", "") {
		t.Error("socketPath does not separate its parts")
	}
}

func TestParseFlags(t *testing.T) {
	f, err := parseFlags([]string{
		"-namespace", "ns", "-address", "/a.sock", "-publish-binary", "/usr/bin/containerd",
		"-id", "c1", "-bundle", "/b", "-debug", "start",
	})
	if err != nil {
		t.Fatal(err)
	}
	if f.namespace != "ns" || f.id != "c1" || f.bundle != "/b" || !f.debug || f.action != "start" {
		t.Errorf("parseFlags = %+v", f)
	}
	again, err := parseFlags(f.args(serveAction))
	if err != nil || again.action != serveAction || again.id != "c1" || again.bundle != "/b" {
		t.Errorf("parseFlags(args(serve)) = %+v, %v", again, err)
	}
	if _, err := parseFlags([]string{"start"}); err == nil {
		t.Error("parseFlags without -namespace and -id succeeded")
	}
}
