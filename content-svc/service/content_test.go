package service

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"corral.dev/content-svc/store"
	"corral.dev/pluginkit"
	"corral.dev/pluginkit/contenttest"
)

// server is the service on a store in root, over a unix socket.
type server struct {
	gs   *grpc.Server
	sock string
}

// serve starts the service made with opts on the store in root.
func serve(t testing.TB, root string, opts ...Opt) *server {
	t.Helper()
	s, err := store.Open(root, store.WithLogger(zerolog.Nop()))
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(pluginkit.MaxMsgSize),
		grpc.MaxSendMsgSize(pluginkit.MaxMsgSize),
	)
	NewContent(s, zerolog.Nop(), opts...).Register(gs)
	sock := filepath.Join(t.TempDir(), "content.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	return &server{gs: gs, sock: sock}
}

// client returns a client of srv that closes with the test.
func (srv *server) client(t testing.TB) contentapi.ContentClient {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+srv.sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(pluginkit.MaxMsgSize),
			grpc.MaxCallSendMsgSize(pluginkit.MaxMsgSize),
		),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return contentapi.NewContentClient(cc)
}

func TestConformance(t *testing.T) {
	srv := serve(t, t.TempDir())
	contenttest.Run(t,
		func(t *testing.T) contentapi.ContentClient { return srv.client(t) },
		context.Background,
	)
}

// TestRestart stops the service mid-ingest and starts a new one on the same
// directory, as the supervisor does after a crash: the ingest resumes.
func TestRestart(t *testing.T) {
	root := t.TempDir()
	data := []byte("resumable across processes")
	dgst := digest.FromBytes(data)
	ctx := context.Background()

	first := serve(t, root)
	w, err := first.client(t).Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Send(&contentapi.WriteContentRequest{Ref: "ns/r", Total: int64(len(data)), Expected: dgst.String()})
	w.Recv()
	w.Send(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_WRITE, Data: data[:9]})
	if resp, err := w.Recv(); err != nil || resp.GetOffset() != 9 {
		t.Fatalf("WRITE = %v, %v", resp, err)
	}
	first.gs.Stop()

	second := serve(t, root)
	c := second.client(t)
	w, err = c.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w.Send(&contentapi.WriteContentRequest{Ref: "ns/r", Total: int64(len(data)), Expected: dgst.String()})
	resp, err := w.Recv()
	if err != nil || resp.GetOffset() != 9 || resp.GetDigest() != digest.FromBytes(data[:9]).String() {
		t.Fatalf("STAT after restart = %v, %v; want offset 9", resp, err)
	}
	w.Send(&contentapi.WriteContentRequest{
		Action: contentapi.WriteAction_COMMIT, Offset: 9, Data: data[9:],
		Total: int64(len(data)), Expected: dgst.String(),
	})
	if resp, err := w.Recv(); err != nil || resp.GetDigest() != dgst.String() {
		t.Fatalf("COMMIT after restart = %v, %v", resp, err)
	}
}

// TestUnknownAction checks that an action the protocol lacks is refused.
func TestUnknownAction(t *testing.T) {
	c := serve(t, t.TempDir()).client(t)
	w, err := c.Write(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w.Send(&contentapi.WriteContentRequest{Ref: "r", Action: 7})
	if _, err := w.Recv(); !errdefs.IsInvalidArgument(errgrpc.ToNative(err)) {
		t.Errorf("Write with action 7 = %v, want invalid argument", err)
	}
}

func TestMetrics(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := NewContent(s, zerolog.Nop())
	reg := prometheus.NewPedanticRegistry()
	if err := c.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	c.Register(gs)
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(l)
	t.Cleanup(gs.Stop)

	client := (&server{gs: gs, sock: sock}).client(t)
	data := []byte("counted")
	if err := ingest(context.Background(), client, "m", data, digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(context.Background(), client, digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
	got := []float64{
		testutil.ToFloat64(c.metrics.written),
		testutil.ToFloat64(c.metrics.read),
		testutil.ToFloat64(c.metrics.commits),
	}
	if diff := cmp.Diff([]float64{7, 7, 1}, got); diff != "" {
		t.Errorf("written, read, commits (-want +got):\n%s", diff)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil || len(problems) > 0 {
		t.Errorf("lint = %v, %v", problems, err)
	}
}

func TestChunkSize(t *testing.T) {
	tests := []struct{ left, want int64 }{
		{1, 1},
		{32 << 10, smallChunk},
		{smallChunk, smallChunk},
		{smallReadMax - 1, smallChunk},
		{smallReadMax, smallReadMax},
		{ReadChunkSize + 1, ReadChunkSize},
		{10 << 20, ReadChunkSize},
	}
	for _, tt := range tests {
		if got := chunkSize(tt.left); got != tt.want {
			t.Errorf("chunkSize(%d) = %d, want %d", tt.left, got, tt.want)
		}
	}
}
