package pluginkit

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

type testConfig struct {
	Policy string `toml:"policy"`
	Size   int    `toml:"size"`
}

func TestDecodeConfig(t *testing.T) {
	p := Plugin{ID: "t", Config: func() any { return &testConfig{Policy: "shared", Size: 1} }}
	for _, tc := range []struct {
		name    string
		section string
		want    testConfig
		errText string
	}{
		{name: "empty keeps defaults", want: testConfig{Policy: "shared", Size: 1}},
		{name: "override", section: "policy = \"isolated\"\nsize = 3", want: testConfig{Policy: "isolated", Size: 3}},
		{name: "unknown key", section: "polcy = \"x\"", errText: "unknown key polcy"},
		{name: "wrong type", section: "size = \"big\"", errText: "size"},
		{name: "broken toml", section: "size = ", errText: "plugins.t"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeConfig(p, tc.section)
			if tc.errText != "" {
				if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("DecodeConfig(%q) = %v, want invalid argument naming %q", tc.section, err, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *got.(*testConfig) != tc.want {
				t.Errorf("DecodeConfig(%q) = %+v, want %+v", tc.section, *got.(*testConfig), tc.want)
			}
		})
	}

	if _, err := DecodeConfig(Plugin{ID: "none"}, "x = 1"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("options for a plugin without configuration = %v, want invalid argument", err)
	}
}

// TestPeerCredentialsRefuseOthers: a plugin's server serves its parent (the
// supervisor) alone; this test process is not the parent of itself.
func TestPeerCredentialsRefuseOthers(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(PeerCredentials()))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(l)
	defer srv.Stop()

	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err == nil {
		t.Fatal("a process other than the parent reached the plugin's server")
	}
}
