package lane

import (
	"context"
	"encoding/binary"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
)

// Dispatch runs the unary call c in this process and returns its outcome.
// The handler's context is derived from ctx, with a deadline when c.Timeout
// is set, c.MD as incoming metadata, and a grpc.ServerTransportStream whose
// header and trailer end up in the reply. A handler that panics is not
// recovered, as with grpc.Server. A call to a server-streaming method is
// answered Unimplemented: its messages need a connection to go on.
func (s *Server) Dispatch(ctx context.Context, c *Call) *Reply {
	m, ok := s.reg.Load().methods[c.Method]
	switch {
	case !ok:
		return s.unknown(c.Method)
	case m.stream != nil:
		return errorReply(status.Errorf(codes.Unimplemented,
			"lane: %s is a streaming method, which Dispatch does not serve", c.Method))
	}
	return s.unary(ctx, m, c)
}

// unary runs the unary call c to m.
func (s *Server) unary(ctx context.Context, m method, c *Call) *Reply {
	ts := &transportStream{method: c.Method}
	ctx, cancel := callContext(ctx, c, ts)
	defer cancel()

	var r *Reply
	resp, err := m.handler(m.impl, ctx, s.decoder(c.Msg), s.opts.Interceptor)
	if err == nil {
		var msg []byte
		if msg, err = s.encode(nil, resp); err == nil {
			r = &Reply{Msg: msg}
		}
	}
	if err != nil {
		r = errorReply(err)
	}
	r.Header, r.Trailer = ts.finish()
	return r
}

// callContext derives a call's context from ctx: the call's deadline, its
// metadata as incoming metadata, and ts as its grpc.ServerTransportStream.
func callContext(
	ctx context.Context,
	c *Call,
	ts *transportStream,
) (context.Context, context.CancelFunc) {
	cancel := context.CancelFunc(func() {})
	if c.Timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
	}
	ctx = metadata.NewIncomingContext(ctx, incoming(c.MD))
	return grpc.NewContextWithServerTransportStream(ctx, ts), cancel
}

// unknown answers a call for a method that is not registered, in grpc-go's
// words.
func (s *Server) unknown(full string) *Reply {
	name, ok := strings.CutPrefix(full, "/")
	i := strings.LastIndex(name, "/")
	if !ok || i < 0 {
		return errorReply(status.Errorf(codes.Unimplemented, "malformed method name: %q", full))
	}
	service, method := name[:i], name[i+1:]
	if !s.reg.Load().services[service] {
		return errorReply(status.Errorf(codes.Unimplemented, "unknown service %v", service))
	}
	return errorReply(status.Errorf(codes.Unimplemented, "unknown method %v for service %v", method, service))
}

// decoder returns the handler's function to decode the request msg into.
func (s *Server) decoder(msg []byte) func(any) error {
	return func(v any) error { return s.decode(msg, v) }
}

// decode unmarshals the request msg into v, with grpc-go's errors.
func (s *Server) decode(msg []byte, v any) error {
	payload, err := MsgPayload(msg)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if limit := s.opts.MaxRecvMsgSize; limit > 0 && len(payload) > limit {
		return status.Errorf(codes.ResourceExhausted,
			"grpc: received message larger than max (%d vs. %d)", len(payload), limit)
	}
	m := messageOf(v)
	if m == nil {
		return status.Errorf(codes.Internal,
			"grpc: failed to unmarshal the received message: %T is not a protobuf message", v)
	}
	if err := proto.Unmarshal(payload, m); err != nil {
		return status.Errorf(codes.Internal, "grpc: failed to unmarshal the received message: %v", err)
	}
	return nil
}

// encode marshals a handler's response straight into length-prefixed form,
// in buf's storage when it has room.
func (s *Server) encode(buf []byte, resp any) ([]byte, error) {
	m := messageOf(resp)
	if m == nil {
		return nil, status.Errorf(codes.Internal,
			"grpc: error while marshaling: %T is not a protobuf message", resp)
	}
	size := proto.Size(m)
	if limit := s.opts.MaxSendMsgSize; limit > 0 && size > limit {
		// grpc-go's own wording for this limit.
		return nil, status.Errorf(codes.ResourceExhausted,
			"trying to send message larger than max (%d vs. %d)", size, limit)
	}
	b := buf[:0]
	if cap(b) < 5+size {
		b = make([]byte, 0, 5+size)
	}
	b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(append(b, 0, 0, 0, 0, 0), m)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "grpc: error while marshaling: %v", err)
	}
	binary.BigEndian.PutUint32(b[1:], uint32(len(b)-5))
	return b, nil
}

// messageOf returns v as a protobuf message, or nil when it is none.
func messageOf(v any) proto.Message {
	switch m := v.(type) {
	case proto.Message:
		return m
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(m)
	}
	return nil
}

// errorReply turns a handler's error into a reply as grpc-go does: an error
// without a status is Unknown, or Canceled or DeadlineExceeded for the
// context's errors.
func errorReply(err error) *Reply {
	st, ok := status.FromError(err)
	if !ok {
		st = status.FromContextError(err)
	}
	r := &Reply{Code: uint32(st.Code()), Message: st.Message()}
	if p := st.Proto(); len(p.GetDetails()) > 0 {
		// Marshal fails only on a message that is not UTF-8; grpc-go then
		// sends the status without its details, and so does the lane.
		r.Details, _ = proto.Marshal(p)
	}
	return r
}

