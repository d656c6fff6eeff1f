package h2router

import (
	"io"
	"net"
	"sync"
	"time"
)

// memPipeLimit bounds the bytes one direction of a memConn holds.
const memPipeLimit = 4 << 20

// memPipe is one direction of an in-memory connection.
type memPipe struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	closed bool
}

func newMemPipe() *memPipe {
	p := &memPipe{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *memPipe) read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.buf) == 0 && !p.closed {
		p.cond.Wait()
	}
	if len(p.buf) == 0 {
		return 0, io.EOF
	}
	n := copy(b, p.buf)
	p.buf = p.buf[:copy(p.buf, p.buf[n:])]
	p.cond.Broadcast()
	return n, nil
}

// write appends b, waiting for room unless once is set, in which case it
// takes what fits now.
func (p *memPipe) write(b []byte, once bool) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	written := 0
	for written < len(b) {
		if p.closed {
			return written, net.ErrClosed
		}
		room := memPipeLimit - len(p.buf)
		if room <= 0 {
			if once {
				break
			}
			p.cond.Wait()
			continue
		}
		n := min(room, len(b)-written)
		p.buf = append(p.buf, b[written:written+n]...)
		written += n
		p.cond.Broadcast()
	}
	return written, nil
}

func (p *memPipe) close() {
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

// memConn is one end of an in-memory connection between the router and
// the in-process grpc.Server: no system calls and no poller on the way to
// the supervisor's own services. Deadlines are accepted and ignored: the
// grpc-go server only sets one around its handshake, which the router
// answers at once.
type memConn struct {
	in, out *memPipe
	once    sync.Once
}

// memConnPair returns the two ends of a new in-memory connection.
func memConnPair() (*memConn, *memConn) {
	a, b := newMemPipe(), newMemPipe()
	return &memConn{in: a, out: b}, &memConn{in: b, out: a}
}

// Read implements net.Conn.
func (c *memConn) Read(b []byte) (int, error) { return c.in.read(b) }

// Write implements net.Conn.
func (c *memConn) Write(b []byte) (int, error) { return c.out.write(b, false) }

// tryWrite writes what fits without waiting.
func (c *memConn) tryWrite(b []byte) (int, error) { return c.out.write(b, true) }

// Close implements net.Conn; both directions end.
func (c *memConn) Close() error {
	c.once.Do(func() {
		c.in.close()
		c.out.close()
	})
	return nil
}

// LocalAddr implements net.Conn.
func (c *memConn) LocalAddr() net.Addr { return localAddr{} }

// RemoteAddr implements net.Conn.
func (c *memConn) RemoteAddr() net.Addr { return localAddr{} }

// SetDeadline implements net.Conn.
func (c *memConn) SetDeadline(time.Time) error { return nil }

// SetReadDeadline implements net.Conn.
func (c *memConn) SetReadDeadline(time.Time) error { return nil }

// SetWriteDeadline implements net.Conn.
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }
