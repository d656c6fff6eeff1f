package h2router

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// backendConn is the router's HTTP/2 connection to one plugin process (or
// to the supervisor's own server). Every call to that process shares it.
type backendConn struct {
	r   *Router
	key string
	p   *peer
	br  *bufio.Reader
	fr  *http2.Framer
	fl  flushList

	settled chan struct{} // closed once the backend's first SETTINGS came

	// Guarded by p.mu.
	streams    map[uint32]*stream
	nextID     uint32
	goaway     bool          // the backend takes no new streams
	maxStreams uint32        // its SETTINGS_MAX_CONCURRENT_STREAMS
	reserved   int           // streams about to open, counted against maxStreams
	freed      chan struct{} // closed when a stream closes, if a call waits
}

// dialBackend connects to addr and starts reading from it.
func (r *Router) dialBackend(ctx context.Context, key string, addr net.Addr) (*backendConn, error) {
	nc, err := r.dial(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("dial plugin at %s: %w", addr, err)
	}
	b := &backendConn{
		r:          r,
		key:        key,
		p:          newPeer(nc, 0, backendConnWindow, unblockUp),
		br:         bufio.NewReaderSize(nc, 64<<10),
		settled:    make(chan struct{}),
		streams:    make(map[uint32]*stream),
		nextID:     1,
		maxStreams: math.MaxUint32, // unlimited until the backend says
	}
	b.fr = http2.NewFramer(nil, b.br)
	b.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	b.fr.MaxHeaderListSize = maxHeaderListSize
	b.fr.SetMaxReadFrameSize(16384) // the default, which the router keeps

	var fl flushList
	b.p.writeControl(&fl, func(fr *http2.Framer) error {
		b.p.out = append(b.p.out, http2.ClientPreface...)
		err := fr.WriteSettings(
			http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: backendStreamWindow},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
		)
		if err != nil {
			return err
		}
		return fr.WriteWindowUpdate(0, backendConnWindow-65535)
	})
	b.p.mu.Lock()
	b.p.recvAvail = backendConnWindow
	b.p.mu.Unlock()
	fl.flush()
	go b.readLoop()
	// As a gRPC client does, wait for the backend's settings before the
	// first stream, so that its stream limit holds from the start.
	select {
	case <-b.settled:
		return b, nil
	case <-b.p.closed:
		return nil, fmt.Errorf("plugin at %s closed the connection before its settings", addr)
	case <-ctx.Done():
		b.p.fail(ctx.Err())
		return nil, fmt.Errorf("plugin at %s sent no settings: %w", addr, ctx.Err())
	}
}