func incoming(md []Field) metadata.MD {
	out := make(metadata.MD, len(md))
	for _, f := range md {
		out[f.Name] = append(out[f.Name], f.Value)
	}
	return out
}

func fields(md metadata.MD) []Field {
	if len(md) == 0 {
		return nil
	}
	n := 0
	for _, vs := range md {
		n += len(vs)
	}
	out := make([]Field, 0, n)
	for k, vs := range md {
		for _, v := range vs {
			out = append(out, Field{Name: k, Value: v})
		}
	}
	return out
}

var (
	errHeaderSent = status.Error(codes.Internal, "transport: SendHeader called multiple times")
	errReplied    = status.Error(codes.Internal, "lane: the call has been answered")
	errConnEnded  = status.Error(codes.Unavailable, "lane: the connection has ended")
)

// transportStream collects the metadata a handler sets. A unary call's
// reply carries all of it, so there SendHeader only closes the header to
// further changes. A server-streaming call (c set) sends its header in a
// frame of its own, when the handler sends it or ahead of the first message
// once set; its reply carries the header only if no header frame went.
type transportStream struct {
	method string
	c      *conn         // nil for a unary call
	ss     *serverStream // a server-streaming call's stream
	id     uint32

	mu        sync.Mutex
	header    metadata.MD
	trailer   metadata.MD
	sent      bool // the header is closed: SendHeader was called or a message went
	headerOut bool // a header frame went
	done      bool // the reply is made
	flush     bool // a frame was queued and this stream must flush: see unlock
}

func (ts *transportStream) Method() string { return ts.method }

func (ts *transportStream) SetHeader(md metadata.MD) error {
	if md.Len() == 0 {
		return nil
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if err := ts.headerErr(); err != nil {
		return err
	}
	ts.header = metadata.Join(ts.header, md)
	return nil
}

func (ts *transportStream) SendHeader(md metadata.MD) error {
	ts.mu.Lock()
	defer ts.unlock()
	if err := ts.headerErr(); err != nil {
		return err
	}
	ts.sent = true
	if md.Len() > 0 {
		ts.header = metadata.Join(ts.header, md)
	}
	if ts.c == nil {
		return nil
	}
	return ts.queueLocked(true, nil)
}

func (ts *transportStream) SetTrailer(md metadata.MD) error {
	if md.Len() == 0 {
		return nil
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.done {
		return errReplied
	}
	ts.trailer = metadata.Join(ts.trailer, md)
	return nil
}

func (ts *transportStream) headerErr() error {
	switch {
	case ts.done:
		return errReplied
	case ts.sent:
		return errHeaderSent
	}
	return nil
}

// sendMsg queues a server-streaming call's message frame, after a header
// frame if header metadata is waiting; msg is length-prefixed.
func (ts *transportStream) sendMsg(msg []byte) error {
	ts.mu.Lock()
	defer ts.unlock()
	if ts.done {
		return errReplied
	}
	withHeader := !ts.sent && ts.header.Len() > 0
	ts.sent = true
	return ts.queueLocked(withHeader, msg)
}

// queueLocked queues a server-streaming call's header frame if withHeader,
// then the frame of msg unless it is nil. Holding ts.mu meanwhile keeps the
// frames ahead of the reply.
func (ts *transportStream) queueLocked(withHeader bool, msg []byte) error {
	var header []Field
	if withHeader {
		header = fields(ts.header)
		if n := HeaderLen + mdLen(header); n-4 > MaxFrame {
			return status.Errorf(codes.ResourceExhausted,
				"lane: header of %d bytes is larger than a frame", n)
		}
	}
	queued, flush := ts.c.enqueue(func(b []byte) []byte {
		if withHeader {
			b = AppendHeader(b, ts.id, header)
		}
		if msg != nil {
			b = AppendMsgFrame(b, ts.id, msg)
		}
		return b
	})
	ts.flush = ts.flush || flush
	if !queued {
		return errConnEnded
	}
	ts.headerOut = ts.headerOut || withHeader
	return nil
}

// unlock releases ts.mu, then has the connection's buffer written out if
// queueLocked made this stream the flusher. The write runs on a goroutine of
// its own, which mostly runs once the handler blocks or returns: a handler
// that sends its last message and returns then has message and reply leave
// in one write, so the supervisor wakes once for both.
func (ts *transportStream) unlock() {
	flush := ts.flush
	ts.flush = false
	ts.mu.Unlock()
	if flush {
		go ts.c.flush()
	}
}

// finish closes the stream to changes and returns the metadata its reply
// carries.
func (ts *transportStream) finish() (header, trailer []Field) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.done = true
	if ts.headerOut {
		return nil, fields(ts.trailer)
	}
	return fields(ts.header), fields(ts.trailer)
}

// mdLen returns the encoded length of md in a frame.
func mdLen(md []Field) int {
	n := 2
	for _, f := range md {
		n += 6 + len(f.Name) + len(f.Value)
	}
	return n
}

var _ grpc.ServerTransportStream = (*transportStream)(nil)
