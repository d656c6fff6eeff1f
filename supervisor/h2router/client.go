package h2router

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"corral.dev/pluginkit"
)

// Windows and limits the router advertises.
const (
	clientStreamWindow   = 1 << 20
	clientConnWindow     = 8 << 20
	backendStreamWindow  = 1 << 20
	backendConnWindow    = 16 << 20
	maxHeaderListSize    = 1 << 20
	maxConcurrentStreams = 1000
	prefaceTimeout       = 10 * time.Second
)

// clientConn is one connection accepted on the public socket.
type clientConn struct {
	r  *Router
	p  *peer
	br *bufio.Reader
	fr *http2.Framer
	fl flushList

	// Guarded by p.mu.
	streams   map[uint32]*stream
	lastID    uint32 // highest stream the client opened
	goingAway bool   // GOAWAY sent: no new streams
}

func newClientConn(r *Router, nc net.Conn) *clientConn {
	c := &clientConn{
		r:       r,
		p:       newPeer(nc, r.opts.WriteTimeout, clientConnWindow, unblockDown),
		br:      bufio.NewReaderSize(nc, 64<<10),
		streams: make(map[uint32]*stream),
	}
	c.fr = http2.NewFramer(nil, c.br)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = maxHeaderListSize
	c.fr.SetMaxReadFrameSize(16384) // the default, which the router keeps
	return c
}

// serve runs the connection until it ends.
func (c *clientConn) serve() error {
	defer c.close()
	if err := c.handshake(); err != nil {
		return err
	}
	return c.readLoop()
}

// handshake reads the client's preface and sends the router's settings.
func (c *clientConn) handshake() error {
	nc := c.p.nc
	_ = nc.SetReadDeadline(time.Now().Add(prefaceTimeout))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.br, preface); err != nil {
		return fmt.Errorf("read client preface: %w", err)
	}
	if !bytes.Equal(preface, []byte(http2.ClientPreface)) {
		return errors.New("bad client preface")
	}
	_ = nc.SetReadDeadline(time.Time{})
	c.p.writeControl(&c.fl, func(fr *http2.Framer) error {
		err := fr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: maxConcurrentStreams},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: clientStreamWindow},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
		)
		if err != nil {
			return err
		}
		return fr.WriteWindowUpdate(0, clientConnWindow-65535)
	})
	c.p.mu.Lock()
	c.p.recvAvail = clientConnWindow
	c.p.mu.Unlock()
	c.fl.flush()
	return nil
}

// readLoop reads and dispatches the client's frames. Each frame is handled
// on this goroutine except opening a backend stream, which may wait for a
// restarting plugin; what the frames caused is flushed once no more input
// is buffered, so a burst leaves in one write.
func (c *clientConn) readLoop() error {
	first := true
	for {
		if c.br.Buffered() == 0 {
			c.fl.flush()
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			if err := c.readError(err); err != nil {
				return err
			}
			continue
		}
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				return c.goAway(http2.ConnectionError(http2.ErrCodeProtocol))
			}
			first = false
		}
		if err := c.handle(f); err != nil {
			return c.goAway(err)
		}
	}
}

// readError resets the stream a stream error names and reports anything
// else as the end of the connection.
func (c *clientConn) readError(err error) error {
	var se http2.StreamError
	if errors.As(err, &se) {
		c.p.mu.Lock()
		c.lastID = max(c.lastID, se.StreamID)
		c.p.mu.Unlock()
		c.resetStream(se.StreamID, se.Code)
		return nil
	}
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		return c.goAway(ce)
	}
	if errors.Is(err, http2.ErrFrameTooLarge) {
		return c.goAway(http2.ConnectionError(http2.ErrCodeFrameSize))
	}
	return err
}

// goAway tells the client the connection ends with err's code.
func (c *clientConn) goAway(err error) error {
	code := http2.ErrCodeProtocol
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		code = http2.ErrCode(ce)
	}
	var se http2.StreamError
	if errors.As(err, &se) {
		code = se.Code
	}
	c.p.mu.Lock()
	last := c.lastID
	c.p.mu.Unlock()
	c.p.writeControl(&c.fl, func(fr *http2.Framer) error {
		return fr.WriteGoAway(last, code, nil)
	})
	c.fl.flush()
	return fmt.Errorf("client connection error: %w", err)
}

