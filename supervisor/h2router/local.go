package h2router

import (
	"net"
	"sync"
)

// localAddr names the in-process server.
type localAddr struct{}

// Network implements net.Addr.
func (localAddr) Network() string { return "corral-local" }

// String implements net.Addr.
func (localAddr) String() string { return "supervisor" }

// pipeListener hands the in-process grpc.Server one end of each in-memory
// connection the router makes.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

// Accept implements net.Listener.
func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr implements net.Listener.
func (l *pipeListener) Addr() net.Addr { return localAddr{} }

// dial makes an in-memory connection, hands one end to Accept and returns
// the other.
func (l *pipeListener) dial() (net.Conn, error) {
	ours, theirs := memConnPair()
	select {
	case l.conns <- theirs:
		return ours, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
