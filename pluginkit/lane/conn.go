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
	"google.golang.org/grpc/status"
)

// keepBuf is the largest write buffer a connection keeps for reuse, and the
// largest message buffer kept for the next message: room for a few messages
// of a blob read (1 MiB each). A larger one is left to the collector.
const keepBuf = 4 << 20

// conn is one lane connection: a reader loop, a goroutine per call, and a
// write buffer that frames queued together share.
type conn struct {
	s      *Server
	nc     net.Conn
	ctx    context.Context // cancelled when the connection ends
	cancel context.CancelFunc

	mu    sync.Mutex // guards calls
	calls map[uint32]callEntry

	wmu      sync.Mutex // guards the fields below
	idle     sync.Cond  // signalled when flushing turns false
	wbuf     []byte     // frames waiting for the flusher
	spare    []byte     // the buffer last written, for reuse
	flushing bool       // a goroutine is writing wbuf out
	dead     bool       // the connection ended; frames are dropped

	closeOnce sync.Once
}

// callEntry is a call in flight on a connection.
type callEntry struct {
	cancel context.CancelFunc
	flow   *flow // a server-streaming call's credit; nil for a unary call
}

func newConn(s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{s: s, nc: nc, ctx: ctx, cancel: cancel, calls: make(map[uint32]callEntry)}
	c.idle.L = &c.wmu
	return c
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
				// The frame's length kept the reader in step: the call
				// alone is bad, and the calls beside it go on.
				err = status.Errorf(codes.Internal, "lane: malformed call: %v", err)
				if !c.refuse(id, err) {
					log.Warn().Uint32("id", id).Msg("lane connection closed on a call id already in flight")
					return
				}
				continue
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
			if e, ok := c.entry(id); ok {
				e.cancel()
			}
		case TypeCredit:
			n, err := ParseCredit(body)
			if err != nil {
				log.Warn().Err(err).Uint32("id", id).
					Msg("lane connection closed on a bad credit frame")
				return
			}
			// A grant may cross the end of its call: then it has no entry,
			// or one of a new call with the same id, which is harmless.
			if e, ok := c.entry(id); ok && e.flow != nil {
				e.flow.grant(n)
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

func (c *conn) entry(id uint32) (callEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.calls[id]
	return e, ok
}

// start runs call on its own goroutine, unless id is in flight already.
func (c *conn) start(id uint32, call *Call) bool {
	m, known := c.s.reg.Load().methods[call.Method]
	var fl *flow
	if m.stream != nil {
		fl = newFlow()
	}
	ctx, cancel := context.WithCancel(c.ctx)
	c.mu.Lock()
	if _, dup := c.calls[id]; dup {
		c.mu.Unlock()
		cancel()
		return false
	}
	c.calls[id] = callEntry{cancel: cancel, flow: fl}
	c.mu.Unlock()

	go func() {
		var (
			r  *Reply
			rd *redirectTo
		)
		switch {
		case !known:
			r = c.s.unknown(call.Method)
		case fl != nil:
			r, rd = c.serveStream(ctx, id, m, call, fl)
		default:
			r = c.s.unary(ctx, m, call)
		}
		// The id is free again before the reply leaves: the peer may reuse
		// it as soon as it reads the reply.
		c.mu.Lock()
		delete(c.calls, id)
		c.mu.Unlock()
		cancel()
		if rd != nil {
			c.sendRedirect(id, rd)
			return
		}
		c.send(id, r)
	}()
	return true
}

// refuse answers call id with err at once, unless id is in flight.
func (c *conn) refuse(id uint32, err error) bool {
	c.mu.Lock()
	_, dup := c.calls[id]
	c.mu.Unlock()
	if dup {
		return false
	}
	c.send(id, errorReply(err))
	return true
}

// send queues a reply and flushes it if no other goroutine is flushing.
func (c *conn) send(id uint32, r *Reply) {
	_, flush := c.enqueue(func(b []byte) []byte { return appendReplyFrame(b, id, r) })
	if flush {
		c.flush()
	}
}

// sendRedirect queues the frame that hands call id over as rd says.
func (c *conn) sendRedirect(id uint32, rd *redirectTo) {
	_, flush := c.enqueue(func(b []byte) []byte { return AppendRedirect(b, id, rd.target, &rd.call) })
	if flush {
		c.flush()
	}
}

// enqueue appends frames to the write buffer with add, unless the
// connection has ended (queued false). The caller that finds no flush under
// way becomes the flusher (flush true) and must call flush, after releasing
// its own locks since a write may block.
func (c *conn) enqueue(add func([]byte) []byte) (queued, flush bool) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.dead {
		return false, false
	}
	c.wbuf = add(c.wbuf)
	if c.flushing {
		return true, false
	}
	c.flushing = true
	return true, true
}

// flush is the flusher's work: it yields once so that frames queued at
// about the same time join the buffer, then writes until the buffer is
// empty.
func (c *conn) flush() {
	runtime.Gosched()
	c.wmu.Lock()
	c.drainLocked()
	c.wmu.Unlock()
}

// drainLocked writes the buffer out until it stays empty, then gives up
// the flusher's part. c.wmu is released during each write.
func (c *conn) drainLocked() {
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
			c.failWriteLocked(err)
		}
	}
	c.flushing = false
	c.idle.Broadcast()
}

// failWriteLocked ends the connection after a failed write; the reader then
// sees it closed and ends the calls.
func (c *conn) failWriteLocked(err error) {
	if c.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
		c.s.opts.Log.Warn().Err(err).Msg("lane connection closed on a failed write")
	}
	c.dead = true
	c.wbuf = nil
	c.nc.Close()
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
// frames and closes the socket.
func (c *conn) close() {
	c.closeOnce.Do(func() {
		// Frames are dropped before the calls learn of the end, so that no
		// reply to a cancelled call goes out ahead of the close.
		c.wmu.Lock()
		c.dead = true
		c.wbuf, c.spare = nil, nil
		c.idle.Broadcast()
		c.wmu.Unlock()
		c.cancel()
		c.nc.Close()
	})
}
