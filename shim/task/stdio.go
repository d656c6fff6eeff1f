package task

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/containerd/console"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// stdinDrain is how long CloseIO keeps reading a stdin FIFO that has gone
// quiet, so that bytes the client wrote just before CloseIO still arrive.
const stdinDrain = 50 * time.Millisecond

// copyBuffer is the buffer size of each stream copy.
const copyBuffer = 8 << 10

// stdio is where a process's standard streams go, as the daemon asked.
type stdio struct {
	stdin, stdout, stderr string
	terminal              bool
}

// procIO connects a process's streams to its FIFOs: through pipes, or
// through the pty master runc sends over a console socket.
type procIO struct {
	stdio
	pipes   runc.IO
	socket  *runc.Socket
	console console.Console
	in      *stdinCopy
	cancels []context.CancelFunc
}

// newProcIO prepares the streams for a process that runc is about to start.
func newProcIO(s stdio, uid, gid int) (_ *procIO, err error) {
	p := &procIO{stdio: s}
	if s.terminal {
		if p.socket, err = runc.NewTempConsoleSocket(); err != nil {
			return nil, fmt.Errorf("create console socket: %w", err)
		}
		return p, nil
	}
	if p.pipes, err = runc.NewPipeIO(uid, gid, withoutStdin(s.stdin == "")); err != nil {
		return nil, fmt.Errorf("create stdio pipes: %w", err)
	}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	if err := p.copyOut(s.stdout, p.pipes.Stdout()); err != nil {
		return nil, err
	}
	if err := p.copyOut(s.stderr, p.pipes.Stderr()); err != nil {
		return nil, err
	}
	if s.stdin != "" {
		if p.in, err = startStdin(s.stdin, p.pipes.Stdin(), true); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// withoutStdin drops the stdin pipe, so the process gets /dev/null.
func withoutStdin(drop bool) runc.IOOpt {
	return func(o *runc.IOOption) {
		o.OpenStdin = !drop
	}
}

// runcIO is what runc gets: the pipes, or the console socket.
func (p *procIO) runcIO() (runc.IO, runc.ConsoleSocket) {
	if p.socket != nil {
		return nil, p.socket
	}
	return p.pipes, nil
}

// started finishes the set-up once runc has returned: with a terminal it
// takes the pty master and starts copying through it.
func (p *procIO) started() error {
	if p.socket == nil {
		return nil
	}
	defer func() {
		p.socket.Close()
		p.socket = nil
	}()
	con, err := p.socket.ReceiveMaster()
	if err != nil {
		return fmt.Errorf("receive pty master: %w", err)
	}
	p.console = con
	if err := p.copyOut(p.stdout, con); err != nil {
		return err
	}
	if p.stdin != "" {
		if p.in, err = startStdin(p.stdin, con, false); err != nil {
			return err
		}
	}
	return nil
}

// copyOut copies src into the FIFO at path until src ends, then closes the
// FIFO so the reader sees EOF. Like the client, it writes only once a reader
// has opened the FIFO (bytes in a FIFO nobody opened are lost on close), and
// it keeps a reader of its own so writes do not fail after the client left.
func (p *procIO) copyOut(path string, src io.Reader) error {
	if src == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancels = append(p.cancels, cancel)
	go func() {
		w, err := openWriter(ctx, path)
		if err != nil {
			_, _ = io.Copy(io.Discard, src)
			return
		}
		defer w.Close()
		keep, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
		if err == nil {
			defer keep.Close()
		}
		// A small buffer: the shim idles with it allocated, per stream. The
		// wrappers keep os.File from substituting its own 32 KiB one.
		buf := make([]byte, copyBuffer)
		_, _ = io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{src}, buf)
	}()
	return nil
}

// openWriter opens the FIFO at path for writing, waiting for a reader
// until ctx ends.
func openWriter(ctx context.Context, path string) (*os.File, error) {
	if path == "" {
		return nil, errors.New("no fifo")
	}
	type opened struct {
		f   *os.File
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		ch <- opened{f, err}
	}()
	select {
	case o := <-ch:
		return o.f, o.err
	case <-ctx.Done():
	}
	// Release the blocked open by opening the read side ourselves.
	if r, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0); err == nil {
		defer r.Close()
	}
	if o := <-ch; o.f != nil {
		o.f.Close()
	}
	return nil, ctx.Err()
}

// closeStdin delivers EOF to the process once pending input is copied.
func (p *procIO) closeStdin() {
	if p.in != nil {
		p.in.close()
	}
}

// resize sets the terminal size; a process without a terminal has none.
func (p *procIO) resize(width, height uint32) error {
	if p.console == nil {
		return errors.New("process has no terminal")
	}
	return p.console.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

// close releases every descriptor the streams hold.
func (p *procIO) close() {
	for _, cancel := range p.cancels {
		cancel()
	}
	if p.in != nil {
		p.in.abort()
	}
	if p.socket != nil {
		p.socket.Close()
	}
	if p.console != nil {
		p.console.Close()
	}
	if p.pipes != nil {
		p.pipes.Close()
	}
}

// stdinCopy copies a stdin FIFO into the process until CloseIO.
type stdinCopy struct {
	f       *os.File
	closing atomic.Bool
	done    chan struct{}
}

// startStdin opens the FIFO at path read-write, so reads never see EOF
// while the client comes and goes, and copies it into dst. With closeDst,
// dst is closed when copying stops.
func startStdin(path string, dst io.WriteCloser, closeDst bool) (*stdinCopy, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open fifo %s: %w", path, err)
	}
	s := &stdinCopy{f: f, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, copyBuffer)
		for {
			n, err := f.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
				if s.closing.Load() {
					_ = f.SetReadDeadline(time.Now().Add(stdinDrain))
				}
			}
			if err != nil {
				break
			}
		}
		f.Close()
		if closeDst {
			dst.Close()
		}
	}()
	return s, nil
}

// close drains what is already in the FIFO, then stops and closes dst.
func (s *stdinCopy) close() {
	if s.closing.Swap(true) {
		<-s.done
		return
	}
	_ = s.f.SetReadDeadline(time.Now().Add(stdinDrain))
	select {
	case <-s.done:
	case <-time.After(2 * time.Second):
	}
}

// abort stops copying at once.
func (s *stdinCopy) abort() {
	s.closing.Store(true)
	_ = s.f.SetReadDeadline(time.Now())
	<-s.done
}
