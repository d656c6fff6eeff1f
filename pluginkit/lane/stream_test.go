package lane_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cpb "github.com/containerd/containerd/api/services/content/v1"
	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"corral.dev/pluginkit/lane"
	"corral.dev/pluginkit/testkit"
)

const (
	contentService = "containerd.services.content.v1.Content"
	readMethod     = "/" + contentService + "/Read"
	probeID        = 999
)

// fakeContent serves Read with a function of the test's choosing; the other
// methods are unimplemented.
type fakeContent struct {
	cpb.UnimplementedContentServer
	read func(*cpb.ReadContentRequest, cpb.Content_ReadServer) error
}

func (f *fakeContent) Read(req *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
	return f.read(req, srv)
}

// startContent serves read, and Get as echo, on a fresh socket.
func startContent(
	t *testing.T,
	opts lane.ServerOptions,
	read func(*cpb.ReadContentRequest, cpb.Content_ReadServer) error,
) (*lane.Server, string) {
	t.Helper()
	s := lane.NewServer(opts)
	cpb.RegisterContentServer(s, &fakeContent{read: read})
	api.RegisterNamespacesServer(s, &fakeNamespaces{get: echo})
	return s, serve(t, s)
}

// read starts a Read call of digest.
func (c *client) read(id uint32, timeout time.Duration, digest string, md ...lane.Field) {
	c.call(id, readMethod, timeout, md, &cpb.ReadContentRequest{Digest: digest})
}

// streamed is what the client received for one streaming call.
type streamed struct {
	headers [][]lane.Field // one entry per header frame
	msgs    []*cpb.ReadContentResponse
	bytes   int    // length-prefixed bytes of msgs, as credit counts them
	types   []byte // frame types in the order they came
	reply   *lane.Reply
}

// add takes one frame of the call and reports whether it ended the call.
func (s *streamed) add(t *testing.T, typ byte, body []byte) bool {
	t.Helper()
	s.types = append(s.types, typ)
	switch typ {
	case lane.TypeHeader:
		md, err := lane.ParseHeader(body)
		if err != nil {
			t.Fatalf("parse header frame: %v", err)
		}
		s.headers = append(s.headers, md)
	case lane.TypeMsg:
		msg, err := lane.ParseMsg(body)
		if err != nil {
			t.Fatalf("parse message frame: %v", err)
		}
		payload, _ := lane.MsgPayload(msg)
		resp := new(cpb.ReadContentResponse)
		if err := proto.Unmarshal(payload, resp); err != nil {
			t.Fatalf("unmarshal message: %v", err)
		}
		s.msgs = append(s.msgs, resp)
		s.bytes += len(msg)
	case lane.TypeReply:
		s.reply = new(lane.Reply)
		if err := lane.ParseReply(body, s.reply); err != nil {
			t.Fatalf("parse reply: %v", err)
		}
		return true
	default:
		t.Fatalf("frame type %d in a stream", typ)
	}
	return false
}

// take reads frames of call id into s until until(s) holds; the call must
// not end first unless until allows it.
func (c *client) take(id uint32, s *streamed, until func(*streamed) bool) {
	c.t.Helper()
	for !until(s) {
		typ, got, body := c.next()
		if got != id {
			c.t.Fatalf("frame type %d for call %d, want call %d", typ, got, id)
		}
		if s.add(c.t, typ, body) && !until(s) {
			c.t.Fatalf("call ended early: %v %q", codes.Code(s.reply.Code), s.reply.Message)
		}
	}
}

// stream reads the frames of call id up to its reply.
func (c *client) stream(id uint32) *streamed {
	c.t.Helper()
	s := new(streamed)
	c.take(id, s, replied)
	return s
}

func replied(s *streamed) bool { return s.reply != nil }

// creditSpent holds once the call's initial credit is spent.
func creditSpent(s *streamed) bool { return s.bytes >= lane.InitialCredit }

// probe makes a unary call whose reply must be the next frame: a stream
// that waits for credit sends nothing meanwhile.
func (c *client) probe() {
	c.t.Helper()
	c.call(probeID, getMethod, 0, nil, &api.GetNamespaceRequest{Name: "probe"})
	if typ, id, _ := c.next(); typ != lane.TypeReply || id != probeID {
		c.t.Fatalf("frame type %d for call %d came ahead of the probe's reply", typ, id)
	}
}

