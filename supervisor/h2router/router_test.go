package h2router

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"corral.dev/pluginkit"
	"corral.dev/pluginkit/testkit"
)

func newPair(t *testing.T) (*fakeBackends, *backend) {
	t.Helper()
	b := startBackend(t, &fakeNamespaces{}, &fakeContent{})
	return newFakeBackends(b, b), b
}

func TestUnaryForwardsMetadataAndStatus(t *testing.T) {
	fb, _ := newPair(t)
	var mu sync.Mutex
	var observed []string
	_, conn := startRouter(t, fb, Options{Observe: func(m string, _ time.Time, err error) {
		mu.Lock()
		observed = append(observed, m+" "+status.Code(err).String())
		mu.Unlock()
	}})
	client := namespacesapi.NewNamespacesClient(conn)

	var header, trailer metadata.MD
	ctx := metadata.AppendToOutgoingContext(nsCtx(), pluginkit.CallIDKey, "forged")
	resp, err := client.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "a"},
		grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Namespace.Labels["ns"]; got != "testns" {
		t.Errorf("namespace header at plugin = %q, want testns", got)
	}
	if id := resp.Namespace.Labels["call-id"]; id == "" || id == "forged" {
		t.Errorf("plugin saw call id %q, want one of the router's", id)
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
	mu.Lock()
	defer mu.Unlock()
	want := []string{"/" + nsService + "/Get OK", "/" + nsService + "/Get NotFound"}
	if diff := cmp.Diff(want, observed); diff != "" {
		t.Errorf("observed calls (-want +got):\n%s", diff)
	}
}