// reserve waits until the backend takes one more stream, and counts it
// against the backend's limit until attach opens or gives it up. It fails
// with errRetry when the connection cannot take new calls any more.
func (b *backendConn) reserve(ctx context.Context) error {
	for {
		ok, freed, err := b.tryReserve()
		if ok || err != nil {
			return err
		}
		select {
		case <-freed:
		case <-b.p.closed:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// tryReserve reserves a stream if the backend's limit leaves room, or else
// returns a channel closed once a stream closes.
func (b *backendConn) tryReserve() (ok bool, freed <-chan struct{}, err error) {
	p := b.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil || b.goaway {
		return false, nil, errRetry
	}
	if uint64(len(b.streams)+b.reserved) < uint64(b.maxStreams) {
		b.reserved++
		return true, nil, nil
	}
	if b.freed == nil {
		b.freed = make(chan struct{})
	}
	return false, b.freed, nil
}

// unreserveLocked gives a reservation up.
func (b *backendConn) unreserveLocked() {
	b.reserved--
	b.wakeLocked()
}

// removeLocked forgets stream id and wakes the calls waiting for room.
func (b *backendConn) removeLocked(id uint32) {
	delete(b.streams, id)
	b.wakeLocked()
}

func (b *backendConn) wakeLocked() {
	if b.freed != nil {
		close(b.freed)
		b.freed = nil
	}
}

// unblockUp resumes a call's request bytes after its backend peer drained.
func unblockUp(s *stream, fl *flushList) {
	s.mu.Lock()
	s.blockedUp, s.stalledUp = false, false
	s.drainUpLocked(fl)
	s.mu.Unlock()
}

// usable reports whether new calls may go on b.
func (b *backendConn) usable() bool {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	return b.p.err == nil && !b.goaway && b.nextID < 1<<31-1
}

// attach opens s on b, in the place b.reserve kept for it: it takes a
// stream id, sends the request headers and whatever request bytes the
// windows allow.
func (s *stream) attach(fl *flushList, b *backendConn, release func(), replay bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := b.p
	p.mu.Lock()
	b.unreserveLocked() // the stream below takes the reservation's place
	if s.finished {
		p.mu.Unlock()
		return errFinished
	}
	if p.err != nil || b.goaway {
		p.mu.Unlock()
		return errRetry
	}
	id := b.nextID
	b.nextID += 2
	b.streams[id] = s
	s.upWin = p.initWin
	end := s.upEnd && len(s.up) == 0 && s.upTrailers == nil
	err := p.writeHeadersLocked(id, s.requestFields(replay), end)
	p.mu.Unlock()
	fl.add(p)
	if err != nil {
		return fmt.Errorf("send request headers: %w", err)
	}
	s.b, s.bid, s.release = b, id, release
	s.upEndSent = end
	s.sentAny = true
	s.downRecv = backendStreamWindow
	s.drainUpLocked(fl)
	return nil
}

// readLoop reads and dispatches the backend's frames until the connection
// ends, then hands every call on it to replay or failure. Like the client
// loop, it flushes what it wrote once no more input is buffered.
func (b *backendConn) readLoop() {
	err := b.readFrames()
	b.lost(err)
}

func (b *backendConn) readFrames() error {
	for {
		if b.br.Buffered() == 0 {
			b.fl.flush()
		}
		f, err := b.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				b.resetStream(se.StreamID, se.Code)
				continue
			}
			return fmt.Errorf("read from plugin: %w", err)
		}
		if err := b.handle(f); err != nil {
			return err
		}
	}
}

func (b *backendConn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if s := b.lookup(f.StreamID); s != nil {
			s.onBackendHeaders(&b.fl, f.Fields, f.StreamEnded())
		}
	case *http2.DataFrame:
		return b.onData(f)
	case *http2.WindowUpdateFrame:
		return b.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		if s := b.lookup(f.StreamID); s != nil {
			s.onBackendReset(&b.fl, f.ErrCode)
		}
	case *http2.SettingsFrame:
		return b.onSettings(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			b.p.writeControl(&b.fl, func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
		}
	case *http2.GoAwayFrame:
		b.onGoAway(f)
	case *http2.PushPromiseFrame:
		return errors.New("plugin sent PUSH_PROMISE")
	}
	return nil
}

func (b *backendConn) lookup(id uint32) *stream {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	return b.streams[id]
}

func (b *backendConn) onData(f *http2.DataFrame) error {
	flowLen := int64(f.Length)
	if !b.p.charge(flowLen) {
		return errors.New("plugin overran the connection window")
	}
	// The connection window comes back at once: calls share the plugin's
	// connection, and one whose client stalls must not hold it. Each call
	// is still held to its stream window, credited only as its client
	// takes the bytes, so the router keeps at most that much of it.
	b.p.credit(&b.fl, flowLen)
	s := b.lookup(f.StreamID)
	if s == nil {
		return nil
	}
	if err := s.onBackendData(&b.fl, f.Data(), flowLen, f.StreamEnded()); err != nil {
		b.resetStream(f.StreamID, http2.ErrCodeFlowControl)
	}
	return nil
}

func (b *backendConn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	if f.StreamID == 0 {
		blocked, ok := b.p.grow(int64(f.Increment))
		if !ok {
			return errors.New("plugin overflowed the connection window")
		}
		for _, s := range blocked {
			unblockUp(s, &b.fl)
		}
		return nil
	}
	s := b.lookup(f.StreamID)
	if s == nil {
		return nil
	}
	s.mu.Lock()
	if s.b == b {
		s.upWin += int64(f.Increment)
		s.drainUpLocked(&b.fl)
	}
	s.mu.Unlock()
	return nil
}

func (b *backendConn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	delta, err := b.p.applySettings(f)
	if err != nil {
		return fmt.Errorf("plugin settings: %w", err)
	}
	b.fl.add(b.p)
	if n, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
		b.p.mu.Lock()
		b.maxStreams = n
		b.wakeLocked()
		b.p.mu.Unlock()
	}
	select {
	case <-b.settled:
	default:
		close(b.settled)
	}
	if delta == 0 {
		return nil
	}
	for _, s := range b.snapshot() {
		s.mu.Lock()
		if s.b == b {
			s.upWin += delta
			s.drainUpLocked(&b.fl)
		}
		s.mu.Unlock()
	}
	return nil
}

