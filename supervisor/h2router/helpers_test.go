package h2router

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"corral.dev/pluginkit"
	"corral.dev/pluginkit/lane"
)

const (
	nsService      = "containerd.services.namespaces.v1.Namespaces"
	contentService = "containerd.services.content.v1.Content"
)

// fakeNamespaces answers Get with the call's namespace header and call id,
// so tests can see what crossed the router.
type fakeNamespaces struct {
	namespacesapi.UnimplementedNamespacesServer
	calls atomic.Int32
	// hang, when set, makes Get block until it is closed.
	hang chan struct{}
	// unavailable makes Get answer Unavailable as its handler's answer.
	unavailable bool
	// cancelled, when set, receives the error of a hung Get's context.
	cancelled chan error
}

func (f *fakeNamespaces) Get(ctx context.Context, req *namespacesapi.GetNamespaceRequest) (*namespacesapi.GetNamespaceResponse, error) {
	f.calls.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	_ = grpc.SetTrailer(ctx, metadata.Pairs(pluginkit.HandledKey, "1", "x-trailer", "t"))
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-header", "h"))
	if f.hang != nil {
		select {
		case <-f.hang:
		case <-ctx.Done():
			if f.cancelled != nil {
				f.cancelled <- ctx.Err()
			}
			return nil, ctx.Err()
		}
	}
	_, hasDeadline := ctx.Deadline()
	switch {
	case f.unavailable:
		return nil, status.Error(codes.Unavailable, "ref locked")
	case req.Name == "missing":
		return nil, status.Error(codes.NotFound, "namespace missing: not found")
	case req.Name == "details":
		st, err := status.New(codes.FailedPrecondition, "with details").WithDetails(&emptypb.Empty{})
		if err != nil {
			return nil, err
		}
		return nil, st.Err()
	}
	return &namespacesapi.GetNamespaceResponse{Namespace: &namespacesapi.Namespace{
		Name: req.Name,
		Labels: map[string]string{
			"ns":      first(md.Get(pluginkit.NamespaceKey)),
			"call-id": first(md.Get(pluginkit.CallIDKey)),
			"target":  first(md.Get(pluginkit.TargetKey)),
			"bin":     hex.EncodeToString([]byte(first(md.Get("x-bin")))),
			"timeout": strconv.FormatBool(hasDeadline),
		},
	}}, nil
}

// fakeContent streams Read in chunks of req.Offset bytes (1 when 0) until
// req.Size bytes went out (forever when negative), and echoes Write.
type fakeContent struct {
	contentapi.UnimplementedContentServer
	sent    atomic.Int64
	started chan struct{} // receives once per Read that started
	ended   chan error    // receives each Read's end
	// redirectTo, when set, makes Read on a lane hand the call over to
	// that plugin id, with the offset doubled.
	redirectTo string
}

func (f *fakeContent) Read(req *contentapi.ReadContentRequest, s contentapi.Content_ReadServer) error {
	if f.redirectTo != "" {
		if !lane.CanRedirect(s.Context()) {
			return status.Error(codes.FailedPrecondition, "Read not on a lane")
		}
		return lane.Redirect(f.redirectTo, "/"+contentService+"/Read",
			&contentapi.ReadContentRequest{Size: req.GetSize(), Offset: 2 * req.GetOffset()})
	}
	if f.started != nil {
		f.started <- struct{}{}
	}
	err := f.read(req, s)
	if f.ended != nil {
		f.ended <- err
	}
	return err
}

func (f *fakeContent) read(req *contentapi.ReadContentRequest, s contentapi.Content_ReadServer) error {
	chunk := max(req.Offset, 1)
	for off := int64(0); req.Size < 0 || off < req.Size; off += chunk {
		n := chunk
		if req.Size >= 0 {
			n = min(chunk, req.Size-off)
		}
		data := bytes.Repeat([]byte{byte(off / chunk)}, int(n))
		if err := s.Send(&contentapi.ReadContentResponse{Offset: off, Data: data}); err != nil {
			return err
		}
		f.sent.Add(n)
	}
	return nil
}

