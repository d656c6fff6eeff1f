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

// drainQuiet is how long a stopped copy waits for more bytes: stdin after
// CloseIO (the client wrote them just before), a terminal after its
// process exited (the kernel moves them to the master asynchronously).
const drainQuiet = 50 * time.Millisecond

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
	in      *drainCopy
	out     *drainCopy // terminal output
	master  *os.File   // pollable pty master, terminal only
	peer    *os.File   // the terminal's other end, held open
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
	if p.master, p.peer, err = pollablePty(con); err != nil {
		return err
	}
	if p.stdin != "" {
		if p.in, err = startStdin(p.stdin, p.master, false); err != nil {
			return err
		}
	}
	p.copyTerminal()
	return nil
}

// pollablePty returns the pty master as a file the poller drives (it has
// deadlines) and a descriptor of the terminal itself. Holding the latter
// keeps the master from reporting EIO, and dropping output still in
// flight, the moment the process exits.
func pollablePty(con console.Console) (master, peer *os.File, err error) {
	fd, err := unix.FcntlInt(con.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("dup pty master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("pty master non-blocking: %w", err)
	}
	master = os.NewFile(uintptr(fd), "ptmx")
	pfd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCGPTPEER,
		uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno != 0 {
		master.Close()
		return nil, nil, fmt.Errorf("open pty peer: %w", errno)
	}
	return master, os.NewFile(pfd, "pts"), nil
}

// copyTerminal copies the terminal's output into the stdout FIFO until
// exited stops it.
func (p *procIO) copyTerminal() {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancels = append(p.cancels, cancel)
	p.out = newDrainCopy(p.master)
	go func() {
		w, err := openWriter(ctx, p.stdout)
		if err != nil {
			p.out.run(io.Discard)
			return
		}
		defer w.Close()
		keep, err := os.OpenFile(p.stdout, os.O_RDONLY|unix.O_NONBLOCK, 0)
		if err == nil {
			defer keep.Close()
		}
		p.out.run(w)
	}()
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
		p.in.stop()
	}
}

// exited ends the terminal's output once what the process wrote before it
// exited has been copied. Without a terminal, the pipes end by themselves.
func (p *procIO) exited() {
	if p.out != nil {
		go p.out.stop()
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
	if p.out != nil {
		p.out.abort()
	}
	for _, f := range []*os.File{p.master, p.peer} {
		if f != nil {
			f.Close()
		}
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

// drainCopy copies a pollable file into a writer until it is stopped; a
// stopped copy still takes what arrives until the source is quiet for
// drainQuiet, so that bytes in flight at the stop are not lost.
type drainCopy struct {
	src     *os.File
	closing atomic.Bool
	done    chan struct{}
}

// newDrainCopy prepares a copy from src; run starts it.
func newDrainCopy(src *os.File) *drainCopy {
	return &drainCopy{src: src, done: make(chan struct{})}
}

// run copies into dst until the source ends, fails or is stopped.
func (c *drainCopy) run(dst io.Writer) {
	defer close(c.done)
	buf := make([]byte, copyBuffer)
	for {
		n, err := c.src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if c.closing.Load() {
				_ = c.src.SetReadDeadline(time.Now().Add(drainQuiet))
			}
		}
		if err != nil {
			return
		}
	}
}

// stop drains the source and waits, a bounded time, for the copy to end.
func (c *drainCopy) stop() {
	if !c.closing.Swap(true) {
		_ = c.src.SetReadDeadline(time.Now().Add(drainQuiet))
	}
	select {
	case <-c.done:
	case <-time.After(2 * time.Second):
	}
}

// abort stops copying at once.
func (c *drainCopy) abort() {
	c.closing.Store(true)
	_ = c.src.SetReadDeadline(time.Now())
	<-c.done
}

// startStdin opens the FIFO at path read-write, so reads never see EOF
// while the client comes and goes, and copies it into dst. With closeDst,
// dst is closed when copying stops.
func startStdin(path string, dst io.WriteCloser, closeDst bool) (*drainCopy, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open fifo %s: %w", path, err)
	}
	c := newDrainCopy(f)
	go func() {
		c.run(dst)
		f.Close()
		if closeDst {
			dst.Close()
		}
	}()
	return c, nil
}
