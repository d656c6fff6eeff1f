package lane_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"corral.dev/pluginkit/lane"
)

const getMethod = "/containerd.services.namespaces.v1.Namespaces/Get"

// fakeNamespaces serves Get with a function of the test's choosing; the
// other methods are unimplemented.
type fakeNamespaces struct {
	api.UnimplementedNamespacesServer
	get func(ctx context.Context, name string) (*api.GetNamespaceResponse, error)
}

func (f *fakeNamespaces) Get(
	ctx context.Context,
	req *api.GetNamespaceRequest,
) (*api.GetNamespaceResponse, error) {
	return f.get(ctx, req.GetName())
}

// echo answers with the namespace asked for.
func echo(_ context.Context, name string) (*api.GetNamespaceResponse, error) {
	return named(name, nil), nil
}

func named(name string, labels map[string]string) *api.GetNamespaceResponse {
	return &api.GetNamespaceResponse{Namespace: &api.Namespace{Name: name, Labels: labels}}
}

// startServer serves get on a unix socket in a fresh short directory and
// returns the server and the socket's path. Cleanup closes the server and
// checks that Serve returned nil.
func startServer(
	t *testing.T,
	opts lane.ServerOptions,
	get func(context.Context, string) (*api.GetNamespaceResponse, error),
) (*lane.Server, string) {
	t.Helper()
	s := lane.NewServer(opts)
	api.RegisterNamespacesServer(s, &fakeNamespaces{get: get})
	return s, serve(t, s)
}

// serve serves s on a unix socket in a fresh short directory and returns
// the socket's path. Cleanup closes s and checks that Serve returned nil.
func serve(t *testing.T, s *lane.Server) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ln")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; err != nil {
			t.Errorf("Serve = %v, want nil after Close", err)
		}
	})
	return sock
}

// client speaks the lane's frames on one connection, as the supervisor does.
type client struct {
	t  *testing.T
	nc net.Conn
	r  *lane.Reader
	mu sync.Mutex // serialises writes
}

func dial(t *testing.T, sock string) *client {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, r: lane.NewReader(nc)}
}

func (c *client) write(frame []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.nc.Write(frame); err != nil {
		c.t.Errorf("write frame: %v", err)
	}
}

func (c *client) call(
	id uint32,
	method string,
	timeout time.Duration,
	md []lane.Field,
	req proto.Message,
) {
	payload, err := proto.Marshal(req)
	if err != nil {
		c.t.Errorf("marshal request: %v", err)
		return
	}
	c.write(lane.AppendCall(nil, id, &lane.Call{
		Method:  method,
		Timeout: timeout,
		MD:      md,
		Msg:     lane.AppendMsg(nil, payload),
	}))
}

// next reads the next frame.
func (c *client) next() (typ byte, id uint32, body []byte) {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, id, body, err := c.r.Next()
	if err != nil {
		c.t.Fatalf("read frame: %v", err)
	}
	return typ, id, body
}

// reply reads the next frame, which must be a reply.
func (c *client) reply() (uint32, *lane.Reply) {
	c.t.Helper()
	typ, id, body := c.next()
	if typ != lane.TypeReply {
		c.t.Fatalf("frame type %d, want a reply", typ)
	}
	r := new(lane.Reply)
	if err := lane.ParseReply(body, r); err != nil {
		c.t.Fatalf("parse reply: %v", err)
	}
	return id, r
}

// get makes one Get call with id 1 and returns its reply.
func (c *client) get(name string, md ...lane.Field) *lane.Reply {
	c.t.Helper()
	c.call(1, getMethod, 0, md, &api.GetNamespaceRequest{Name: name})
	id, r := c.reply()
	if id != 1 {
		c.t.Fatalf("reply id %d, want 1", id)
	}
	return r
}

// expectClosed checks that the server ends the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, _, err := c.r.Next(); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		c.t.Fatalf("read after the server should have closed = %v, want EOF", err)
	}
}

