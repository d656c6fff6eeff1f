package pluginkit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	nsapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	"github.com/hashicorp/go-plugin"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"corral.dev/pluginkit/lane"
	pluginv1 "corral.dev/proto/plugin/v1"
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

// TestLane: with a socket directory, the plugin's services are registered on
// its lane too, Info exports the socket, the lane refuses a process other
// than the supervisor, and closing removes the socket.
func TestLane(t *testing.T) {
	dir, err := os.MkdirTemp("", "ln")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv(plugin.EnvUnixSocketDir, dir)
	h := startHost(t)

	sock := filepath.Join(dir, fmt.Sprintf("lane-%d", os.Getpid()))
	info, err := h.Info(context.Background(), &pluginv1.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := info.GetExports()[LaneExport]; got != sock {
		t.Errorf("Info exports %s = %q, want %q", LaneExport, got, sock)
	}
	if want := []string{nsapi.Namespaces_ServiceDesc.ServiceName}; !slices.Equal(info.GetServices(), want) {
		t.Errorf("Info services = %v, want %v", info.GetServices(), want)
	}

	// Reaching the handler, not "unknown service", shows the registration.
	r := h.lane.Dispatch(context.Background(), &lane.Call{
		Method: "/containerd.services.namespaces.v1.Namespaces/List",
		Msg:    lane.AppendMsg(nil, nil),
	})
	if codes.Code(r.Code) != codes.Unimplemented || r.Message != "method List not implemented" {
		t.Errorf("lane List = %v %q, want the handler's Unimplemented", codes.Code(r.Code), r.Message)
	}

	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := nc.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read on a lane refused to this process = %d, %v; want EOF", n, err)
	}

	h.close()
	if _, err := os.Stat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lane socket after close: %v", err)
	}
}

// TestNoLane: a plugin whose lane cannot listen serves over gRPC alone.
func TestNoLane(t *testing.T) {
	t.Setenv(plugin.EnvUnixSocketDir, filepath.Join(t.TempDir(), "missing"))
	h := startHost(t)
	defer h.close()
	info, err := h.Info(context.Background(), &pluginv1.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := info.GetExports()[LaneExport]; ok || h.lane != nil {
		t.Errorf("Info exports %s = %q without a lane", LaneExport, got)
	}
	if info.GetInitError() != "" || len(info.GetServices()) != 1 {
		t.Errorf("Info = %v, want the namespaces service and no init error", info)
	}
}

// startHost initialises a host whose plugin registers the namespaces
// service, as go-plugin would on its server.
func startHost(t *testing.T) *host {
	t.Helper()
	h := &host{log: zerolog.Nop(), plugin: Plugin{
		Type: "io.containerd.test.v1",
		ID:   "test",
		Init: func(_ context.Context, ic *InitContext) error {
			nsapi.RegisterNamespacesServer(ic.Server, nsapi.UnimplementedNamespacesServer{})
			return nil
		},
	}}
	gs := grpc.NewServer()
	h.server = gs
	h.init(gs)
	t.Cleanup(gs.Stop)
	return h
}

func TestCheckMethods(t *testing.T) {
	gs := grpc.NewServer()
	nsapi.RegisterNamespacesServer(gs, nsapi.UnimplementedNamespacesServer{})
	pluginv1.RegisterPluginServer(gs, pluginv1.UnimplementedPluginServer{})
	served := gs.GetServiceInfo()

	if err := checkMethods([]string{"/containerd.services.namespaces.v1.Namespaces/Get"}, served); err != nil {
		t.Errorf("served public method: %v", err)
	}
	for _, m := range []string{
		"/containerd.services.namespaces.v1.Namespaces/Nope", // not a method of it
		"/containerd.services.images.v1.Images/Get",          // not served
		"/corral.plugin.v1.Plugin/Info",                      // not public
		"containerd.services.namespaces.v1.Namespaces/Get",   // not a full name
		"/containerd.services.namespaces.v1.Namespaces",
	} {
		if err := checkMethods([]string{m}, served); !errdefs.IsInvalidArgument(err) {
			t.Errorf("checkMethods(%q) = %v, want InvalidArgument", m, err)
		}
	}
}