func checkOffsets(t *testing.T, s *streamed, n int, base int64) {
	t.Helper()
	if len(s.msgs) != n {
		t.Fatalf("%d messages, want %d", len(s.msgs), n)
	}
	for i, m := range s.msgs {
		if m.GetOffset() != base+int64(i) {
			t.Fatalf("message %d has offset %d, want %d", i, m.GetOffset(), base+int64(i))
		}
	}
}

func TestStreamMessagesInOrder(t *testing.T) {
	read := func(req *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
		// The generated handler took the request; nothing more comes.
		if err := srv.RecvMsg(new(cpb.ReadContentRequest)); err != io.EOF {
			return status.Errorf(codes.Internal, "second RecvMsg = %v, want io.EOF", err)
		}
		md, _ := metadata.FromIncomingContext(srv.Context())
		method, _ := grpc.Method(srv.Context())
		data := []byte(strings.Join([]string{req.GetDigest(), method, md.Get("k")[0]}, " "))
		for i := range 100 {
			if err := srv.Send(&cpb.ReadContentResponse{Offset: int64(i), Data: data}); err != nil {
				return err
			}
		}
		return nil
	}
	_, sock := startContent(t, lane.ServerOptions{}, read)
	c := dial(t, sock)
	c.read(5, 0, "sha256:abc", lane.Field{Name: "k", Value: "v"})
	s := c.stream(5)

	checkStatus(t, s.reply, codes.OK, "")
	if s.reply.Header != nil || s.reply.Trailer != nil || s.headers != nil {
		t.Errorf("header frames %v, reply header %v trailer %v; want none",
			s.headers, s.reply.Header, s.reply.Trailer)
	}
	checkOffsets(t, s, 100, 0)
	if want := "sha256:abc " + readMethod + " v"; string(s.msgs[0].GetData()) != want {
		t.Errorf("handler saw %q, want %q", s.msgs[0].GetData(), want)
	}

	// Unary calls are served alongside.
	decode(t, c.get("x"))
}