func decode(t *testing.T, r *lane.Reply) *api.GetNamespaceResponse {
	t.Helper()
	if r.Code != 0 {
		t.Fatalf("reply = %v %q, want OK", codes.Code(r.Code), r.Message)
	}
	payload, err := lane.MsgPayload(r.Msg)
	if err != nil {
		t.Fatal(err)
	}
	resp := new(api.GetNamespaceResponse)
	if err := proto.Unmarshal(payload, resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func checkStatus(t *testing.T, r *lane.Reply, code codes.Code, msg string) {
	t.Helper()
	if codes.Code(r.Code) != code || !strings.Contains(r.Message, msg) || r.Msg != nil {
		t.Errorf("reply = %v %q (message %d bytes), want %v containing %q and no message",
			codes.Code(r.Code), r.Message, len(r.Msg), code, msg)
	}
}

func TestRoundTripWithMetadata(t *testing.T) {
	get := func(ctx context.Context, name string) (*api.GetNamespaceResponse, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		method, _ := grpc.Method(ctx)
		return named(name, map[string]string{
			"k":       strings.Join(md.Get("k"), ","),
			"x-bin":   fmt.Sprintf("%x", md.Get("x-bin")),
			"method":  method,
			"entries": fmt.Sprint(md.Len()),
		}), nil
	}
	_, sock := startServer(t, lane.ServerOptions{}, get)
	c := dial(t, sock)
	r := c.get("default",
		lane.Field{Name: "k", Value: "a"},
		lane.Field{Name: "x-bin", Value: "\x00\xff"},
		lane.Field{Name: "k", Value: "b"},
	)
	want := named("default", map[string]string{
		"k": "a,b", "x-bin": "[00ff]", "method": getMethod, "entries": "2",
	})
	if diff := cmp.Diff(want, decode(t, r), protocmp.Transform()); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
	if r.Header != nil || r.Trailer != nil || r.Details != nil {
		t.Errorf("reply header %v trailer %v details %x, want none", r.Header, r.Trailer, r.Details)
	}
}

func TestHeaderAndTrailer(t *testing.T) {
	after := make(chan context.Context, 1)
	get := func(ctx context.Context, name string) (*api.GetNamespaceResponse, error) {
		var errs []string
		note := func(err error) {
			if err != nil {
				errs = append(errs, err.Error())
			}
		}
		note(grpc.SetHeader(ctx, metadata.Pairs("h", "1")))
		note(grpc.SendHeader(ctx, metadata.Pairs("h", "2")))
		if grpc.SetHeader(ctx, metadata.Pairs("h", "3")) == nil {
			errs = append(errs, "SetHeader after SendHeader succeeded")
		}
		if grpc.SendHeader(ctx, nil) == nil {
			errs = append(errs, "second SendHeader succeeded")
		}
		note(grpc.SetTrailer(ctx, metadata.Pairs("t", "1", "t-bin", "\x01\x02")))
		note(grpc.SetTrailer(ctx, metadata.Pairs("t", "2")))
		after <- ctx
		if errs != nil {
			return nil, status.Error(codes.Internal, strings.Join(errs, "; "))
		}
		return named(name, nil), nil
	}
	_, sock := startServer(t, lane.ServerOptions{}, get)
	c := dial(t, sock)
	r := c.get("default")
	decode(t, r)
	sortFields := cmpopts.SortSlices(func(a, b lane.Field) bool {
		return a.Name < b.Name || a.Name == b.Name && a.Value < b.Value
	})
	wantHeader := []lane.Field{{Name: "h", Value: "1"}, {Name: "h", Value: "2"}}
	if diff := cmp.Diff(wantHeader, r.Header, sortFields); diff != "" {
		t.Errorf("header (-want +got):\n%s", diff)
	}
	wantTrailer := []lane.Field{
		{Name: "t", Value: "1"},
		{Name: "t", Value: "2"},
		{Name: "t-bin", Value: "\x01\x02"},
	}
	if diff := cmp.Diff(wantTrailer, r.Trailer, sortFields); diff != "" {
		t.Errorf("trailer (-want +got):\n%s", diff)
	}

	// Once the reply is made, the handler's context takes no more metadata.
	ctx := <-after
	if err := grpc.SetTrailer(ctx, metadata.Pairs("late", "1")); err == nil {
		t.Error("SetTrailer after the reply succeeded")
	}
	if err := grpc.SendHeader(ctx, metadata.Pairs("late", "1")); err == nil {
		t.Error("SendHeader after the reply succeeded")
	}
}

func TestErrors(t *testing.T) {
	get := func(ctx context.Context, name string) (*api.GetNamespaceResponse, error) {
		switch name {
		case "details":
			st, err := status.New(codes.FailedPrecondition, "namespace busy").
				WithDetails(&api.Namespace{Name: "busy", Labels: map[string]string{"a": "b"}})
			if err != nil {
				return nil, err
			}
			return nil, st.Err()
		case "plain":
			return nil, errors.New("disk on fire")
		case "wrapped":
			return nil, fmt.Errorf("get %s: %w", name, status.Error(codes.NotFound, "not found"))
		}
		return nil, status.Error(codes.NotFound, "namespace "+name+" not found")
	}
	_, sock := startServer(t, lane.ServerOptions{}, get)
	c := dial(t, sock)

	r := c.get("details")
	checkStatus(t, r, codes.FailedPrecondition, "namespace busy")
	var sp spb.Status
	if err := proto.Unmarshal(r.Details, &sp); err != nil {
		t.Fatalf("unmarshal details: %v", err)
	}
	st := status.FromProto(&sp)
	if st.Code() != codes.FailedPrecondition || st.Message() != "namespace busy" || len(st.Details()) != 1 {
		t.Fatalf("details status = %v %q %v", st.Code(), st.Message(), st.Details())
	}
	want := &api.Namespace{Name: "busy", Labels: map[string]string{"a": "b"}}
	if diff := cmp.Diff(want, st.Details()[0], protocmp.Transform()); diff != "" {
		t.Errorf("detail (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name, msg string
		code      codes.Code
	}{
		{"missing", "namespace missing not found", codes.NotFound},
		{"plain", "disk on fire", codes.Unknown},
		{"wrapped", "get wrapped: rpc error: code = NotFound desc = not found", codes.NotFound},
	} {
		r := c.get(tc.name)
		checkStatus(t, r, tc.code, tc.msg)
		if r.Details != nil {
			t.Errorf("%s: details %x, want none", tc.name, r.Details)
		}
	}
}

func TestUnimplemented(t *testing.T) {
	_, sock := startServer(t, lane.ServerOptions{}, nil)
	c := dial(t, sock)
	for _, tc := range []struct{ method, msg string }{
		{"/nope.v1.Nope/Get", "unknown service nope.v1.Nope"},
		{"/containerd.services.namespaces.v1.Namespaces/Nope",
			"unknown method Nope for service containerd.services.namespaces.v1.Namespaces"},
		{"nope", `malformed method name: "nope"`},
		{"/containerd.services.namespaces.v1.Namespaces/List", "method List not implemented"},
	} {
		c.call(3, tc.method, 0, nil, &api.ListNamespacesRequest{})
		_, r := c.reply()
		if codes.Code(r.Code) != codes.Unimplemented || r.Message != tc.msg {
			t.Errorf("%s: reply = %v %q, want Unimplemented %q", tc.method, codes.Code(r.Code), r.Message, tc.msg)
		}
	}
}

func TestDeadline(t *testing.T) {
	get := func(ctx context.Context, name string) (*api.GetNamespaceResponse, error) {
		dl, ok := ctx.Deadline()
		if !ok {
			return named(name, nil), nil
		}
		return named(name, map[string]string{"left": time.Until(dl).String()}), nil
	}
	_, sock := startServer(t, lane.ServerOptions{}, get)
	c := dial(t, sock)

	c.call(1, getMethod, time.Minute, nil, &api.GetNamespaceRequest{Name: "x"})
	_, r := c.reply()
	left, err := time.ParseDuration(decode(t, r).GetNamespace().GetLabels()["left"])
	if err != nil || left <= 0 || left > time.Minute {
		t.Errorf("handler's time left = %v (%v), want within (0, 1m]", left, err)
	}

	if labels := decode(t, c.get("x")).GetNamespace().GetLabels(); labels != nil {
		t.Errorf("call without timeout saw a deadline: %v", labels)
	}
}

func TestCancel(t *testing.T) {
	started := make(chan struct{})
	get := func(ctx context.Context, name string) (*api.GetNamespaceResponse, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	_, sock := startServer(t, lane.ServerOptions{}, get)
	c := dial(t, sock)
	c.call(7, getMethod, 0, nil, &api.GetNamespaceRequest{Name: "x"})
	<-started
	c.write(lane.AppendCancel(nil, 8)) // not in flight: ignored
	c.write(lane.AppendCancel(nil, 7))
	id, r := c.reply()
	if id != 7 {
		t.Fatalf("reply id %d, want 7", id)
	}
	checkStatus(t, r, codes.Canceled, "context canceled")
}

func TestConcurrentCalls(t *testing.T) {
	const n = 200
	get := func(ctx context.Context, name string) (*api.GetNamespaceResponse, error) {
		var i int
		fmt.Sscan(name, &i)
		time.Sleep(time.Duration(i%7) * time.Millisecond) // finish out of order
		return named(name, nil), nil
	}
	_, sock := startServer(t, lane.ServerOptions{}, get)
	c := dial(t, sock)

	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < n; i += 4 {
				c.call(uint32(1000+i), getMethod, 0, nil, &api.GetNamespaceRequest{Name: fmt.Sprint(i)})
			}
		})
	}
	seen := make(map[uint32]bool)
	for range n {
		id, r := c.reply()
		if want := fmt.Sprint(id - 1000); decode(t, r).GetNamespace().GetName() != want {
			t.Errorf("reply %d names %q, want %q", id, decode(t, r).GetNamespace().GetName(), want)
		}
		if seen[id] {
			t.Errorf("reply %d twice", id)
		}
		seen[id] = true
	}
	wg.Wait()
}

func TestInterceptorAndDispatch(t *testing.T) {
	var seen []string
	s := lane.NewServer(lane.ServerOptions{
		Interceptor: func(
			ctx context.Context,
			req any,
			info *grpc.UnaryServerInfo,
			h grpc.UnaryHandler,
		) (any, error) {
			seen = append(seen, info.FullMethod)
			grpc.SetTrailer(ctx, metadata.Pairs("handled", "1"))
			return h(ctx, req)
		},
	})
	api.RegisterNamespacesServer(s, &fakeNamespaces{get: echo})
	payload, _ := proto.Marshal(&api.GetNamespaceRequest{Name: "x"})
	ctx := context.Background()
	r := s.Dispatch(ctx, &lane.Call{Method: getMethod, Msg: lane.AppendMsg(nil, payload)})
	if decode(t, r).GetNamespace().GetName() != "x" {
		t.Errorf("Dispatch answered %v", r)
	}
	if want := []lane.Field{{Name: "handled", Value: "1"}}; !cmp.Equal(r.Trailer, want) {
		t.Errorf("trailer %v, want %v", r.Trailer, want)
	}
	if want := []string{getMethod}; !cmp.Equal(seen, want) {
		t.Errorf("interceptor saw %v, want %v", seen, want)
	}

	// Messages a connection would refuse can still reach Dispatch.
	for _, msg := range [][]byte{{1, 0, 0, 0, 0}, {0, 0, 0, 0, 9}, nil} {
		r := s.Dispatch(ctx, &lane.Call{Method: getMethod, Msg: msg})
		checkStatus(t, r, codes.Internal, "malformed")
	}
	r = s.Dispatch(ctx, &lane.Call{Method: getMethod, Msg: lane.AppendMsg(nil, []byte{0xff})})
	checkStatus(t, r, codes.Internal, "grpc: failed to unmarshal the received message")
	if len(seen) != 1 {
		t.Errorf("interceptor ran for %d calls, want 1: it runs after decoding", len(seen))
	}
}

func TestSizeLimits(t *testing.T) {
	get := func(ctx context.Context, name string) (*api.GetNamespaceResponse, error) {
		return named(name, map[string]string{"pad": strings.Repeat("p", 250)}), nil
	}
	_, sock := startServer(t, lane.ServerOptions{MaxRecvMsgSize: 100, MaxSendMsgSize: 200}, get)
	c := dial(t, sock)
	checkStatus(t, c.get(strings.Repeat("n", 100)), codes.ResourceExhausted,
		"grpc: received message larger than max (102 vs. 100)")
	r := c.get("small")
	checkStatus(t, r, codes.ResourceExhausted, "trying to send message larger than max (")
	checkStatus(t, r, codes.ResourceExhausted, " vs. 200)")
}

// TestReplyOverFrame: with no send limit, a reply too large for a frame
// becomes an error instead of a frame the peer would refuse.
func TestReplyOverFrame(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates about 50 MiB")
	}
	get := func(ctx context.Context, name string) (*api.GetNamespaceResponse, error) {
		if name == "big" {
			return named(name, map[string]string{"pad": strings.Repeat("p", lane.MaxFrame)}), nil
		}
		return named(name, nil), nil
	}
	_, sock := startServer(t, lane.ServerOptions{}, get)
	c := dial(t, sock)
	checkStatus(t, c.get("big"), codes.ResourceExhausted, "larger than a frame")
	decode(t, c.get("x")) // the connection still serves
}

