package h2router

import (
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
)

// localAddr names the in-process server.
type localAddr struct{}

// Network implements net.Addr.
func (localAddr) Network() string { return "corral-local" }

// String implements net.Addr.
func (localAddr) String() string { return "supervisor" }

// pipeListener hands the in-process grpc.Server one end of each socket pair
// the router makes: kernel buffers like a unix socket's, and no file.
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

// dial makes a socket pair, hands one end to Accept and returns the other.
func (l *pipeListener) dial() (net.Conn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	ours, err := fileConn(fds[0], "router")
	if err != nil {
		syscall.Close(fds[1])
		return nil, err
	}
	theirs, err := fileConn(fds[1], "local")
	if err != nil {
		ours.Close()
		return nil, err
	}
	select {
	case l.conns <- theirs:
		return ours, nil
	case <-l.done:
		ours.Close()
		theirs.Close()
		return nil, net.ErrClosed
	}
}

// fileConn wraps a socket descriptor in a net.Conn, closing the descriptor
// either way.
func fileConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("wrap socket: %w", err)
	}
	return c, nil
}