func (f *fakeContent) Write(s contentapi.Content_WriteServer) error {
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

// fakeVersion is the supervisor's own Version service.
type fakeVersion struct {
	versionapi.UnimplementedVersionServer
}

func (fakeVersion) Version(context.Context, *emptypb.Empty) (*versionapi.VersionResponse, error) {
	return &versionapi.VersionResponse{Version: "test"}, nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// backend is a fake plugin: a real gRPC server on a unix socket and, when
// the test runs with lanes, a lane server on another.
type backend struct {
	srv  *grpc.Server
	lane *lane.Server // nil without lanes
	addr net.Addr
	ns   *fakeNamespaces
	cs   *fakeContent
}

// withLanes makes startBackend serve lanes too; TestOverLanes sets it.
var withLanes bool

func startBackend(t testing.TB, ns *fakeNamespaces, cs *fakeContent) *backend {
	t.Helper()
	return startBackendWith(t, ns, cs)
}

// startBackendWith is startBackend with options for the gRPC server.
func startBackendWith(t testing.TB, ns *fakeNamespaces, cs contentapi.ContentServer, opts ...grpc.ServerOption) *backend {
	t.Helper()
	dir := shortTemp(t)
	l, err := net.Listen("unix", filepath.Join(dir, "b.sock"))
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{srv: grpc.NewServer(opts...), addr: l.Addr(), ns: ns}
	if fc, ok := cs.(*fakeContent); ok {
		b.cs = fc
	}
	var reg grpc.ServiceRegistrar = b.srv
	if withLanes {
		ll, err := net.Listen("unix", filepath.Join(dir, "lane"))
		if err != nil {
			t.Fatal(err)
		}
		b.lane = lane.NewServer(lane.ServerOptions{Log: zerolog.Nop()})
		b.addr = &lane.Addr{Addr: l.Addr(), Lane: ll.Addr().String()}
		reg = both{b.srv, b.lane}
		go b.lane.Serve(ll)
	}
	namespacesapi.RegisterNamespacesServer(reg, ns)
	contentapi.RegisterContentServer(reg, cs)
	go b.srv.Serve(l)
	t.Cleanup(b.stop)
	return b
}

// stop ends the backend as a plugin's death would.
func (b *backend) stop() {
	b.srv.Stop()
	if b.lane != nil {
		b.lane.Close()
	}
}

// both registers services on two registrars.
type both [2]grpc.ServiceRegistrar

func (r both) RegisterService(desc *grpc.ServiceDesc, impl any) {
	r[0].RegisterService(desc, impl)
	r[1].RegisterService(desc, impl)
}

// shortTemp returns a temporary directory whose socket paths fit sun_path.
func shortTemp(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "h2r")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// fakeBackends hands out the current backend of each service; tests swap
// them to simulate a plugin restart. It counts leases held.
type fakeBackends struct {
	mu       sync.Mutex
	byName   map[string]*backend
	held     atomic.Int32
	acquired atomic.Int32
}

func newFakeBackends(ns, content *backend) *fakeBackends {
	return &fakeBackends{byName: map[string]*backend{nsService: ns, contentService: content}}
}

func (f *fakeBackends) AcquireAddr(ctx context.Context, method, target string) (net.Addr, func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	service := pluginkit.ServiceOf(method)
	if target != "" {
		service = target
	}
	b := f.byName[service]
	if b == nil {
		return nil, nil, status.Errorf(codes.Unimplemented, "unknown service %s", service)
	}
	f.held.Add(1)
	f.acquired.Add(1)
	var once sync.Once
	return b.addr, func() { once.Do(func() { f.held.Add(-1) }) }, nil
}

func (f *fakeBackends) swap(service string, b *backend) {
	f.mu.Lock()
	f.byName[service] = b
	f.mu.Unlock()
}

// startRouter serves an h2router in front of fb, with a local Version
// service, and returns the router and a client connection to it.
func startRouter(t testing.TB, fb Backends, opts Options) (*Router, *grpc.ClientConn) {
	t.Helper()
	r, conn, _ := startRouterSock(t, fb, opts)
	return r, conn
}

// startRouterSock is startRouter that also returns the router's socket.
func startRouterSock(t testing.TB, fb Backends, opts Options) (*Router, *grpc.ClientConn, string) {
	t.Helper()
	local := grpc.NewServer()
	opts.Local = local
	var reg grpc.ServiceRegistrar = local
	if withLanes {
		opts.LocalLane = lane.NewServer(lane.ServerOptions{Log: zerolog.Nop()})
		reg = both{local, opts.LocalLane}
	}
	versionapi.RegisterVersionServer(reg, fakeVersion{})
	if opts.ReplayTimeout == 0 {
		opts.ReplayTimeout = 5 * time.Second
	}
	opts.Log = zerolog.Nop()
	r := New(fb, opts)
	sock := filepath.Join(shortTemp(t), "r.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go r.Serve(l)
	conn := dialUnix(t, sock)
	t.Cleanup(func() { conn.Close(); r.Stop() })
	return r, conn, sock
}

func dialUnix(t testing.TB, sock string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	conn, err := grpc.NewClient("unix://"+sock, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func nsCtx() context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), pluginkit.NamespaceKey, "testns")
}

// openStreams counts the calls the router holds.
func (r *Router) openStreams() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for c := range r.conns {
		c.p.mu.Lock()
		n += len(c.streams)
		c.p.mu.Unlock()
	}
	return n
}

func (f *fakeBackends) TryAcquireAddr(method, target string) (net.Addr, func(), bool) {
	addr, release, err := f.AcquireAddr(context.Background(), method, target)
	return addr, release, err == nil
}

// waitingBackends hides TryAcquireAddr, so that every call opens on a
// goroutine of its own.
type waitingBackends struct{ fb *fakeBackends }

func (w waitingBackends) AcquireAddr(ctx context.Context, method, target string) (net.Addr, func(), error) {
	return w.fb.AcquireAddr(ctx, method, target)
}
