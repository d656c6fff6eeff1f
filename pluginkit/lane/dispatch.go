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

// Dispatch runs the call c in this process and returns its outcome. The
// handler's context is derived from ctx, with a deadline when c.Timeout is
// set, c.MD as incoming metadata, and a grpc.ServerTransportStream whose
// header and trailer end up in the reply. A handler that panics is not
// recovered, as with grpc.Server.
func (s *Server) Dispatch(ctx context.Context, c *Call) *Reply {
	m, ok := s.reg.Load().methods[c.Method]
	if !ok {
		return s.unknown(c.Method)
	}
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	ts := &transportStream{method: c.Method}
	ctx = metadata.NewIncomingContext(ctx, incoming(c.MD))
	ctx = grpc.NewContextWithServerTransportStream(ctx, ts)

	var r *Reply
	resp, err := m.handler(m.impl, ctx, s.decoder(c.Msg), s.opts.Interceptor)
	if err == nil {
		var msg []byte
		if msg, err = s.encode(resp); err == nil {
			r = &Reply{Msg: msg}
		}
	}
	if err != nil {
		r = errorReply(err)
	}
	r.Header, r.Trailer = ts.finish()
	return r
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
	return func(v any) error {
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
}

// encode marshals a handler's response straight into length-prefixed form.
func (s *Server) encode(resp any) ([]byte, error) {
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
	b := make([]byte, 5, 5+size)
	b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, m)
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
)

// transportStream collects the metadata a handler sets; the reply carries
// it. The lane sends no header ahead of the reply, so SendHeader only closes
// the header to further changes.
type transportStream struct {
	method string

	mu      sync.Mutex
	header  metadata.MD
	trailer metadata.MD
	sent    bool // SendHeader was called
	done    bool // the reply is made
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
	defer ts.mu.Unlock()
	if err := ts.headerErr(); err != nil {
		return err
	}
	ts.sent = true
	if md.Len() > 0 {
		ts.header = metadata.Join(ts.header, md)
	}
	return nil
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

// finish closes the stream to changes and returns its metadata.
func (ts *transportStream) finish() (header, trailer []Field) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.done = true
	return fields(ts.header), fields(ts.trailer)
}

var _ grpc.ServerTransportStream = (*transportStream)(nil)
