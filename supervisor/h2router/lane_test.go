package h2router

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	_ "google.golang.org/grpc/encoding/gzip" // registers the compressor TestLaneLeavesCompressedCalls uses
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"corral.dev/pluginkit/lane"
	"corral.dev/pluginkit/testkit"
)

// TestOverLanes runs the tests of unary behaviour again with backends that
// serve lanes, as plugin processes do, and the lane's own tests.
func TestOverLanes(t *testing.T) {
	withLanes = true
	t.Cleanup(func() { withLanes = false })
	for _, tc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"UnaryForwardsMetadataAndStatus", TestUnaryForwardsMetadataAndStatus},
		{"WaitingBackends", TestWaitingBackends},
		{"ByTarget", TestByTarget},
		{"LocalServices", TestLocalServices},
		{"StreamsBothWays", TestStreamsBothWays},
		{"LargeMessages", TestLargeMessages},
		{"CancelMidStream", TestCancelMidStream},
		{"SlowReaderIsBounded", TestSlowReaderIsBounded},
		{"ManyStalledStreams", TestManyStalledStreams},
		{"MessageSizeLimits", TestMessageSizeLimits},
		{"BackendKilledMidStream", TestBackendKilledMidStream},
		{"ReplaysCallWhosePluginDied", TestReplaysCallWhosePluginDied},
		{"DoesNotReplayAnsweredUnavailable", TestDoesNotReplayAnsweredUnavailable},
		{"GracefulStop", TestGracefulStop},
		{"BackendStreamLimit", TestBackendStreamLimit},
		{"UnaryTakesLane", testUnaryTakesLane},
		{"LaneLargeMessages", testLaneLargeMessages},
		{"LaneCancel", testLaneCancel},
		{"LaneLeavesCompressedCalls", testLaneLeavesCompressedCalls},
		{"LanePluginIgnoresCredit", testLanePluginIgnoresCredit},
		{"LaneRedirect", testLaneRedirect},
		{"LaneBadRequestsFailAlone", testLaneBadRequestsFailAlone},
		{"LaneRedirectFails", testLaneRedirectFails},
	} {
		t.Run(tc.name, tc.fn)
	}
}

// testUnaryTakesLane checks that a unary call went on the lane, with its
// binary metadata, deadline and status details intact.
func testUnaryTakesLane(t *testing.T) {
	fb, b := newPair(t)
	r, conn := startRouter(t, fb, Options{})
	client := namespacesapi.NewNamespacesClient(conn)

	ctx, cancel := context.WithTimeout(nsCtx(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "x-bin", "\x00\xffbinary")
	resp, err := client.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	labels := resp.Namespace.Labels
	if labels["bin"] != hex.EncodeToString([]byte("\x00\xffbinary")) || labels["timeout"] != "true" {
		t.Errorf("plugin saw binary metadata %q and deadline %s", labels["bin"], labels["timeout"])
	}
	if _, ok := r.lanes.ready(lane.LaneOf(b.addr)); !ok {
		t.Error("no lane to the plugin after a unary call")
	}
	if _, ok := r.pool.ready(addrKey(b.addr)); ok {
		t.Error("a unary call opened an HTTP/2 connection to a plugin with a lane")
	}

	_, err = client.Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "details"})
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || st.Message() != "with details" || len(st.Details()) != 1 {
		t.Errorf("Get(details) = %v with details %v, want FailedPrecondition with one detail", err, st.Details())
	}
}

// testLaneLargeMessages sends a request and an answer larger than the
// stream windows.
func testLaneLargeMessages(t *testing.T) {
	fb, _ := newPair(t)
	_, conn := startRouter(t, fb, Options{})
	name := strings.Repeat("n", 3<<20)
	resp, err := namespacesapi.NewNamespacesClient(conn).Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: name},
		grpc.MaxCallRecvMsgSize(8<<20), grpc.MaxCallSendMsgSize(8<<20))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Namespace.Name != name {
		t.Errorf("answer carries a name of %d bytes, want %d", len(resp.Namespace.Name), len(name))
	}
}

