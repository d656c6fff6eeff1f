package lane

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SendFile sends, on the server-streaming call of ctx, the message whose
// encoding is head followed by the n bytes at off in f: head is the
// message up to those bytes, the tag and length of the field they fill
// included. The bytes go from the file to the lane with sendfile(2), never
// through this process's memory, and f must hold them until SendFile
// returns. It reports false, sending nothing, when the call is not served
// on a lane; the handler then sends the message as any other.
//
// SendFile takes credit and orders its message with SendMsg's. A file
// shorter than off+n ends the connection, whose frame would be cut short.
func SendFile(ctx context.Context, head []byte, f *os.File, off int64, n int) (bool, error) {
	ts, ok := grpc.ServerTransportStreamFromContext(ctx).(*transportStream)
	if !ok || ts.ss == nil {
		return false, nil
	}
	ss := ts.ss
	size := len(head) + n
	if limit := ss.s.opts.MaxSendMsgSize; limit > 0 && size > limit {
		return true, status.Errorf(codes.ResourceExhausted,
			"trying to send message larger than max (%d vs. %d)", size, limit)
	}
	if msgLen := 5 + size; msgLen > MaxFrame-(HeaderLen-4) {
		return true, status.Errorf(codes.ResourceExhausted,
			"lane: message of %d bytes is larger than a frame", msgLen)
	}
	ss.sendMu.Lock()
	defer ss.sendMu.Unlock()
	if err := ss.fl.take(ss.ctx, 5+size); err != nil {
		return true, err
	}
	frames, err := ts.fileFrames(head, n)
	if err != nil {
		return true, err
	}
	return true, ts.c.sendFileFrame(frames, f, off, n)
}

// fileFrames returns the frames that go ahead of a file message's bytes:
// the header frame if header metadata is waiting, and the message frame up
// to the file's bytes.
func (ts *transportStream) fileFrames(head []byte, n int) ([]byte, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.done {
		return nil, errReplied
	}
	var b []byte
	if !ts.sent && ts.header.Len() > 0 {
		header := fields(ts.header)
		if n := HeaderLen + mdLen(header); n-4 > MaxFrame {
			return nil, status.Errorf(codes.ResourceExhausted,
				"lane: header of %d bytes is larger than a frame", n)
		}
		b = AppendHeader(b, ts.id, header)
		ts.headerOut = true
	}
	ts.sent = true
	b, start := appendHeader(b, TypeMsg, ts.id)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(head)+n))
	b = append(b, head...)
	// The length field counts the file's bytes that follow.
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-4+n))
	return b, nil
}

// sendFileFrame writes frames and then n bytes of f at off, in order with
// the frames other calls queue: it becomes the connection's flusher once
// the one at work is done, writes what was queued and frames, sends the
// file's bytes, and then writes what others queued meanwhile.
func (c *conn) sendFileFrame(frames []byte, f *os.File, off int64, n int) error {
	c.wmu.Lock()
	for c.flushing && !c.dead {
		c.idle.Wait()
	}
	if c.dead {
		c.wmu.Unlock()
		return errConnEnded
	}
	c.flushing = true
	buf := append(c.wbuf, frames...)
	c.wbuf, c.spare = c.spare[:0], nil
	c.wmu.Unlock()

	_, err := c.nc.Write(buf)
	if err == nil {
		err = sendfile(c.nc, f, off, n)
	}

	c.wmu.Lock()
	if cap(buf) <= keepBuf {
		c.spare = buf[:0]
	}
	if err != nil {
		c.failWriteLocked(err)
	}
	c.drainLocked()
	c.wmu.Unlock()
	if err != nil {
		return errConnEnded
	}
	return nil
}

// errShortFile is sendfile's error when the file ends before its bytes do.
var errShortFile = errors.New("lane: file ended before the bytes of its message")

// sendfile copies n bytes at off in f to the socket of nc, waiting while
// its buffer is full.
func sendfile(nc io.Writer, f *os.File, off int64, n int) error {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return fmt.Errorf("lane: sendfile on a %T", nc)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	src, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var werr error
	cerr := src.Control(func(in uintptr) {
		rerr := raw.Write(func(out uintptr) bool {
			for n > 0 {
				w, err := unix.Sendfile(int(out), int(in), &off, n)
				switch {
				case err == unix.EAGAIN:
					return false // wait until the socket takes more
				case err == unix.EINTR:
					continue
				case err != nil:
					werr = fmt.Errorf("sendfile: %w", err)
					return true
				case w == 0:
					werr = errShortFile
					return true
				}
				n -= w
			}
			return true
		})
		werr = errors.Join(werr, rerr)
	})
	return errors.Join(werr, cerr)
}