// onGoAway stops new calls on b; the calls the backend never saw are
// replayed or failed, the others finish.
func (b *backendConn) onGoAway(f *http2.GoAwayFrame) {
	b.p.mu.Lock()
	b.goaway = true
	var unseen []*stream
	for id, s := range b.streams {
		if id > f.LastStreamID {
			unseen = append(unseen, s)
			delete(b.streams, id)
		}
	}
	b.wakeLocked()
	b.p.mu.Unlock()
	b.r.pool.forget(b)
	for _, s := range unseen {
		s.onBackendLost(&b.fl, errors.New("plugin is going away"))
	}
}

func (b *backendConn) snapshot() []*stream {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	out := make([]*stream, 0, len(b.streams))
	for _, s := range b.streams {
		out = append(out, s)
	}
	return out
}

// resetStream resets backend stream id and fails its call.
func (b *backendConn) resetStream(id uint32, code http2.ErrCode) {
	b.p.writeRST(&b.fl, id, code)
	if s := b.lookup(id); s != nil {
		s.fail(&b.fl, codes.Internal, "plugin broke the protocol")
	}
}

// lost ends the connection and hands its calls to replay or failure.
func (b *backendConn) lost(err error) {
	b.p.fail(err)
	b.r.pool.forget(b)
	b.p.mu.Lock()
	streams := b.streams
	b.streams = make(map[uint32]*stream)
	b.p.mu.Unlock()
	for _, s := range streams {
		s.onBackendLost(&b.fl, err)
	}
	b.fl.flush()
}

// pooled is what a pool holds: a connection to one backend process.
type pooled interface {
	comparable
	// usable reports whether new calls may go on the connection.
	usable() bool
	// poolKey is the key the connection is pooled under.
	poolKey() string
	// close ends the connection and the calls on it.
	close()
}

// pool keeps one connection per backend address.
type pool[C pooled] struct {
	mu    sync.Mutex
	conns map[string]*poolEntry[C]
}

type poolEntry[C pooled] struct {
	ready chan struct{}
	c     C
	err   error
}

// get returns a usable connection pooled under key, dialing one if needed.
func (pl *pool[C]) get(ctx context.Context, key string, dial func() (C, error)) (C, error) {
	var zero C
	for {
		pl.mu.Lock()
		if pl.conns == nil {
			pl.conns = make(map[string]*poolEntry[C])
		}
		e := pl.conns[key]
		if e == nil {
			e = &poolEntry[C]{ready: make(chan struct{})}
			pl.conns[key] = e
			pl.mu.Unlock()
			e.c, e.err = dial()
			if e.err != nil {
				pl.mu.Lock()
				delete(pl.conns, key)
				pl.mu.Unlock()
			}
			close(e.ready)
			return e.c, e.err
		}
		pl.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			return zero, ctx.Err()
		}
		if e.err == nil && e.c.usable() {
			return e.c, nil
		}
		if e.c != zero {
			pl.forget(e.c)
		}
	}
}

// ready returns the connection pooled under key if there is a usable one.
func (pl *pool[C]) ready(key string) (C, bool) {
	var zero C
	pl.mu.Lock()
	e := pl.conns[key]
	pl.mu.Unlock()
	if e == nil {
		return zero, false
	}
	select {
	case <-e.ready:
	default:
		return zero, false
	}
	if e.c == zero || !e.c.usable() {
		return zero, false
	}
	return e.c, true
}

// forget drops c from the pool, so that the next call dials afresh.
func (pl *pool[C]) forget(c C) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if e := pl.conns[c.poolKey()]; e != nil && e.c == c {
		delete(pl.conns, c.poolKey())
	}
}

// closeAll closes every pooled connection.
func (pl *pool[C]) closeAll() {
	var zero C
	pl.mu.Lock()
	var conns []C
	for k, e := range pl.conns {
		select {
		case <-e.ready:
			if e.c != zero {
				conns = append(conns, e.c)
			}
		default:
		}
		delete(pl.conns, k)
	}
	pl.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// addrKey is the pool key of a backend's HTTP/2 socket.
func addrKey(addr net.Addr) string {
	return addr.Network() + ":" + addr.String()
}

func (b *backendConn) poolKey() string { return b.key }

func (b *backendConn) close() { b.p.fail(net.ErrClosed) }

// getConn returns a usable HTTP/2 connection to addr, dialing one if needed.
func (r *Router) getConn(ctx context.Context, addr net.Addr) (*backendConn, error) {
	key := addrKey(addr)
	return r.pool.get(ctx, key, func() (*backendConn, error) { return r.dialBackend(ctx, key, addr) })
}