func TestStreamHeaderAndTrailer(t *testing.T) {
	send := func(srv cpb.Content_ReadServer) error {
		return srv.Send(&cpb.ReadContentResponse{Data: []byte("d")})
	}
	// must turns an unexpected outcome of a metadata call into an error.
	must := func(err error, wantErr bool, what string) error {
		if (err != nil) != wantErr {
			return status.Errorf(codes.Internal, "%s = %v", what, err)
		}
		return nil
	}
	busy, err := status.New(codes.FailedPrecondition, "busy").
		WithDetails(&api.Namespace{Name: "busy"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		handler func(srv cpb.Content_ReadServer) error
		headers [][]lane.Field // header frames
		types   string         // frame types: H header, M message, R reply
		code    codes.Code
		header  []lane.Field // the reply's
		trailer []lane.Field
	}{
		{
			name: "header set before the first message",
			handler: func(srv cpb.Content_ReadServer) error {
				ctx := srv.Context()
				return errors.Join(
					must(grpc.SetHeader(ctx, metadata.Pairs("h", "1")), false, "grpc.SetHeader"),
					must(srv.SetHeader(metadata.Pairs("h", "2")), false, "SetHeader"),
					send(srv),
					must(srv.SetHeader(metadata.Pairs("h", "3")), true, "SetHeader after a message"),
					must(srv.SendHeader(nil), true, "SendHeader after a message"),
					must(grpc.SetTrailer(ctx, metadata.Pairs("t", "1")), false, "grpc.SetTrailer"),
					send(srv),
				)
			},
			headers: [][]lane.Field{{{Name: "h", Value: "1"}, {Name: "h", Value: "2"}}},
			types:   "HMMR",
			trailer: []lane.Field{{Name: "t", Value: "1"}},
		},
		{
			name: "no header",
			handler: func(srv cpb.Content_ReadServer) error {
				srv.SetTrailer(metadata.Pairs("t", "1"))
				return errors.Join(
					send(srv),
					must(srv.SetHeader(metadata.Pairs("h", "1")), true, "SetHeader after a message"),
				)
			},
			types:   "MR",
			trailer: []lane.Field{{Name: "t", Value: "1"}},
		},
		{
			name: "SendHeader",
			handler: func(srv cpb.Content_ReadServer) error {
				return errors.Join(
					must(srv.SetHeader(metadata.Pairs("h", "1")), false, "SetHeader"),
					must(grpc.SendHeader(srv.Context(), metadata.Pairs("h", "2")), false,
						"grpc.SendHeader"),
					must(srv.SendHeader(nil), true, "second SendHeader"),
					must(srv.SetHeader(metadata.Pairs("h", "3")), true, "SetHeader after SendHeader"),
					send(srv),
				)
			},
			headers: [][]lane.Field{{{Name: "h", Value: "1"}, {Name: "h", Value: "2"}}},
			types:   "HMR",
		},
		{
			name:    "empty SendHeader",
			handler: func(srv cpb.Content_ReadServer) error { return srv.SendHeader(nil) },
			headers: [][]lane.Field{nil},
			types:   "HR",
		},
		{
			name: "header and error without messages",
			handler: func(srv cpb.Content_ReadServer) error {
				srv.SetHeader(metadata.Pairs("h", "1"))
				srv.SetTrailer(metadata.Pairs("t", "1"))
				return status.Error(codes.NotFound, "no such blob")
			},
			types:   "R",
			code:    codes.NotFound,
			header:  []lane.Field{{Name: "h", Value: "1"}},
			trailer: []lane.Field{{Name: "t", Value: "1"}},
		},
		{
			name: "error with details after messages",
			handler: func(srv cpb.Content_ReadServer) error {
				return errors.Join(send(srv), send(srv), busy.Err())
			},
			types: "MMR",
			code:  codes.FailedPrecondition,
		},
		{
			name:    "plain error",
			handler: func(srv cpb.Content_ReadServer) error { return errors.New("disk on fire") },
			types:   "R",
			code:    codes.Unknown,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			read := func(_ *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
				return tc.handler(srv)
			}
			_, sock := startContent(t, lane.ServerOptions{}, read)
			c := dial(t, sock)
			c.read(1, 0, "d")
			s := c.stream(1)

			if codes.Code(s.reply.Code) != tc.code || s.reply.Msg != nil {
				t.Fatalf("reply = %v %q with %d message bytes, want %v and no message",
					codes.Code(s.reply.Code), s.reply.Message, len(s.reply.Msg), tc.code)
			}
			types := strings.Map(func(r rune) rune { return rune("?..RMCH"[r]) }, string(s.types))
			if types != tc.types {
				t.Errorf("frames %s, want %s", types, tc.types)
			}
			opts := cmp.Options{
				cmpopts.EquateEmpty(),
				cmpopts.SortSlices(func(a, b lane.Field) bool {
					return a.Name < b.Name || a.Name == b.Name && a.Value < b.Value
				}),
			}
			if diff := cmp.Diff(tc.headers, s.headers, opts); diff != "" {
				t.Errorf("header frames (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.header, s.reply.Header, opts); diff != "" {
				t.Errorf("reply header (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.trailer, s.reply.Trailer, opts); diff != "" {
				t.Errorf("reply trailer (-want +got):\n%s", diff)
			}
			if tc.code == codes.FailedPrecondition {
				var sp spb.Status
				err := proto.Unmarshal(s.reply.Details, &sp)
				if err != nil || len(sp.GetDetails()) != 1 {
					t.Errorf("details %v (%v), want the status with one detail", &sp, err)
				}
			}
		})
	}
}

// TestStreamSendHeaderAtOnce: SendHeader does not wait for a message.
func TestStreamSendHeaderAtOnce(t *testing.T) {
	proceed := make(chan struct{})
	read := func(_ *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
		if err := srv.SendHeader(metadata.Pairs("h", "1")); err != nil {
			return err
		}
		<-proceed
		return srv.Send(&cpb.ReadContentResponse{})
	}
	_, sock := startContent(t, lane.ServerOptions{}, read)
	c := dial(t, sock)
	c.read(1, 0, "d")
	typ, id, body := c.next()
	close(proceed)
	if typ != lane.TypeHeader || id != 1 {
		t.Fatalf("first frame type %d for call %d, want a header frame for call 1", typ, id)
	}
	md, err := lane.ParseHeader(body)
	if err != nil || !cmp.Equal(md, []lane.Field{{Name: "h", Value: "1"}}) {
		t.Errorf("header frame = %v, %v; want h=1", md, err)
	}
	s := c.stream(1)
	checkStatus(t, s.reply, codes.OK, "")
	if len(s.msgs) != 1 || s.headers != nil || s.reply.Header != nil {
		t.Errorf("then %d messages, header frames %v, reply header %v; want 1, none, none",
			len(s.msgs), s.headers, s.reply.Header)
	}
}

// TestStreamCredit: a stream stops once its credit is spent and goes on as
// credit frames come.
func TestStreamCredit(t *testing.T) {
	const n = 24 // about one and a half times the initial credit
	payload := make([]byte, 64<<10)
	var attempts atomic.Int32
	read := func(_ *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
		for i := range n {
			attempts.Add(1)
			if err := srv.Send(&cpb.ReadContentResponse{Offset: int64(i), Data: payload}); err != nil {
				return err
			}
		}
		return nil
	}
	_, sock := startContent(t, lane.ServerOptions{}, read)
	c := dial(t, sock)
	c.read(1, 0, "d")
	s := new(streamed)

	// Messages go until the initial credit is spent, the last one past it.
	c.take(1, s, creditSpent)
	k := len(s.msgs)
	if before := s.bytes - proto.Size(s.msgs[k-1]) - 5; before >= lane.InitialCredit {
		t.Fatalf("%d bytes came, %d before the last message: the credit was spent earlier",
			s.bytes, before)
	}
	testkit.WaitFor(t, "the handler sends again", func() bool { return attempts.Load() == int32(k+1) })
	c.probe()

	// A grant that brings the credit to one byte lets one message go.
	c.write(lane.AppendCredit(nil, 1, uint32(s.bytes-lane.InitialCredit+1)))
	c.take(1, s, func(s *streamed) bool { return len(s.msgs) == k+1 })
	testkit.WaitFor(t, "the handler sends again", func() bool { return attempts.Load() == int32(k+2) })
	c.probe()

	// Grants past the cap neither overflow the credit nor stop the stream.
	for range 4 {
		c.write(lane.AppendCredit(nil, 1, math.MaxUint32))
	}
	c.take(1, s, replied)
	checkStatus(t, s.reply, codes.OK, "")
	checkOffsets(t, s, n, 0)
}

// TestStreamEnds: a handler waiting for credit, or for its context in a
// subscription, ends with the call.
func TestStreamEnds(t *testing.T) {
	payload := make([]byte, 64<<10)
	for _, tc := range []struct {
		name    string
		digest  string // flood: send until an error; wait: one message, then the context
		timeout time.Duration
		end     func(*client, *lane.Server)
		want    codes.Code
	}{
		{"cancel frame", "flood", 0, func(c *client, _ *lane.Server) {
			c.write(lane.AppendCancel(nil, 1))
		}, codes.Canceled},
		{"deadline", "flood", 50 * time.Millisecond, nil, codes.DeadlineExceeded},
		{"cancel frame in a subscription", "wait", 0, func(c *client, _ *lane.Server) {
			c.write(lane.AppendCancel(nil, 1))
		}, codes.Canceled},
		{"client closes", "flood", 0, func(c *client, _ *lane.Server) {
			c.nc.Close()
		}, codes.Canceled},
		{"server closes", "flood", 0, func(_ *client, s *lane.Server) { s.Close() }, codes.Canceled},
		{"client closes a subscription", "wait", 0, func(c *client, _ *lane.Server) {
			c.nc.Close()
		}, codes.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ended := make(chan error, 1)
			read := func(req *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
				err := srv.Send(&cpb.ReadContentResponse{Data: payload})
				for err == nil {
					if req.GetDigest() == "wait" {
						<-srv.Context().Done()
						err = status.FromContextError(srv.Context().Err()).Err()
						break
					}
					err = srv.Send(&cpb.ReadContentResponse{Data: payload})
				}
				ended <- err
				return err
			}
			s, sock := startContent(t, lane.ServerOptions{}, read)
			c := dial(t, sock)
			c.read(1, tc.timeout, tc.digest)
			got := new(streamed)
			if tc.end != nil {
				c.take(1, got, func(s *streamed) bool {
					return creditSpent(s) || tc.digest == "wait" && len(s.msgs) == 1
				})
				tc.end(c, s)
			} else {
				// Keep reading: a handler writing to a full socket does not
				// see its deadline.
				c.take(1, got, replied)
			}

			select {
			case err := <-ended:
				if status.Code(err) != tc.want {
					t.Errorf("Send ended with %v, want %v", err, tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the handler did not end")
			}
			if strings.Contains(tc.name, " closes") {
				if tc.name == "server closes" {
					c.expectClosed()
				}
				return
			}

			if got.reply == nil {
				c.take(1, got, replied)
			}
			if codes.Code(got.reply.Code) != tc.want {
				t.Errorf("reply %v %q, want %v", codes.Code(got.reply.Code), got.reply.Message, tc.want)
			}
			// Credit for a call that ended, or was never made, is ignored.
			c.write(lane.AppendCredit(nil, 1, 100))
			c.write(lane.AppendCredit(nil, 77, 100))
			c.probe()
		})
	}
}

// TestConcurrentStreams runs streams that need credit and unary calls
// together on one connection.
// collect reads the frames of streaming calls 1 to streams and of unary
// Get calls unaryBase+1 to unaryBase+streams, each naming its number, until
// all have replied; it grants credit back as the supervisor does, a quarter
// at a time, and returns what each streaming call received.
func (c *client) collect(streams int, unaryBase uint32) map[uint32]*streamed {
	t := c.t
	t.Helper()
	got := make(map[uint32]*streamed)
	pending := make(map[uint32]int) // bytes taken and not yet granted back
	for done := 0; done < 2*streams; {
		typ, id, body := c.next()
		if id > unaryBase {
			r := new(lane.Reply)
			if typ != lane.TypeReply || lane.ParseReply(body, r) != nil {
				t.Fatalf("frame type %d for unary call %d", typ, id)
			}
			if name := decode(t, r).GetNamespace().GetName(); name != fmt.Sprint(id-unaryBase) {
				t.Errorf("reply %d names %q", id, name)
			}
			done++
			continue
		}
		s := got[id]
		if s == nil {
			s = new(streamed)
			got[id] = s
		}
		before := s.bytes
		if s.add(t, typ, body) {
			done++
		}
		if pending[id] += s.bytes - before; pending[id] >= lane.InitialCredit/4 {
			c.write(lane.AppendCredit(nil, id, uint32(pending[id])))
			pending[id] = 0
		}
	}
	return got
}

func TestConcurrentStreams(t *testing.T) {
	const streams, n = 16, 24
	payload := make([]byte, 64<<10)
	read := func(req *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
		var base int64
		fmt.Sscan(req.GetDigest(), &base)
		for i := range int64(n) {
			if err := srv.Send(&cpb.ReadContentResponse{Offset: base + i, Data: payload}); err != nil {
				return err
			}
		}
		return nil
	}
	_, sock := startContent(t, lane.ServerOptions{}, read)
	c := dial(t, sock)

	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := w; i < streams; i += 2 {
				id := uint32(i + 1)
				c.read(id, 0, fmt.Sprint(id*1000))
				c.call(1000+id, getMethod, 0, nil, &api.GetNamespaceRequest{Name: fmt.Sprint(id)})
			}
		})
	}
	got := c.collect(streams, 1000)
	wg.Wait()
	for id := uint32(1); id <= streams; id++ {
		s := got[id]
		checkStatus(t, s.reply, codes.OK, "")
		checkOffsets(t, s, n, int64(id*1000))
	}
}

