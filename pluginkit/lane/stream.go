package lane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

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
// ends it, or where the handler redirected it. ctx ends with the call.
func (c *conn) serveStream(
	ctx context.Context,
	id uint32,
	m method,
	call *Call,
	fl *flow,
) (*Reply, *redirectTo) {
	ts := &transportStream{method: call.Method, c: c, id: id}
	ctx, cancel := callContext(ctx, call, ts)
	defer cancel()
	// The stream holds the request only until the handler takes it: a
	// subscription may outlive it by far.
	ss := &serverStream{s: c.s, ctx: ctx, ts: ts, fl: fl, req: call.Msg}
	ts.ss = ss
	call.Msg = nil

	var err error
	if ic := c.s.opts.StreamInterceptor; ic != nil {
		info := &grpc.StreamServerInfo{FullMethod: call.Method, IsServerStream: true}
		err = ic(m.impl, ss, info, m.stream)
	} else {
		err = m.stream(m.impl, ss)
	}
	var rd *redirect
	if errors.As(err, &rd) {
		return c.s.redirectReply(ctx, ts, rd)
	}
	r := &Reply{}
	if err != nil {
		r = errorReply(err)
	}
	r.Header, r.Trailer = ts.finish()
	return r, nil
}

// redirect is the error Redirect returns.
type redirect struct {
	target, method string
	req            any
}

func (r *redirect) Error() string {
	return fmt.Sprintf("lane: call handed over to %s %s", r.target, r.method)
}

// Redirect returns the error with which a server-streaming handler served
// on a lane hands its call over to the plugin target (a plugin id): the
// supervisor calls method there with req, without metadata and with what is
// left of the call's deadline, and streams that call's answer to the
// client. The handler must not have sent anything; the header and trailer
// it set are dropped. Served otherwise (see CanRedirect), the error is
// only an error.
func Redirect(target, method string, req any) error {
	return &redirect{target: target, method: method, req: req}
}

// CanRedirect reports whether the call of ctx is a server-streaming call
// served on a lane, which its handler may end with Redirect.
func CanRedirect(ctx context.Context) bool {
	ts, ok := grpc.ServerTransportStreamFromContext(ctx).(*transportStream)
	return ok && ts.c != nil
}

// IsRedirect reports whether err is, or wraps, an error of Redirect.
func IsRedirect(err error) bool {
	var rd *redirect
	return errors.As(err, &rd)
}

// redirectReply returns where rd hands the call of ts over to, or an error
// reply when it cannot.
func (s *Server) redirectReply(ctx context.Context, ts *transportStream, rd *redirect) (*Reply, *redirectTo) {
	ts.mu.Lock()
	sent := ts.sent || ts.headerOut
	ts.done = true
	ts.mu.Unlock()
	if sent {
		return errorReply(status.Errorf(codes.Internal,
			"lane: %s handed its call over to %s after answering it", ts.method, rd.target)), nil
	}
	call := Call{Method: rd.method}
	if dl, ok := ctx.Deadline(); ok {
		if call.Timeout = time.Until(dl); call.Timeout <= 0 {
			return errorReply(status.FromContextError(context.DeadlineExceeded).Err()), nil
		}
	}
	msg, err := s.encode(nil, rd.req)
	if err != nil {
		return errorReply(err), nil
	}
	if n := len(rd.target) + len(rd.method) + len(msg); n > MaxFrame-64 {
		return errorReply(status.Errorf(codes.ResourceExhausted,
			"lane: redirect of %d bytes is larger than a frame", n)), nil
	}
	call.Msg = msg
	return nil, &redirectTo{target: rd.target, call: call}
}

// redirectTo is where a redirect sends a call.
type redirectTo struct {
	target string
	call   Call
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
