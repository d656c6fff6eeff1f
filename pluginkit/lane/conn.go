package lane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"

	"google.golang.org/grpc/codes"
)

// keepBuf is the largest write buffer a connection keeps for reuse; a
// larger one, grown by a large reply, is left to the collector.
const keepBuf = 256 << 10

// conn is one lane connection: a reader loop, a goroutine per call, and a
// write buffer that replies finishing together share.
type conn struct {
	s      *Server
	nc     net.Conn
	ctx    context.Context // cancelled when the connection ends
	cancel context.CancelFunc

	mu    sync.Mutex // guards calls
	calls map[uint32]context.CancelFunc

	wmu      sync.Mutex // guards the fields below
	wbuf     []byte     // replies waiting for the flusher
	spare    []byte     // the buffer last written, for reuse
	flushing bool       // a goroutine is writing wbuf out
	dead     bool       // the connection ended; replies are dropped

	closeOnce sync.Once
}

func newConn(s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn{s: s, nc: nc, ctx: ctx, cancel: cancel, calls: make(map[uint32]context.CancelFunc)}
}

// serve reads frames until the connection ends, then closes it.
func (c *conn) serve() {
	defer c.close()
	log := c.s.opts.Log
	r := NewReader(c.nc)
	for {
		typ, id, body, err := r.Next()
		if err != nil {
			if !c.ended(err) {
				log.Warn().Err(err).Msg("lane connection lost")
			}
			return
		}
		switch typ {
		case TypeCall:
			call := new(Call)
			if err := ParseCall(body, call); err != nil {
				log.Warn().Err(err).Uint32("id", id).Msg("lane connection closed on a bad call")
				return
			}
			if !c.start(id, call) {
				log.Warn().Uint32("id", id).Msg("lane connection closed on a call id already in flight")
				return
			}
		case TypeCancel:
			if len(body) != 0 {
				log.Warn().Uint32("id", id).Int("len", len(body)).
					Msg("lane connection closed on a cancel frame with a body")
				return
			}
			c.mu.Lock()
			cancel := c.calls[id]
			c.mu.Unlock()
			if cancel != nil {
				cancel()
			}
		default:
			log.Warn().Uint8("type", typ).Msg("lane connection closed on an unknown frame type")
			return
		}
	}
}

// ended reports whether err is the normal end of a connection: the peer
// closed it, or this side did.
func (c *conn) ended(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || c.ctx.Err() != nil
}

// start runs call on its own goroutine, unless id is in flight already.
func (c *conn) start(id uint32, call *Call) bool {
	ctx, cancel := context.WithCancel(c.ctx)
	c.mu.Lock()
	if _, dup := c.calls[id]; dup {
		c.mu.Unlock()
		cancel()
		return false
	}
	c.calls[id] = cancel
	c.mu.Unlock()

	go func() {
		r := c.s.Dispatch(ctx, call)
		// The id is free again before the reply leaves: the peer may reuse
		// it as soon as it reads the reply.
		c.mu.Lock()
		delete(c.calls, id)
		c.mu.Unlock()
		cancel()
		c.send(id, r)
	}()
	return true
}

// send queues a reply. The goroutine that finds no flush under way becomes
// the flusher: it yields once so that replies finishing at about the same
// time join the buffer, then writes until the buffer is empty.
func (c *conn) send(id uint32, r *Reply) {
	c.wmu.Lock()
	if c.dead {
		c.wmu.Unlock()
		return
	}
	c.wbuf = appendReplyFrame(c.wbuf, id, r)
	if c.flushing {
		c.wmu.Unlock()
		return
	}
	c.flushing = true
	c.wmu.Unlock()

	runtime.Gosched()
	c.flush()
}

func (c *conn) flush() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for len(c.wbuf) > 0 && !c.dead {
		buf := c.wbuf
		c.wbuf, c.spare = c.spare[:0], nil
		c.wmu.Unlock()
		_, err := c.nc.Write(buf)
		c.wmu.Lock()
		if cap(buf) <= keepBuf {
			c.spare = buf
		}
		if err != nil {
			if c.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				c.s.opts.Log.Warn().Err(err).Msg("lane connection closed on a failed write")
			}
			// The reader then sees the closed connection and ends it.
			c.dead = true
			c.wbuf = nil
			c.nc.Close()
		}
	}
	c.flushing = false
}

// appendReplyFrame appends r's frame to b, or a ResourceExhausted reply in
// its place when r would not fit in a frame a reader accepts.
func appendReplyFrame(b []byte, id uint32, r *Reply) []byte {
	start := len(b)
	b = AppendReply(b, id, r)
	if len(b)-start-4 <= MaxFrame {
		return b
	}
	return AppendReply(b[:start], id, &Reply{
		Code:    uint32(codes.ResourceExhausted),
		Message: fmt.Sprintf("lane: reply of %d bytes is larger than a frame", len(b)-start),
	})
}

// close ends the connection: it cancels the calls in flight, drops their
// replies and closes the socket.
func (c *conn) close() {
	c.closeOnce.Do(func() {
		c.cancel()
		c.wmu.Lock()
		c.dead = true
		c.wbuf, c.spare = nil, nil
		c.wmu.Unlock()
		c.nc.Close()
	})
}