func TestStreamInterceptor(t *testing.T) {
	var (
		mu    sync.Mutex
		seen  []string
		infos []grpc.StreamServerInfo
		sent  atomic.Int32
	)
	note := func(s string) {
		mu.Lock()
		seen = append(seen, s)
		mu.Unlock()
	}
	opts := lane.ServerOptions{
		Interceptor: func(
			ctx context.Context,
			req any,
			info *grpc.UnaryServerInfo,
			h grpc.UnaryHandler,
		) (any, error) {
			note("unary " + info.FullMethod)
			return h(ctx, req)
		},
		StreamInterceptor: func(
			srv any,
			ss grpc.ServerStream,
			info *grpc.StreamServerInfo,
			h grpc.StreamHandler,
		) error {
			note("stream " + info.FullMethod)
			mu.Lock()
			infos = append(infos, *info)
			mu.Unlock()
			grpc.SetTrailer(ss.Context(), metadata.Pairs("intercepted", "1"))
			err := h(srv, &countingStream{ServerStream: ss, n: &sent})
			grpc.SetTrailer(ss.Context(), metadata.Pairs("sent", fmt.Sprint(sent.Load())))
			return err
		},
	}
	read := func(_ *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
		for range 3 {
			if err := srv.Send(&cpb.ReadContentResponse{}); err != nil {
				return err
			}
		}
		return nil
	}
	_, sock := startContent(t, opts, read)
	c := dial(t, sock)
	c.read(1, 0, "d")
	s := c.stream(1)
	decode(t, c.get("x"))

	checkStatus(t, s.reply, codes.OK, "")
	want := []lane.Field{{Name: "intercepted", Value: "1"}, {Name: "sent", Value: "3"}}
	if diff := cmp.Diff(want, s.reply.Trailer, cmpopts.SortSlices(func(a, b lane.Field) bool {
		return a.Name < b.Name
	})); diff != "" {
		t.Errorf("trailer (-want +got):\n%s", diff)
	}
	if want := []string{"stream " + readMethod, "unary " + getMethod}; !cmp.Equal(seen, want) {
		t.Errorf("interceptors saw %v, want %v", seen, want)
	}
	if want := (grpc.StreamServerInfo{FullMethod: readMethod, IsServerStream: true}); infos[0] != want {
		t.Errorf("stream info %+v, want %+v", infos[0], want)
	}
}