func TestBadFramesEndConnection(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	get := func(ctx context.Context, name string) (*api.GetNamespaceResponse, error) {
		if name == "block" {
			<-block
		}
		return named(name, nil), nil
	}
	_, sock := startServer(t, lane.ServerOptions{}, get)
	body := func(typ byte, b ...byte) []byte {
		frame := []byte{0, 0, 0, byte(5 + len(b)), typ, 0, 0, 0, 1}
		return append(frame, b...)
	}
	for _, tc := range []struct {
		name string
		send func(c *client)
	}{
		{"unknown type", func(c *client) { c.write(body(9)) }},
		{"cancel with a body", func(c *client) { c.write(body(lane.TypeCancel, 1)) }},
		{"credit with a short body", func(c *client) { c.write(body(lane.TypeCredit, 0, 0, 1)) }},
		{"message from the supervisor", func(c *client) {
			c.write(lane.AppendMsgFrame(nil, 1, lane.AppendMsg(nil, nil)))
		}},
		{"frame length over MaxFrame", func(c *client) { c.write([]byte{0xff, 0, 0, 0, 1, 0, 0, 0, 1}) }},
		{"call id in flight", func(c *client) {
			c.call(4, getMethod, 0, nil, &api.GetNamespaceRequest{Name: "block"})
			c.call(4, getMethod, 0, nil, &api.GetNamespaceRequest{Name: "x"})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, sock)
			decode(t, c.get("x"))
			tc.send(c)
			c.expectClosed()
		})
	}
}