// testLaneCancel cancels a call the plugin holds: the plugin's handler sees
// it, and the router forgets the call and releases the plugin.
func testLaneCancel(t *testing.T) {
	ns := &fakeNamespaces{hang: make(chan struct{}), cancelled: make(chan error, 1)}
	b := startBackend(t, ns, &fakeContent{})
	fb := newFakeBackends(b, b)
	r, conn := startRouter(t, fb, Options{})
	ctx, cancel := context.WithCancel(nsCtx())
	errc := make(chan error, 1)
	go func() {
		_, err := namespacesapi.NewNamespacesClient(conn).Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "a"})
		errc <- err
	}()
	testkit.WaitFor(t, "the plugin to take the call", func() bool { return ns.calls.Load() == 1 })
	cancel()
	if err := <-errc; status.Code(err) != codes.Canceled {
		t.Errorf("cancelled Get = %v, want Canceled", err)
	}
	select {
	case <-ns.cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the plugin's handler never saw the cancellation")
	}
	testkit.WaitFor(t, "the router to forget the call", func() bool { return r.openStreams() == 0 && fb.held.Load() == 0 })
}

// testLaneLeavesCompressedCalls: a client that compresses its messages is
// served over HTTP/2, where the plugin's gRPC server decompresses.
func testLaneLeavesCompressedCalls(t *testing.T) {
	fb, b := newPair(t)
	r, conn := startRouter(t, fb, Options{})
	resp, err := namespacesapi.NewNamespacesClient(conn).Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "z"},
		grpc.UseCompressor("gzip"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Namespace.Name != "z" {
		t.Errorf("answer for %q, want z", resp.Namespace.Name)
	}
	if _, ok := r.pool.ready(addrKey(b.addr)); !ok {
		t.Error("a compressed call did not go over HTTP/2")
	}
}

// testLaneRedirect: a plugin hands a Read over to another plugin by its id;
// the client gets that plugin's answer to the call the redirect made, and
// both plugins' leases are released.
func testLaneRedirect(t *testing.T) {
	front := startBackend(t, &fakeNamespaces{}, &fakeContent{redirectTo: "raw"})
	rawContent := &fakeContent{}
	raw := startBackend(t, &fakeNamespaces{}, rawContent)
	fb := newFakeBackends(front, front)
	fb.swap("raw", raw)
	r, conn := startRouter(t, fb, Options{})

	const size = 3<<20 + 5
	rs, err := contentapi.NewContentClient(conn).Read(nsCtx(), &contentapi.ReadContentRequest{Size: size, Offset: 512 << 10})
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for {
		resp, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Recv after %d bytes: %v", n, err)
		}
		// The raw plugin sends 1 MiB pieces, the offset it was asked for
		// doubled by the front plugin.
		if resp.GetOffset() != n || len(resp.GetData()) > 1<<20 || resp.GetData()[0] != byte(n/(1<<20)) {
			t.Fatalf("piece at %d of %d bytes: not the raw plugin's answer to the redirected call",
				resp.GetOffset(), len(resp.GetData()))
		}
		n += int64(len(resp.GetData()))
	}
	if n != size || rawContent.sent.Load() != size {
		t.Errorf("client got %d bytes, the raw plugin sent %d; want %d", n, rawContent.sent.Load(), size)
	}
	testkit.WaitFor(t, "the router to forget the call", func() bool { return r.openStreams() == 0 && fb.held.Load() == 0 })
}