// countingStream counts the messages sent through it.
type countingStream struct {
	grpc.ServerStream
	n *atomic.Int32
}

func (cs *countingStream) SendMsg(m any) error {
	cs.n.Add(1)
	return cs.ServerStream.SendMsg(m)
}

func TestStreamSizeLimits(t *testing.T) {
	read := func(req *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
		if err := srv.Send(&cpb.ReadContentResponse{Data: []byte("small")}); err != nil {
			return err
		}
		size := 300
		if req.GetDigest() == "frame" {
			size = lane.MaxFrame
		}
		return srv.Send(&cpb.ReadContentResponse{Data: make([]byte, size)})
	}
	_, sock := startContent(t, lane.ServerOptions{MaxRecvMsgSize: 100, MaxSendMsgSize: 200}, read)
	c := dial(t, sock)

	c.read(1, 0, strings.Repeat("d", 100))
	checkStatus(t, c.stream(1).reply, codes.ResourceExhausted,
		"grpc: received message larger than max (102 vs. 100)")
	c.read(2, 0, "d")
	s := c.stream(2)
	checkStatus(t, s.reply, codes.ResourceExhausted, "trying to send message larger than max (")
	checkStatus(t, s.reply, codes.ResourceExhausted, " vs. 200)")
	if len(s.msgs) != 1 {
		t.Errorf("%d messages went, want the small one", len(s.msgs))
	}

	if testing.Short() {
		return
	}
	// With no limit, a message too large for a frame fails alone.
	_, sock = startContent(t, lane.ServerOptions{}, read)
	c = dial(t, sock)
	c.read(3, 0, "frame")
	checkStatus(t, c.stream(3).reply, codes.ResourceExhausted, "larger than a frame")
	c.probe()
}

