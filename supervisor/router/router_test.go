package router

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"corral.dev/pluginkit"
)

// fakeNamespaces answers Get with the call's namespace header and call id,
// so tests can see what crossed the router.
type fakeNamespaces struct {
	namespacesapi.UnimplementedNamespacesServer
	calls atomic.Int32
	// hang, when set, makes Get block until the test kills the server.
	hang chan struct{}
}

func (f *fakeNamespaces) Get(ctx context.Context, req *namespacesapi.GetNamespaceRequest) (*namespacesapi.GetNamespaceResponse, error) {
	f.calls.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	_ = grpc.SetTrailer(ctx, metadata.Pairs(pluginkit.HandledKey, "1", "x-trailer", "t"))
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-header", "h"))
	if f.hang != nil {
		<-f.hang
	}
	if req.Name == "missing" {
		return nil, status.Error(codes.NotFound, "namespace missing: not found")
	}
	return &namespacesapi.GetNamespaceResponse{Namespace: &namespacesapi.Namespace{
		Name: req.Name,
		Labels: map[string]string{
			"ns":      first(md.Get(pluginkit.NamespaceKey)),
			"call-id": first(md.Get(pluginkit.CallIDKey)),
		},
	}}, nil
}

// fakeContent streams Read in chunks and echoes Write.
type fakeContent struct {
	contentapi.UnimplementedContentServer
}

func (fakeContent) Read(req *contentapi.ReadContentRequest, s contentapi.Content_ReadServer) error {
	for i := int64(0); i < req.Size; i++ {
		if err := s.Send(&contentapi.ReadContentResponse{Offset: i, Data: []byte{byte(i)}}); err != nil {
			return err
		}
	}
	return nil
}

func (fakeContent) Write(s contentapi.Content_WriteServer) error {
	var total int64
	for {
		req, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		total += int64(len(req.Data))
		if err := s.Send(&contentapi.WriteContentResponse{Offset: total}); err != nil {
			return err
		}
	}
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// backend is a fake plugin: a real gRPC server on a unix socket.
type backend struct {
	srv  *grpc.Server
	conn *grpc.ClientConn
}

func startBackend(t *testing.T, ns *fakeNamespaces) *backend {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "b.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	namespacesapi.RegisterNamespacesServer(srv, ns)
	contentapi.RegisterContentServer(srv, fakeContent{})
	go srv.Serve(l)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); srv.Stop() })
	return &backend{srv: srv, conn: conn}
}

// fakeBackends hands out the current backend; tests swap it to simulate a
// plugin restart.
type fakeBackends struct {
	mu      sync.Mutex
	current *backend
}

func (f *fakeBackends) Acquire(ctx context.Context, method, target string) (Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	service := pluginkit.ServiceOf(method)
	switch service {
	case "containerd.services.namespaces.v1.Namespaces", "containerd.services.content.v1.Content":
		return fakeLease{f.current.conn}, nil
	}
	return nil, status.Errorf(codes.Unimplemented, "unknown service %s", service)
}

type fakeLease struct{ conn *grpc.ClientConn }

func (l fakeLease) Conn() grpc.ClientConnInterface { return l.conn }
func (fakeLease) Release()                         {}

// startRouter serves r on a unix socket and returns a client connection.
func startRouter(t *testing.T, b Backends) *grpc.ClientConn {
	t.Helper()
	r := New(b, Options{ReplayTimeout: 5 * time.Second, Log: zerolog.Nop()})
	sock := filepath.Join(t.TempDir(), "r.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(r.ServerOptions()...)
	go srv.Serve(l)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); srv.Stop() })
	return conn
}

func nsCtx() context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), pluginkit.NamespaceKey, "testns")
}

func TestUnaryForwardsMetadataAndStatus(t *testing.T) {
	conn := startRouter(t, &fakeBackends{current: startBackend(t, &fakeNamespaces{})})
	client := namespacesapi.NewNamespacesClient(conn)

	var header, trailer metadata.MD
	resp, err := client.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"},
		grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Namespace.Labels["ns"]; got != "testns" {
		t.Errorf("namespace header at plugin = %q, want testns", got)
	}
	if resp.Namespace.Labels["call-id"] == "" {
		t.Error("plugin saw no call id")
	}
	if first(header.Get("x-header")) != "h" || first(trailer.Get("x-trailer")) != "t" {
		t.Errorf("header %v trailer %v: plugin's metadata lost", header, trailer)
	}
	if len(trailer.Get(pluginkit.HandledKey)) != 0 {
		t.Error("router leaked its handled marker to the client")
	}

	_, err = client.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "missing"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("Get(missing) = %v, want NotFound", err)
	}
}