func (c *clientConn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.onRST(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.p.writeControl(&c.fl, func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
		}
	case *http2.GoAwayFrame:
		// The client opens no more streams; those open go on.
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.resetStream(f.StreamID, http2.ErrCodeProtocol)
		}
	}
	return nil
}

// lookup returns the open stream id, and the highest stream id seen.
func (c *clientConn) lookup(id uint32) (*stream, uint32) {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	return c.streams[id], c.lastID
}

func (c *clientConn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	s, last := c.lookup(id)
	switch {
	case s != nil:
		return c.onTrailers(s, f)
	case id <= last:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if f.Priority.StreamDep == id {
		c.resetStream(id, http2.ErrCodeProtocol)
		return nil
	}
	c.p.mu.Lock()
	c.lastID = id
	refuse := c.goingAway || len(c.streams) >= maxConcurrentStreams
	c.p.mu.Unlock()
	path, ok := checkRequest(f.Fields)
	switch {
	case refuse:
		c.resetStream(id, http2.ErrCodeRefusedStream)
	case !ok:
		c.resetStream(id, http2.ErrCodeProtocol)
	case f.Truncated:
		c.refuse(id, f.StreamEnded(), codes.ResourceExhausted, "header list too large")
	case f.StreamEnded() && hasContent(f.Fields):
		c.resetStream(id, http2.ErrCodeProtocol)
	default:
		c.open(f, path)
	}
	return nil
}

// onTrailers takes a second HEADERS on an open stream: the client's trailers.
func (c *clientConn) onTrailers(s *stream, f *http2.MetaHeadersFrame) error {
	s.mu.Lock()
	ended := s.upEnd
	s.mu.Unlock()
	switch {
	case ended:
		c.resetStream(s.cid, http2.ErrCodeStreamClosed)
	case !f.StreamEnded() || !checkTrailers(f.Fields):
		c.resetStream(s.cid, http2.ErrCodeProtocol)
	default:
		s.onClientTrailers(&c.fl, f.Fields)
	}
	return nil
}

// refuse answers a stream the router will not forward with a status.
func (c *clientConn) refuse(id uint32, ended bool, code codes.Code, msg string) {
	c.p.mu.Lock()
	if c.p.err == nil {
		_ = c.p.writeHeadersLocked(id, trailersOnly(code, msg), true)
	}
	c.p.mu.Unlock()
	c.fl.add(c.p)
	if !ended {
		c.p.writeRST(&c.fl, id, http2.ErrCodeNo)
	}
	if obs := c.r.opts.Observe; obs != nil {
		obs("unknown", time.Now(), statusErr(code))
	}
}

// open starts a call: it records the stream and finds its backend on a
// goroutine of its own.
func (c *clientConn) open(f *http2.MetaHeadersFrame, path string) {
	r := c.r
	s := &stream{
		c:          c,
		cid:        f.StreamID,
		path:       path,
		service:    pluginkit.ServiceOf(path),
		start:      time.Now(),
		upRecv:     clientStreamWindow,
		upEnd:      f.StreamEnded(),
		contentLen: -1,
	}
	s.replayUntil = s.start.Add(r.opts.ReplayTimeout)
	// The frame is ours: its fields are filtered in place.
	s.fields = f.Fields[:0]
	for _, hf := range f.Fields {
		switch hf.Name {
		case pluginkit.TargetKey:
			s.target = hf.Value
			continue
		case pluginkit.CallIDKey, pluginkit.HandledKey:
			continue
		case "grpc-timeout":
			if d, ok := parseTimeout(hf.Value); ok {
				s.deadline = s.start.Add(d)
			}
		case "content-length":
			if n, err := strconv.ParseInt(hf.Value, 10, 64); err == nil && n >= 0 {
				s.contentLen = n
			}
		}
		s.fields = append(s.fields, hf)
	}
	local := s.target == "" && r.local[s.service]
	kind := r.methods.Kind(path)
	s.replayable = !local && !kind.ClientStreams
	if s.replayable {
		s.fields = append(s.fields, hpack.HeaderField{Name: pluginkit.CallIDKey, Value: r.callID()})
	}
	// Plugins take unary and server-streaming calls on their lanes; the
	// supervisor runs its own unary ones in process.
	if !kind.ClientStreams && (!local || r.opts.LocalLane != nil && !kind.ServerStreams) {
		s.laneMD, s.lane = laneMetadata(s.fields)
	}

	c.p.mu.Lock()
	c.streams[s.cid] = s
	s.downWin = c.p.initWin
	c.p.mu.Unlock()
	if r.opts.ByTarget && s.target == "" && !local {
		s.fail(&c.fl, codes.InvalidArgument, fmt.Sprintf("internal call %s names no plugin", path))
		return
	}
	if !s.tryOpen(&c.fl) {
		go s.open(false)
	}
}

func (c *clientConn) onData(f *http2.DataFrame) error {
	flowLen := int64(f.Length)
	if !c.p.charge(flowLen) {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	s, last := c.lookup(f.StreamID)
	if s == nil {
		c.p.credit(&c.fl, flowLen)
		if f.StreamID > last {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		c.p.writeRST(&c.fl, f.StreamID, http2.ErrCodeStreamClosed)
		return nil
	}
	if err := s.onClientData(&c.fl, f.Data(), flowLen, f.StreamEnded()); err != nil {
		var se http2.StreamError
		if errors.As(err, &se) {
			c.resetStream(se.StreamID, se.Code)
			return nil
		}
		return err
	}
	return nil
}

func (c *clientConn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	if f.StreamID == 0 {
		blocked, ok := c.p.grow(int64(f.Increment))
		if !ok {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		for _, s := range blocked {
			unblockDown(s, &c.fl)
		}
		return nil
	}
	s, last := c.lookup(f.StreamID)
	if s == nil {
		if f.StreamID > last {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	s.mu.Lock()
	s.downWin += int64(f.Increment)
	overflow := s.downWin > maxWindow
	if !overflow {
		s.drainDownLocked(&c.fl, nil)
	}
	s.mu.Unlock()
	if overflow {
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
	}
	return nil
}

// unblockDown resumes a call's response bytes after its client peer drained.
func unblockDown(s *stream, fl *flushList) {
	s.mu.Lock()
	s.blockedDown, s.stalledDown = false, false
	s.drainDownLocked(fl, nil)
	s.mu.Unlock()
}

func (c *clientConn) onRST(f *http2.RSTStreamFrame) error {
	s, last := c.lookup(f.StreamID)
	if s == nil {
		if f.StreamID > last {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil
	}
	s.onClientReset(&c.fl, http2.ErrCodeCancel)
	return nil
}

func (c *clientConn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	delta, err := c.p.applySettings(f)
	if err != nil {
		return err
	}
	c.fl.add(c.p)
	if delta == 0 {
		return nil
	}
	for _, s := range c.snapshot() {
		s.mu.Lock()
		s.downWin += delta
		s.drainDownLocked(&c.fl, nil)
		s.mu.Unlock()
	}
	return nil
}

// snapshot returns the open streams.
func (c *clientConn) snapshot() []*stream {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	out := make([]*stream, 0, len(c.streams))
	for _, s := range c.streams {
		out = append(out, s)
	}
	return out
}

// resetStream resets stream id toward the client and ends its call.
func (c *clientConn) resetStream(id uint32, code http2.ErrCode) {
	c.p.writeRST(&c.fl, id, code)
	if s, _ := c.lookup(id); s != nil {
		s.onClientReset(&c.fl, http2.ErrCodeCancel)
	}
}

// close ends every call still open on the connection.
func (c *clientConn) close() {
	c.p.fail(net.ErrClosed)
	for _, s := range c.snapshot() {
		s.onClientReset(&c.fl, http2.ErrCodeCancel)
	}
	c.fl.flush()
	c.r.forget(c)
}

// drain sends GOAWAY and refuses new streams, for a graceful stop.
func (c *clientConn) drain() {
	var fl flushList
	c.p.mu.Lock()
	c.goingAway = true
	last := c.lastID
	c.p.mu.Unlock()
	c.p.writeControl(&fl, func(fr *http2.Framer) error {
		return fr.WriteGoAway(last, http2.ErrCodeNo, nil)
	})
	fl.flush()
}

// idle reports whether no call is open.
func (c *clientConn) idle() bool {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	return len(c.streams) == 0
}
