package h2router

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// maxWindow is the largest flow-control window HTTP/2 allows.
const maxWindow = 1<<31 - 1

// peer is the sending half of one HTTP/2 connection, client or backend: the
// frame writer, the header encoder, and the windows the other end granted.
// Its mutex also guards the receive-side accounting of the connection window,
// which the reader charges and any forwarder credits.
//
// Frames go to an output buffer. A flush tries one non-blocking write of
// it; what the socket does not take is left to the peer's writer goroutine,
// so that no goroutine forwarding for other calls ever blocks on a peer that
// does not read. DATA stops at maxOut buffered bytes, as if the window were
// closed, and resumes once the writer caught up.
//
// Lock order: a stream's mutex may be held while taking a peer's; a peer's
// mutex is never held while taking a stream's or another peer's.
type peer struct {
	nc      net.Conn
	raw     syscall.RawConn // nil when nc has no descriptor
	timeout time.Duration   // bound of one blocked write; 0 for none
	hardMax int             // buffered bytes past which the peer is failed
	unblock func(s *stream, fl *flushList)
	wake    chan struct{}
	closed  chan struct{}

	mu       sync.Mutex
	out      []byte // frames; those from outOff on are not written yet
	outOff   int
	spare    []byte
	writing  bool // the writer goroutine owns out
	fr       *http2.Framer
	hbuf     bytes.Buffer
	henc     *hpack.Encoder
	sendWin  int64     // what the other end lets us send on the connection
	initWin  int64     // its initial window for each stream
	maxFrame uint32    // its largest frame
	blocked  []*stream // streams waiting for sendWin
	stalled  []*stream // streams waiting for out to drain
	dirty    bool
	err      error // set once writing failed or the connection closed

	recvAvail   int64 // what the other end may still send us on the connection
	recvPending int64 // bytes passed on but not yet credited
	recvWindow  int64 // the connection window we advertise
}

// Output buffer limits: DATA waits above maxOut; a peer that lets control
// frames pile up beyond hardMaxOut (say, a PING flood it never reads the
// answers to) loses its connection.
const (
	maxOut     = 1 << 20
	hardMaxOut = 16 << 20
)

func newPeer(nc net.Conn, timeout time.Duration, recvWindow int64, unblock func(*stream, *flushList)) *peer {
	p := &peer{
		nc:         nc,
		timeout:    timeout,
		unblock:    unblock,
		wake:       make(chan struct{}, 1),
		closed:     make(chan struct{}),
		sendWin:    65535,
		initWin:    65535,
		maxFrame:   16384,
		recvAvail:  65535,
		recvWindow: recvWindow,
		hardMax:    hardMaxOut,
	}
	if sc, ok := nc.(syscall.Conn); ok {
		p.raw, _ = sc.SyscallConn()
	}
	p.fr = http2.NewFramer((*peerOut)(p), nil)
	p.henc = hpack.NewEncoder(&p.hbuf)
	go p.writeLoop()
	return p
}

// peerOut appends the framer's frames to the output buffer; the framer is
// only used under p.mu.
type peerOut peer

// Write implements io.Writer.
func (w *peerOut) Write(b []byte) (int, error) {
	w.out = append(w.out, b...)
	return len(b), nil
}

// full reports whether DATA must wait for the output buffer to drain.
func (p *peer) fullLocked() bool {
	return p.pendingLocked() >= maxOut
}

// pendingLocked returns the bytes buffered and not written yet.
func (p *peer) pendingLocked() int {
	return len(p.out) - p.outOff
}

// writeHeadersLocked encodes fields and writes them as HEADERS plus
// CONTINUATION frames that fit the other end's frame size.
func (p *peer) writeHeadersLocked(id uint32, fields []hpack.HeaderField, end bool) error {
	p.hbuf.Reset()
	for _, f := range fields {
		if err := p.henc.WriteField(f); err != nil {
			return fmt.Errorf("encode header %s: %w", f.Name, err)
		}
	}
	block := p.hbuf.Bytes()
	first := block[:min(len(block), int(p.maxFrame))]
	block = block[len(first):]
	err := p.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0,
	})
	for err == nil && len(block) > 0 {
		frag := block[:min(len(block), int(p.maxFrame))]
		block = block[len(frag):]
		err = p.fr.WriteContinuation(id, len(block) == 0, frag)
	}
	p.dirty = true
	return err
}

// creditLocked records that n received bytes were passed on (or dropped), and
// sends a connection WINDOW_UPDATE once a quarter of the window is owed.
func (p *peer) creditLocked(n int64) {
	p.recvPending += n
	if p.recvPending < p.recvWindow/4 || p.err != nil {
		return
	}
	_ = p.fr.WriteWindowUpdate(0, uint32(p.recvPending))
	p.recvAvail += p.recvPending
	p.recvPending = 0
	p.dirty = true
}

// credit is creditLocked for callers that do not hold p.mu.
func (p *peer) credit(fl *flushList, n int64) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	p.creditLocked(n)
	p.mu.Unlock()
	fl.add(p)
}

// charge takes n bytes of a received DATA frame from the connection window,
// and reports false if the other end sent more than it was allowed.
func (p *peer) charge(n int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n > p.recvAvail {
		return false
	}
	p.recvAvail -= n
	return true
}

// writeRST resets stream id.
func (p *peer) writeRST(fl *flushList, id uint32, code http2.ErrCode) {
	p.mu.Lock()
	if p.err == nil {
		_ = p.fr.WriteRSTStream(id, code)
		p.dirty = true
	}
	p.mu.Unlock()
	fl.add(p)
}