func TestStreamUnimplemented(t *testing.T) {
	s, sock := startContent(t, lane.ServerOptions{}, nil)
	c := dial(t, sock)
	for _, tc := range []struct{ method, msg string }{
		// A bidirectional method stays with the gRPC server.
		{"/" + contentService + "/Write", "unknown method Write for service " + contentService},
		{"/" + contentService + "/List", "method List not implemented"},
	} {
		c.call(3, tc.method, 0, nil, &cpb.ListContentRequest{})
		_, r := c.reply()
		if codes.Code(r.Code) != codes.Unimplemented || r.Message != tc.msg {
			t.Errorf("%s: reply = %v %q, want Unimplemented %q",
				tc.method, codes.Code(r.Code), r.Message, tc.msg)
		}
	}

	payload, _ := proto.Marshal(&cpb.ReadContentRequest{Digest: "d"})
	call := &lane.Call{Method: readMethod, Msg: lane.AppendMsg(nil, payload)}
	r := s.Dispatch(context.Background(), call)
	checkStatus(t, r, codes.Unimplemented, "streaming method")
}

// TestStreamRedirect: a handler that returns Redirect before sending
// anything ends its call with a redirect frame carrying the new call; one
// that sent a message first, or runs without a lane, gets an error.
func TestStreamRedirect(t *testing.T) {
	var canRedirect atomic.Bool
	_, sock := startContent(t, lane.ServerOptions{}, func(req *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
		canRedirect.Store(lane.CanRedirect(srv.Context()))
		if req.GetDigest() == "late" {
			if err := srv.Send(&cpb.ReadContentResponse{Data: []byte("x")}); err != nil {
				return err
			}
		}
		srv.SetTrailer(metadata.Pairs("dropped", "yes"))
		raw := &cpb.ReadContentRequest{Digest: "raw:" + req.GetDigest(), Offset: req.GetOffset()}
		return fmt.Errorf("hand over: %w", lane.Redirect("content", readMethod, raw))
	})
	c := dial(t, sock)

	c.call(5, readMethod, time.Minute, []lane.Field{{Name: "containerd-namespace", Value: "ns"}},
		&cpb.ReadContentRequest{Digest: "d", Offset: 7})
	typ, id, body := c.next()
	if typ != lane.TypeRedirect || id != 5 {
		t.Fatalf("frame type %d for call %d, want a redirect for call 5", typ, id)
	}
	var call lane.Call
	target, err := lane.ParseRedirect(body, &call)
	if err != nil {
		t.Fatalf("ParseRedirect: %v", err)
	}
	if !canRedirect.Load() {
		t.Error("CanRedirect is false in a streaming handler on a lane")
	}
	if target != "content" || call.Method != readMethod || len(call.MD) != 0 {
		t.Errorf("redirect to %q %q with metadata %v, want content %q without", target, call.Method, call.MD, readMethod)
	}
	if call.Timeout <= 0 || call.Timeout > time.Minute {
		t.Errorf("redirected call's timeout %v, want what is left of a minute", call.Timeout)
	}
	payload, err := lane.MsgPayload(call.Msg)
	if err != nil {
		t.Fatal(err)
	}
	got := new(cpb.ReadContentRequest)
	if err := proto.Unmarshal(payload, got); err != nil {
		t.Fatal(err)
	}
	if got.GetDigest() != "raw:d" || got.GetOffset() != 7 {
		t.Errorf("redirected request %v, want digest raw:d at 7", got)
	}

	// The id is free again: the same id makes a new call.
	c.read(5, 0, "late")
	s := c.stream(5)
	if len(s.msgs) != 1 || codes.Code(s.reply.Code) != codes.Internal ||
		!strings.Contains(s.reply.Message, "after answering") {
		t.Errorf("redirect after a message: %d messages, reply %v %q; want 1 and Internal",
			len(s.msgs), codes.Code(s.reply.Code), s.reply.Message)
	}
}

// TestRedirectWithoutLane: in a plain gRPC handler context, CanRedirect is
// false and the error stays an error.
func TestRedirectWithoutLane(t *testing.T) {
	if lane.CanRedirect(context.Background()) {
		t.Error("CanRedirect(Background) = true")
	}
	err := fmt.Errorf("wrapped: %w", lane.Redirect("content", readMethod, &cpb.ReadContentRequest{}))
	if !lane.IsRedirect(err) || lane.IsRedirect(errors.New("other")) {
		t.Errorf("IsRedirect misjudges %v", err)
	}
}