// testLaneBadRequestsFailAlone sends requests a lane frame cannot carry (no
// message, two, a compressed one without an encoding, a stream of messages
// that does not end): each call fails with Internal on its own, and a Read
// on the same lane goes on.
func testLaneBadRequestsFailAlone(t *testing.T) {
	fb, _ := newPair(t)
	r, conn := startRouter(t, fb, Options{})
	ctx, cancel := context.WithCancel(nsCtx())
	defer cancel()
	rs, err := contentapi.NewContentClient(conn).Read(ctx, &contentapi.ReadContentRequest{Size: -1, Offset: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Recv(); err != nil {
		t.Fatal(err)
	}

	get := "/" + nsService + "/Get"
	req := &namespacesapi.GetNamespaceRequest{Name: "a"}
	settings := func(fr *http2.Framer) { _ = fr.WriteSettings() }
	compressed := func(fr *http2.Framer) { _ = fr.WriteData(1, true, []byte{1, 0, 0, 0, 0}) }
	endless := newFrameWriter(true).do(settings).headers(1, get, false)
	for range 64 {
		endless.message(1, req, false)
	}
	for name, w := range map[string]*frameWriter{
		"no message":   newFrameWriter(true).do(settings).headers(1, get, true),
		"two messages": newFrameWriter(true).do(settings).headers(1, get, false).message(1, req, false).message(1, req, true),
		"compressed":   newFrameWriter(true).do(settings).headers(1, get, false).do(compressed),
		"endless":      endless,
	} {
		if got := rawExchange(t, r, w.bytes()); got.status != "13" {
			t.Errorf("%s: outcome %+v, want status 13 (Internal)", name, got)
		}
	}
	for range 3 {
		if _, err := rs.Recv(); err != nil {
			t.Fatalf("Read beside the bad requests: %v", err)
		}
	}
}

// testLaneRedirectFails hands calls over to where they cannot go: to a
// plugin the supervisor does not know (Internal, not the NotFound a client
// would take for its own) and to one without a lane (Unavailable).
func testLaneRedirectFails(t *testing.T) {
	withLanes = false
	laneless := startBackend(t, &fakeNamespaces{}, &fakeContent{})
	withLanes = true
	for _, tc := range []struct {
		target string
		code   codes.Code
		says   string
	}{
		{"nowhere", codes.Internal, "nowhere"},
		{"laneless", codes.Unavailable, "no lane"},
	} {
		front := startBackend(t, &fakeNamespaces{}, &fakeContent{redirectTo: tc.target})
		fb := newFakeBackends(front, front)
		fb.swap("laneless", laneless)
		r, conn := startRouter(t, fb, Options{})
		rs, err := contentapi.NewContentClient(conn).Read(nsCtx(), &contentapi.ReadContentRequest{Size: 10, Offset: 1})
		if err == nil {
			_, err = rs.Recv()
		}
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("Read handed over to %s = %v, want %v saying %q", tc.target, err, tc.code, tc.says)
		}
		testkit.WaitFor(t, "the router to forget the call", func() bool { return r.openStreams() == 0 && fb.held.Load() == 0 })
	}
}

// testLanePluginIgnoresCredit serves a lane by hand that streams past its
// credit: the call fails with Internal and the router keeps no more than the
// credit of it.
func testLanePluginIgnoresCredit(t *testing.T) {
	b := startBackend(t, &fakeNamespaces{}, &fakeContent{})
	path := filepath.Join(shortTemp(t), "rogue")
	ll, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ll.Close()
	go func() {
		nc, err := ll.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		typ, id, _, err := lane.NewReader(nc).Next()
		if err != nil || typ != lane.TypeCall {
			return
		}
		msg := lane.AppendMsg(nil, make([]byte, 64<<10))
		var out []byte
		for range 2 * lane.InitialCredit / len(msg) {
			out = lane.AppendMsgFrame(out, id, msg)
		}
		_, _ = nc.Write(out)
		_, _ = io.Copy(io.Discard, nc)
	}()
	rogue := &backend{srv: b.srv, addr: &lane.Addr{Addr: b.addr.(*lane.Addr).Addr, Lane: path}}
	r, _, sock := startRouterSock(t, newFakeBackends(rogue, rogue), Options{})
	// Small windows keep the router from passing bytes on, so it grants
	// no credit.
	slow := dialUnix(t, sock, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	defer slow.Close()
	rs, err := contentapi.NewContentClient(slow).Read(nsCtx(), &contentapi.ReadContentRequest{Size: -1, Offset: 1})
	if err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, "the router to end the call", func() bool { return r.openStreams() == 0 })
	for {
		if _, err = rs.Recv(); err != nil {
			break
		}
	}
	if err == io.EOF || status.Code(err) == codes.OK {
		t.Errorf("stream past credit ended with %v, want an error", err)
	}
}