// writeWindowUpdate grants the other end n more bytes on stream id.
func (p *peer) writeWindowUpdate(fl *flushList, id uint32, n int64) {
	p.mu.Lock()
	if p.err == nil && n > 0 {
		_ = p.fr.WriteWindowUpdate(id, uint32(n))
		p.dirty = true
	}
	p.mu.Unlock()
	fl.add(p)
}

// writeControl writes one frame with fn, for PING, SETTINGS and GOAWAY.
func (p *peer) writeControl(fl *flushList, fn func(fr *http2.Framer) error) {
	p.mu.Lock()
	if p.err == nil {
		_ = fn(p.fr)
		p.dirty = true
	}
	p.mu.Unlock()
	fl.add(p)
}

// flush writes out what is buffered, as far as the socket takes it now,
// and leaves the rest to the writer goroutine.
func (p *peer) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return
	}
	if p.pendingLocked() > p.hardMax {
		p.failLocked(errors.New("peer does not read what it asked for"))
		return
	}
	if !p.dirty || p.writing {
		return
	}
	p.dirty = false
	n, err := p.tryWrite()
	if err != nil {
		p.failLocked(fmt.Errorf("write: %w", err))
		return
	}
	// The written part is dropped once nothing is left, never copied.
	p.outOff += n
	if p.outOff == len(p.out) {
		p.out, p.outOff = p.out[:0], 0
	}
	if p.pendingLocked() > 0 || len(p.stalled) > 0 {
		p.writing = true
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// tryWrite makes one non-blocking write of what is pending.
func (p *peer) tryWrite() (int, error) {
	pending := p.out[p.outOff:]
	if len(pending) == 0 {
		return 0, nil
	}
	if mc, ok := p.nc.(*memConn); ok {
		return mc.tryWrite(pending)
	}
	if p.raw == nil {
		return 0, nil
	}
	var n int
	var werr error
	err := p.raw.Write(func(fd uintptr) bool {
		n, werr = syscall.Write(int(fd), pending)
		return true
	})
	switch {
	case err != nil:
		return 0, err
	case werr == syscall.EAGAIN || werr == syscall.EINTR:
		return 0, nil
	case werr != nil:
		return 0, werr
	}
	return max(n, 0), nil
}

// writeLoop writes what flush left, blocking, and then lets the streams
// that waited for the buffer go on, until the connection closes.
func (p *peer) writeLoop() {
	for {
		select {
		case <-p.wake:
		case <-p.closed:
			return
		}
		for p.writeSome() {
		}
		p.mu.Lock()
		stalled := p.stalled
		p.stalled = nil
		p.mu.Unlock()
		var fl flushList
		for _, s := range stalled {
			p.unblock(s, &fl)
		}
		fl.flush()
	}
}

// writeSome writes the buffered frames once, and reports whether more came
// meanwhile.
func (p *peer) writeSome() bool {
	p.mu.Lock()
	if p.pendingLocked() == 0 || p.err != nil {
		p.writing = false
		p.mu.Unlock()
		return false
	}
	buf := p.out
	chunk := buf[p.outOff:]
	p.out, p.outOff, p.spare = p.spare[:0], 0, nil
	p.mu.Unlock()

	if p.timeout > 0 {
		_ = p.nc.SetWriteDeadline(time.Now().Add(p.timeout))
	}
	_, err := p.nc.Write(chunk)
	if p.timeout > 0 {
		// A deadline left behind would fail tryWrite's raw writes once it
		// passes, long after this write ended.
		_ = p.nc.SetWriteDeadline(time.Time{})
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	p.spare = buf[:0]
	if err != nil {
		p.failLocked(fmt.Errorf("write: %w", err))
		return false
	}
	return true
}

// fail marks p unusable and closes its connection.
func (p *peer) fail(err error) {
	p.mu.Lock()
	p.failLocked(err)
	p.mu.Unlock()
}

func (p *peer) failLocked(err error) {
	if p.err != nil {
		return
	}
	p.err = err
	p.writing = false
	p.out, p.outOff = nil, 0
	close(p.closed)
	p.nc.Close()
}

// applySettings applies the other end's SETTINGS to what we send, and
// returns the change of the initial stream window.
func (p *peer) applySettings(f *http2.SettingsFrame) (delta int64, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	err = f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta += int64(s.Val) - p.initWin
			p.initWin = int64(s.Val)
		case http2.SettingMaxFrameSize:
			p.maxFrame = s.Val
		case http2.SettingHeaderTableSize:
			p.henc.SetMaxDynamicTableSizeLimit(s.Val)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	_ = p.fr.WriteSettingsAck()
	p.dirty = true
	return delta, nil
}

// flushList collects the peers one goroutine wrote to, so that a burst of
// frames leaves in one write when the goroutine is about to wait.
type flushList []*peer

func (fl *flushList) add(p *peer) {
	for _, q := range *fl {
		if q == p {
			return
		}
	}
	*fl = append(*fl, p)
}

func (fl *flushList) flush() {
	for i, p := range *fl {
		p.flush()
		(*fl)[i] = nil
	}
	*fl = (*fl)[:0]
}

// grow adds n to the connection send window after a WINDOW_UPDATE, and
// returns the streams that waited for it; false means the window overflowed.
func (p *peer) grow(n int64) ([]*stream, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sendWin += n
	if p.sendWin > maxWindow {
		return nil, false
	}
	blocked := p.blocked
	p.blocked = nil
	return blocked, true
}