func TestUnknownServiceIsUnimplemented(t *testing.T) {
	conn := startRouter(t, &fakeBackends{current: startBackend(t, &fakeNamespaces{})})
	err := conn.Invoke(nsCtx(), "/no.such.Service/Call", &namespacesapi.GetNamespaceRequest{}, &namespacesapi.GetNamespaceResponse{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("unknown service = %v, want Unimplemented", err)
	}
}

func TestStreamsBothWays(t *testing.T) {
	conn := startRouter(t, &fakeBackends{current: startBackend(t, &fakeNamespaces{})})
	client := contentapi.NewContentClient(conn)

	rs, err := client.Read(nsCtx(), &contentapi.ReadContentRequest{Size: 100})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for {
		_, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 100 {
		t.Errorf("Read delivered %d messages, want 100", n)
	}

	ws, err := client.Write(nsCtx())
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		if err := ws.Send(&contentapi.WriteContentRequest{Data: make([]byte, 1000)}); err != nil {
			t.Fatal(err)
		}
		resp, err := ws.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.Offset != int64(i*1000) {
			t.Fatalf("Write reply %d offset %d, want %d", i, resp.Offset, i*1000)
		}
	}
	if err := ws.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("Write end = %v, want EOF", err)
	}
}

// TestReplaysCallWhosePluginDied kills the backend while it holds a call,
// then brings up a new one: the client's call succeeds, and the new backend
// sees the same call id.
func TestReplaysCallWhosePluginDied(t *testing.T) {
	dying := &fakeNamespaces{hang: make(chan struct{})}
	fb := &fakeBackends{current: startBackend(t, dying)}
	conn := startRouter(t, fb)
	client := namespacesapi.NewNamespacesClient(conn)

	next := &fakeNamespaces{}
	nextBackend := startBackend(t, next)
	go func() {
		for dying.calls.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		// The plugin dies mid-call; the host then hands out its successor.
		fb.mu.Lock()
		old := fb.current
		fb.current = nextBackend
		fb.mu.Unlock()
		old.srv.Stop()
		close(dying.hang)
	}()

	resp, err := client.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"})
	if err != nil {
		t.Fatalf("Get across a plugin death = %v, want success", err)
	}
	if next.calls.Load() != 1 {
		t.Errorf("successor saw %d calls, want 1", next.calls.Load())
	}
	if resp.Namespace.Labels["call-id"] == "" {
		t.Error("replayed call lost its call id")
	}
}

// TestDoesNotReplayAnsweredUnavailable: an Unavailable the plugin's handler
// returned is the plugin's answer (content uses it for locked refs).
func TestDoesNotReplayAnsweredUnavailable(t *testing.T) {
	ns := &unavailableNamespaces{}
	sock := filepath.Join(t.TempDir(), "u.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	namespacesapi.RegisterNamespacesServer(srv, ns)
	go srv.Serve(l)
	bconn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bconn.Close(); srv.Stop() })

	conn := startRouter(t, &fakeBackends{current: &backend{srv: srv, conn: bconn}})
	_, err = namespacesapi.NewNamespacesClient(conn).Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Get = %v, want the plugin's Unavailable", err)
	}
	if ns.calls.Load() != 1 {
		t.Errorf("plugin saw %d calls, want 1 (no replay)", ns.calls.Load())
	}
}

type unavailableNamespaces struct {
	namespacesapi.UnimplementedNamespacesServer
	calls atomic.Int32
}

func (u *unavailableNamespaces) Get(ctx context.Context, _ *namespacesapi.GetNamespaceRequest) (*namespacesapi.GetNamespaceResponse, error) {
	u.calls.Add(1)
	_ = grpc.SetTrailer(ctx, metadata.Pairs(pluginkit.HandledKey, "1"))
	return nil, status.Error(codes.Unavailable, "ref locked")
}
