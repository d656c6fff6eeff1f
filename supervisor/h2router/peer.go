package h2router

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"sync"
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
// Lock order: a stream's mutex may be held while taking a peer's; a peer's
// mutex is never held while taking a stream's or another peer's.
type peer struct {
	nc      net.Conn
	timeout time.Duration // write deadline of one flush; 0 for none

	mu       sync.Mutex
	bw       *bufio.Writer
	fr       *http2.Framer
	hbuf     bytes.Buffer
	henc     *hpack.Encoder
	sendWin  int64     // what the other end lets us send on the connection
	initWin  int64     // its initial window for each stream
	maxFrame uint32    // its largest frame
	blocked  []*stream // streams waiting for sendWin
	dirty    bool
	deadline time.Time // the write deadline set last
	err      error     // set once writing failed or the connection closed

	recvAvail   int64 // what the other end may still send us on the connection
	recvPending int64 // bytes passed on but not yet credited
	recvWindow  int64 // the connection window we advertise
}

func newPeer(nc net.Conn, timeout time.Duration, recvWindow int64) *peer {
	p := &peer{
		nc:         nc,
		timeout:    timeout,
		bw:         bufio.NewWriterSize(nc, 64<<10),
		sendWin:    65535,
		initWin:    65535,
		maxFrame:   16384,
		recvAvail:  65535,
		recvWindow: recvWindow,
	}
	p.fr = http2.NewFramer(p.bw, nil)
	p.henc = hpack.NewEncoder(&p.hbuf)
	return p
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

// flush writes out what is buffered. A failed write closes the connection,
// which ends its reader.
func (p *peer) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.dirty || p.err != nil {
		return
	}
	p.dirty = false
	if p.timeout > 0 {
		// The deadline moves only when less than half of it is left, which
		// saves resetting a timer on every flush.
		if now := time.Now(); now.Add(p.timeout / 2).After(p.deadline) {
			p.deadline = now.Add(p.timeout)
			_ = p.nc.SetWriteDeadline(p.deadline)
		}
	}
	if err := p.bw.Flush(); err != nil {
		p.err = fmt.Errorf("write: %w", err)
		p.nc.Close()
	}
}

// fail marks p unusable and closes its connection.
func (p *peer) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
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
