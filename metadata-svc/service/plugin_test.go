package service_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"

	"corral.dev/metadata-svc/service"
	"corral.dev/pluginkit"
)

func TestConfig(t *testing.T) {
	tests := []struct {
		name    string
		section string
		want    string
		wantErr error
		wantMsg string
	}{
		{name: "default", want: service.SharingShared},
		{name: "isolated", section: `content_sharing_policy = "isolated"`, want: service.SharingIsolated},
		{name: "shared", section: `content_sharing_policy = "shared"`, want: service.SharingShared},
		{
			name:    "unknown policy",
			section: `content_sharing_policy = "open"`,
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: `content_sharing_policy "open"`,
		},
		{
			name:    "unknown key",
			section: `sharing = "shared"`,
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: "sharing",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := pluginkit.DecodeConfig(service.Plugin, tt.section)
			if err == nil {
				err = cfg.(*service.Config).Validate()
			}
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("config error = %v, want none", err)
			case tt.wantErr != nil && !errdefs.IsInvalidArgument(err):
				t.Fatalf("config error = %v, want invalid argument", err)
			case tt.wantErr != nil && !strings.Contains(err.Error(), tt.wantMsg):
				t.Errorf("config error = %q, want it to name %q", err, tt.wantMsg)
			case tt.wantErr == nil && cfg.(*service.Config).ContentSharingPolicy != tt.want:
				t.Errorf("policy = %q, want %q", cfg.(*service.Config).ContentSharingPolicy, tt.want)
			}
		})
	}
}

func TestInitRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  any
	}{
		{"unknown policy", &service.Config{ContentSharingPolicy: "bogus"}},
		{"empty policy", &service.Config{}},
		{"wrong type", "shared"},
		{"nil", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ic := &pluginkit.InitContext{
				Root:   t.TempDir(),
				Config: tt.cfg,
				Server: grpc.NewServer(),
				Log:    zerolog.Nop(),
			}
			err := service.Plugin.Init(context.Background(), ic)
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Init error = %v, want invalid argument", err)
			}
			if _, err := os.Stat(filepath.Join(ic.Root, service.DBName)); !os.IsNotExist(err) {
				t.Errorf("meta.db exists after a failed Init: %v", err)
			}
		})
	}
}

func TestInitServesNamespaces(t *testing.T) {
	root := filepath.Join(t.TempDir(), "io.containerd.metadata.v1.bolt")
	gs := grpc.NewServer()
	ic := &pluginkit.InitContext{
		Root:   root,
		Config: &service.Config{ContentSharingPolicy: service.SharingShared},
		Server: gs,
		Events: &recordingPublisher{},
		Log:    zerolog.Nop(),
	}
	if err := service.Plugin.Init(context.Background(), ic); err != nil {
		t.Fatalf("Init: %v", err)
	}

	fi, err := os.Stat(filepath.Join(root, service.DBName))
	if err != nil {
		t.Fatalf("stat meta.db: %v", err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("meta.db mode = %v, want 0600", mode)
	}

	// The closers of ic are not reachable from here; the database stays
	// open until the test binary exits.
	c := dial(t, gs, func() {})
	resp, err := c.Get(context.Background(), &api.GetNamespaceRequest{Name: "default"})
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if resp.GetNamespace().GetName() != "default" {
		t.Errorf("Get name = %q, want default", resp.GetNamespace().GetName())
	}
}
