package lane

import (
	"context"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// msgBufs holds buffers for encoding stream messages.
var msgBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxCredit caps a call's credit so that grants cannot overflow it.
const maxCredit = 1 << 31

// flow is a server-streaming call's credit: the message bytes it may send
// before the supervisor grants more.
type flow struct {
	mu     sync.Mutex
	credit int64
	more   chan struct{} // signalled after a grant; holds one signal at most
}

func newFlow() *flow {
	return &flow{credit: InitialCredit, more: make(chan struct{}, 1)}
}

// grant adds n bytes of credit. It never blocks, for the reader loop calls
// it.
func (f *flow) grant(n uint32) {
	f.mu.Lock()
	f.credit = min(f.credit+int64(n), maxCredit)
	f.mu.Unlock()
	select {
	case f.more <- struct{}{}:
	default:
	}
}

// take waits until the credit is positive, then takes n bytes of it, which
// may leave it negative. It returns the status of ctx's error once ctx ends.
func (f *flow) take(ctx context.Context, n int) error {
	for {
		if err := ctx.Err(); err != nil {
			return status.FromContextError(err).Err()
		}
		f.mu.Lock()
		ok := f.credit > 0
		if ok {
			f.credit -= int64(n)
		}
		f.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-f.more:
		case <-ctx.Done():
		}
	}
}

// serveStream runs a server-streaming call to m and returns the reply that
// ends it. ctx ends with the call.
func (c *conn) serveStream(ctx context.Context, id uint32, m method, call *Call, fl *flow) *Reply {
	ts := &transportStream{method: call.Method, c: c, id: id}
	ctx, cancel := callContext(ctx, call, ts)
	defer cancel()
	// The stream holds the request only until the handler takes it: a
	// subscription may outlive it by far.
	ss := &serverStream{s: c.s, ctx: ctx, ts: ts, fl: fl, req: call.Msg}
	call.Msg = nil

	var err error
	if ic := c.s.opts.StreamInterceptor; ic != nil {
		info := &grpc.StreamServerInfo{FullMethod: call.Method, IsServerStream: true}
		err = ic(m.impl, ss, info, m.stream)
	} else {
		err = m.stream(m.impl, ss)
	}
	r := &Reply{}
	if err != nil {
		r = errorReply(err)
	}
	r.Header, r.Trailer = ts.finish()
	return r
}

// serverStream is a server-streaming handler's grpc.ServerStream. As with
// grpc-go, one goroutine may call SendMsg while another calls RecvMsg.
type serverStream struct {
	s   *Server
	ctx context.Context
	ts  *transportStream
	fl  *flow

	req   []byte // the request, until RecvMsg takes it
	recvd bool

	sendMu sync.Mutex // keeps messages in the order they take credit
}

func (ss *serverStream) Context() context.Context        { return ss.ctx }
func (ss *serverStream) SetHeader(md metadata.MD) error  { return ss.ts.SetHeader(md) }
func (ss *serverStream) SendHeader(md metadata.MD) error { return ss.ts.SendHeader(md) }
func (ss *serverStream) SetTrailer(md metadata.MD)       { ss.ts.SetTrailer(md) }

// RecvMsg decodes the request into m. The client sends nothing more, so
// later calls return io.EOF.
func (ss *serverStream) RecvMsg(m any) error {
	if ss.recvd {
		return io.EOF
	}
	req := ss.req
	ss.req, ss.recvd = nil, true
	return ss.s.decode(req, m)
}

// SendMsg queues m once the call has credit, ahead of the reply. It fails
// with Canceled or DeadlineExceeded when the call ends first.
func (ss *serverStream) SendMsg(m any) error {
	// The frame copies the message, so its buffer serves the next one:
	// messages of reads are large, and a large allocation is zeroed.
	bp := msgBufs.Get().(*[]byte)
	msg, err := ss.s.encode(*bp, m)
	defer func() {
		if cap(msg) <= keepBuf {
			*bp = msg[:0]
			msgBufs.Put(bp)
		}
	}()
	if err != nil {
		return err
	}
	if n := len(msg); n > MaxFrame-(HeaderLen-4) {
		return status.Errorf(codes.ResourceExhausted,
			"lane: message of %d bytes is larger than a frame", n)
	}

	ss.sendMu.Lock()
	defer ss.sendMu.Unlock()
	if err := ss.fl.take(ss.ctx, len(msg)); err != nil {
		return err
	}
	return ss.ts.sendMsg(msg)
}

var _ grpc.ServerStream = (*serverStream)(nil)