// TestWaitingBackends runs calls through Backends that cannot hand out a
// plugin without waiting.
func TestWaitingBackends(t *testing.T) {
	fb, _ := newPair(t)
	r, conn := startRouter(t, waitingBackends{fb}, Options{})
	for range 3 {
		_, err := namespacesapi.NewNamespacesClient(conn).Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := conn.Invoke(nsCtx(), "/no.such.Service/Call",
		&namespacesapi.GetNamespaceRequest{}, &namespacesapi.GetNamespaceResponse{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("unknown service = %v, want Unimplemented", err)
	}
	testkit.WaitFor(t, "streams to close", func() bool { return r.openStreams() == 0 && fb.held.Load() == 0 })
}

func TestUnknownServiceIsUnimplemented(t *testing.T) {
	fb, _ := newPair(t)
	_, conn := startRouter(t, fb, Options{})
	err := conn.Invoke(nsCtx(), "/no.such.Service/Call",
		&namespacesapi.GetNamespaceRequest{}, &namespacesapi.GetNamespaceResponse{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("unknown service = %v, want Unimplemented", err)
	}
}

func TestLocalServices(t *testing.T) {
	fb, _ := newPair(t)
	_, conn := startRouter(t, fb, Options{})
	for range 3 {
		resp, err := versionapi.NewVersionClient(conn).Version(context.Background(), &emptypb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.Version != "test" {
			t.Errorf("Version = %q, want test", resp.Version)
		}
	}
	if n := fb.acquired.Load(); n != 0 {
		t.Errorf("local calls acquired %d plugins, want 0", n)
	}
}

func TestByTarget(t *testing.T) {
	b := startBackend(t, &fakeNamespaces{}, &fakeContent{})
	fb := &fakeBackends{byName: map[string]*backend{"bolt": b}}
	_, conn := startRouter(t, fb, Options{ByTarget: true})
	client := namespacesapi.NewNamespacesClient(conn)

	ctx := metadata.AppendToOutgoingContext(nsCtx(), pluginkit.TargetKey, "bolt")
	resp, err := client.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Namespace.Labels["target"]; got != "" {
		t.Errorf("plugin saw target header %q, want none", got)
	}
	_, err = client.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("Get without target = %v, want InvalidArgument", err)
	}
	// The supervisor's own services need no target.
	if _, err := versionapi.NewVersionClient(conn).Version(context.Background(), &emptypb.Empty{}); err != nil {
		t.Errorf("local Version without target = %v", err)
	}
}

func TestStreamsBothWays(t *testing.T) {
	fb, _ := newPair(t)
	r, conn := startRouter(t, fb, Options{})
	client := contentapi.NewContentClient(conn)

	rs, err := client.Read(nsCtx(), &contentapi.ReadContentRequest{Size: 100})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for ; ; n++ {
		if _, err := rs.Recv(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			break
		}
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
	testkit.WaitFor(t, "streams to close", func() bool { return r.openStreams() == 0 && fb.held.Load() == 0 })
}

// TestLargeMessages moves messages larger than a frame and than the default
// windows both ways: 4 MiB reads in 1 MiB messages, 8 MiB written.
func TestLargeMessages(t *testing.T) {
	fb, _ := newPair(t)
	_, conn := startRouter(t, fb, Options{})
	client := contentapi.NewContentClient(conn)

	const size, chunk = 4 << 20, 1 << 20
	rs, err := client.Read(nsCtx(), &contentapi.ReadContentRequest{Size: size, Offset: chunk})
	if err != nil {
		t.Fatal(err)
	}
	var got int64
	for {
		resp, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range resp.Data {
			if c != byte(resp.Offset/chunk) {
				t.Fatalf("byte of chunk at %d = %d, want %d", resp.Offset, c, resp.Offset/chunk)
			}
		}
		got += int64(len(resp.Data))
	}
	if got != size {
		t.Errorf("Read delivered %d bytes, want %d", got, size)
	}

	ws, err := client.Write(nsCtx())
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range 4 {
			_ = ws.Send(&contentapi.WriteContentRequest{Data: make([]byte, 2<<20)})
		}
		_ = ws.CloseSend()
	}()
	var last int64
	for {
		resp, err := ws.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Offset
	}
	if last != 8<<20 {
		t.Errorf("Write acknowledged %d bytes, want %d", last, 8<<20)
	}
}

func TestMessageSizeLimits(t *testing.T) {
	fb, _ := newPair(t)
	_, conn := startRouter(t, fb, Options{MaxRecvMsgSize: 1000, MaxSendMsgSize: 4000})
	client := contentapi.NewContentClient(conn)

	ws, err := client.Write(nsCtx())
	if err != nil {
		t.Fatal(err)
	}
	_ = ws.Send(&contentapi.WriteContentRequest{Data: make([]byte, 2000)})
	if _, err := ws.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("oversized request = %v, want ResourceExhausted", err)
	}

	rs, err := client.Read(nsCtx(), &contentapi.ReadContentRequest{Size: 8000, Offset: 8000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("oversized response = %v, want ResourceExhausted", err)
	}

	_, err = namespacesapi.NewNamespacesClient(conn).Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"})
	if err != nil {
		t.Errorf("small call after limits = %v", err)
	}
}

// TestCancelMidStream cancels a Read that would never end: the plugin's
// handler sees the cancellation and the router forgets the call.
func TestCancelMidStream(t *testing.T) {
	cs := &fakeContent{started: make(chan struct{}, 1), ended: make(chan error, 1)}
	b := startBackend(t, &fakeNamespaces{}, cs)
	fb := newFakeBackends(b, b)
	r, conn := startRouter(t, fb, Options{})

	ctx, cancel := context.WithCancel(nsCtx())
	rs, err := contentapi.NewContentClient(conn).Read(ctx, &contentapi.ReadContentRequest{Size: -1, Offset: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := rs.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	for {
		_, err := rs.Recv()
		if err == nil {
			continue // messages buffered before the cancellation
		}
		if status.Code(err) != codes.Canceled {
			t.Errorf("Recv after cancel = %v, want Canceled", err)
		}
		break
	}
	select {
	case err := <-cs.ended:
		if status.Code(err) != codes.Canceled {
			t.Errorf("plugin's Read ended with %v, want Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("plugin's Read never saw the cancellation")
	}
	testkit.WaitFor(t, "the router to forget the call", func() bool {
		return r.openStreams() == 0 && fb.held.Load() == 0
	})
}

// TestBackendKilledMidStream stops one plugin while it streams: that stream
// ends with Unavailable, a stream to another plugin goes on.
func TestBackendKilledMidStream(t *testing.T) {
	dying := startBackend(t, &fakeNamespaces{}, &fakeContent{})
	healthy := startBackend(t, &fakeNamespaces{}, &fakeContent{})
	fb := newFakeBackends(healthy, dying)
	r, conn := startRouter(t, fb, Options{})
	client := contentapi.NewContentClient(conn)

	doomed, err := client.Read(nsCtx(), &contentapi.ReadContentRequest{Size: -1, Offset: 100})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := doomed.Recv(); err != nil {
		t.Fatal(err)
	}
	other := namespacesapi.NewNamespacesClient(conn)
	if _, err := other.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"}); err != nil {
		t.Fatal(err)
	}

	dying.stop()
	for {
		_, err := doomed.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.Unavailable {
			t.Errorf("stream on the killed plugin = %v, want Unavailable", err)
		}
		break
	}
	for range 20 {
		if _, err := other.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"}); err != nil {
			t.Fatalf("call to the healthy plugin = %v", err)
		}
	}
	testkit.WaitFor(t, "the router to forget the call", func() bool { return r.openStreams() == 0 })
}

// TestReplaysCallWhosePluginDied kills the backend while it holds a call,
// then brings up a new one: the client's call succeeds, and the new backend
// sees the same call id.
func TestReplaysCallWhosePluginDied(t *testing.T) {
	dying := &fakeNamespaces{hang: make(chan struct{})}
	old := startBackend(t, dying, &fakeContent{})
	fb := newFakeBackends(old, old)
	_, conn := startRouter(t, fb, Options{})
	client := namespacesapi.NewNamespacesClient(conn)

	next := &fakeNamespaces{}
	nextBackend := startBackend(t, next, &fakeContent{})
	go func() {
		for dying.calls.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		fb.swap(nsService, nextBackend)
		old.stop()
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
	if fb.held.Load() != 0 {
		t.Errorf("%d leases still held", fb.held.Load())
	}
}

// TestDoesNotReplayAnsweredUnavailable: an Unavailable the plugin's handler
// returned is the plugin's answer (content uses it for locked refs).
func TestDoesNotReplayAnsweredUnavailable(t *testing.T) {
	ns := &fakeNamespaces{unavailable: true}
	b := startBackend(t, ns, &fakeContent{})
	_, conn := startRouter(t, newFakeBackends(b, b), Options{})
	_, err := namespacesapi.NewNamespacesClient(conn).Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Get = %v, want the plugin's Unavailable", err)
	}
	if ns.calls.Load() != 1 {
		t.Errorf("plugin saw %d calls, want 1 (no replay)", ns.calls.Load())
	}
}

// TestSlowReaderIsBounded opens an endless Read and never reads it: the
// plugin is held back by flow control, and the router holds no more than
// a stream window of it.
func TestSlowReaderIsBounded(t *testing.T) {
	cs := &fakeContent{}
	b := startBackend(t, &fakeNamespaces{}, cs)
	r, conn := startRouter(t, newFakeBackends(b, b), Options{})

	ctx, cancel := context.WithCancel(nsCtx())
	defer cancel()
	if _, err := contentapi.NewContentClient(conn).Read(ctx,
		&contentapi.ReadContentRequest{Size: -1, Offset: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	var before int64
	testkit.WaitFor(t, "the plugin to stall", func() bool {
		time.Sleep(200 * time.Millisecond)
		now := cs.sent.Load()
		stalled := now == before && now > 0
		before = now
		return stalled
	})
	// The client's grpc-go may take up to 16 MiB (its window) into its own
	// buffers; the router and the two sockets add a few windows.
	if before > 40<<20 {
		t.Errorf("plugin sent %d bytes to a client that reads nothing", before)
	}
	if held := r.heldBytes(); held > backendStreamWindow+64<<10 {
		t.Errorf("router holds %d bytes of the call, want at most a window", held)
	}
	// Other calls still pass.
	if _, err := namespacesapi.NewNamespacesClient(conn).Get(nsCtx(),
		&namespacesapi.GetNamespaceRequest{Name: "a"}); err != nil {
		t.Errorf("call beside a stalled stream = %v", err)
	}
}

// TestManyStalledStreams stalls more streams than the plugin connection's
// window covers: calls beside them still pass.
func TestManyStalledStreams(t *testing.T) {
	cs := &fakeContent{}
	b := startBackend(t, &fakeNamespaces{}, cs)
	_, conn, sock := startRouterSock(t, newFakeBackends(b, b), Options{})
	// A fixed window keeps grpc-go from taking megabytes per stream.
	slow := dialUnix(t, sock, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<20))
	defer slow.Close()

	ctx, cancel := context.WithCancel(nsCtx())
	defer cancel()
	client := contentapi.NewContentClient(slow)
	for range backendConnWindow/backendStreamWindow + 4 {
		if _, err := client.Read(ctx, &contentapi.ReadContentRequest{Size: -1, Offset: 64 << 10}); err != nil {
			t.Fatal(err)
		}
	}
	var before int64
	testkit.WaitFor(t, "the plugin to stall", func() bool {
		time.Sleep(200 * time.Millisecond)
		now := cs.sent.Load()
		stalled := now == before && now > 0
		before = now
		return stalled
	})
	getCtx, getCancel := context.WithTimeout(nsCtx(), 5*time.Second)
	defer getCancel()
	if _, err := namespacesapi.NewNamespacesClient(conn).Get(getCtx,
		&namespacesapi.GetNamespaceRequest{Name: "a"}); err != nil {
		t.Errorf("call beside stalled streams = %v", err)
	}
}

// heldBytes sums the bytes queued in the router's calls.
func (r *Router) heldBytes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for c := range r.conns {
		for _, s := range c.snapshot() {
			s.mu.Lock()
			n += len(s.up) - s.upOff + len(s.down) - s.downOff
			s.mu.Unlock()
		}
	}
	return n
}

func TestGracefulStop(t *testing.T) {
	fb, _ := newPair(t)
	r, conn := startRouter(t, fb, Options{})
	client := namespacesapi.NewNamespacesClient(conn)
	if _, err := client.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r.GracefulStop(ctx)
	if _, err := client.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"}); status.Code(err) != codes.Unavailable {
		t.Errorf("call after stop = %v, want Unavailable", err)
	}
}

// TestBackendGoAway stops a plugin gracefully while it holds a call: the
// call finishes on the old connection, and new calls reach the successor.
func TestBackendGoAway(t *testing.T) {
	hanging := &fakeNamespaces{hang: make(chan struct{})}
	old := startBackend(t, hanging, &fakeContent{})
	fb := newFakeBackends(old, old)
	_, conn := startRouter(t, fb, Options{})
	client := namespacesapi.NewNamespacesClient(conn)

	done := make(chan error, 1)
	go func() {
		_, err := client.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"})
		done <- err
	}()
	testkit.WaitFor(t, "the call to reach the plugin", func() bool { return hanging.calls.Load() == 1 })

	next := &fakeNamespaces{}
	fb.swap(nsService, startBackend(t, next, &fakeContent{}))
	stopped := make(chan struct{})
	go func() {
		old.srv.GracefulStop()
		close(stopped)
	}()
	time.Sleep(50 * time.Millisecond) // let the GOAWAY reach the router
	if _, err := client.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "b"}); err != nil {
		t.Fatalf("call during the old plugin's drain = %v", err)
	}
	if next.calls.Load() != 1 {
		t.Errorf("successor saw %d calls, want 1", next.calls.Load())
	}
	close(hanging.hang)
	if err := <-done; err != nil {
		t.Errorf("call held across the drain = %v", err)
	}
	<-stopped
}

// countingWrites serves Write as fakeContent does, holding each stream
// open a while and recording how many are open at once.
type countingWrites struct {
	contentapi.UnimplementedContentServer
	open, most atomic.Int32
}

func (c *countingWrites) Write(s contentapi.Content_WriteServer) error {
	n := c.open.Add(1)
	defer c.open.Add(-1)
	for m := c.most.Load(); n > m && !c.most.CompareAndSwap(m, n); m = c.most.Load() {
	}
	time.Sleep(20 * time.Millisecond)
	return (&fakeContent{}).Write(s)
}

// TestBackendStreamLimit: calls beyond a plugin's
// SETTINGS_MAX_CONCURRENT_STREAMS wait for a stream to close instead of
// being refused; client-streaming calls, which cannot be replayed, all
// succeed.
func TestBackendStreamLimit(t *testing.T) {
	const limit, calls = 2, 12
	cw := &countingWrites{}
	ns := startBackend(t, &fakeNamespaces{}, &fakeContent{})
	content := startBackendWith(t, &fakeNamespaces{}, cw, grpc.MaxConcurrentStreams(limit))
	fb := newFakeBackends(ns, content)
	r, conn := startRouter(t, fb, Options{})
	client := contentapi.NewContentClient(conn)

	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for range calls {
		wg.Go(func() {
			ws, err := client.Write(nsCtx())
			if err == nil {
				err = ws.Send(&contentapi.WriteContentRequest{Data: make([]byte, 100)})
			}
			if err == nil {
				_, err = ws.Recv()
			}
			if err == nil {
				err = ws.CloseSend()
			}
			if err == nil {
				if _, err = ws.Recv(); errors.Is(err, io.EOF) {
					err = nil
				}
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Write through a plugin taking %d streams: %v", limit, err)
		}
	}
	if m := cw.most.Load(); m > limit {
		t.Errorf("the plugin had %d streams open at once, more than its limit %d", m, limit)
	}
	testkit.WaitFor(t, "streams to close", func() bool { return r.openStreams() == 0 && fb.held.Load() == 0 })
}