// TestMalformedCallFailsAlone: a call frame whose body does not parse is
// answered Internal, and the connection goes on serving.
func TestMalformedCallFailsAlone(t *testing.T) {
	_, sock := startServer(t, lane.ServerOptions{}, echo)
	c := dial(t, sock)
	payload, _ := proto.Marshal(&api.GetNamespaceRequest{Name: "x"})
	compressed := append([]byte{1, 0, 0, 0, byte(len(payload))}, payload...)
	two := lane.AppendMsg(lane.AppendMsg(nil, payload), payload)
	for name, msg := range map[string][]byte{
		"truncated":  {0, 0, 0},
		"compressed": compressed,
		"two":        two,
		"none":       nil,
	} {
		c.write(lane.AppendCall(nil, 7, &lane.Call{Method: getMethod, Msg: msg}))
		id, r := c.reply()
		if id != 7 || codes.Code(r.Code) != codes.Internal || !strings.Contains(r.Message, "malformed call") {
			t.Errorf("%s message: reply for %d = %v %q, want Internal for 7", name, id, codes.Code(r.Code), r.Message)
		}
	}
	decode(t, c.get("x"))
}

func TestAcceptRefuses(t *testing.T) {
	var accepted atomic.Int32
	accept := func(nc net.Conn) error {
		if accepted.Add(1) == 1 {
			return errors.New("not the supervisor")
		}
		return nil
	}
	_, sock := startServer(t, lane.ServerOptions{Accept: accept}, echo)
	refused := dial(t, sock)
	refused.expectClosed()
	decode(t, dial(t, sock).get("x"))
}

// TestCloseCancelsCalls: Close ends Serve, cancels the calls in flight,
// closes the connections and leaves no goroutine behind.
func TestCloseCancelsCalls(t *testing.T) {
	before := runtime.NumGoroutine()
	started, cancelled := make(chan struct{}, 3), make(chan error, 3)
	get := func(ctx context.Context, name string) (*api.GetNamespaceResponse, error) {
		started <- struct{}{}
		<-ctx.Done()
		cancelled <- ctx.Err()
		return nil, ctx.Err()
	}
	s, sock := startServer(t, lane.ServerOptions{}, get)
	c := dial(t, sock)
	for id := range uint32(3) {
		c.call(id, getMethod, 0, nil, &api.GetNamespaceRequest{Name: "x"})
	}
	for range 3 {
		<-started
	}

	s.Close()
	s.Close()
	for range 3 {
		if err := <-cancelled; !errors.Is(err, context.Canceled) {
			t.Errorf("handler's context ended with %v, want context.Canceled", err)
		}
	}
	c.expectClosed()
	c.nc.Close()

	// Serving after Close returns at once.
	l, err := net.Listen("unix", sock+"2")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); err != nil {
		t.Errorf("Serve after Close = %v, want nil", err)
	}

	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
