package h2router

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"corral.dev/pluginkit"
	"corral.dev/pluginkit/lane"
)

// laneConn is the router's lane connection to one plugin process (see
// package lane): a unary or server-streaming call goes on it as one frame
// and comes back as a reply frame, after message frames for a stream, with
// none of HTTP/2's per-stream work on the plugin's side. Every such call to
// that process shares it.
type laneConn struct {
	r   *Router
	key string
	p   *peer
	rd  *lane.Reader
	fl  flushList

	// Guarded by p.mu.
	calls  map[uint32]*stream
	nextID uint32
}

// laneMaxOut is the most call bytes a lane buffers for a plugin that does
// not read them before the router gives up on the connection. Unary requests
// are taken whole, as a gRPC server takes them, so this is a bound on calls
// in flight rather than a window.
const laneMaxOut = 256 << 20

// getLane returns a usable lane to the socket at path, dialing one if needed.
func (r *Router) getLane(ctx context.Context, path string) (*laneConn, error) {
	return r.lanes.get(ctx, path, func() (*laneConn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, fmt.Errorf("dial plugin lane %s: %w", path, err)
		}
		l := &laneConn{
			r:      r,
			key:    path,
			p:      newPeer(nc, 0, 0, unblockUp),
			rd:     lane.NewReader(nc),
			calls:  make(map[uint32]*stream),
			nextID: 1,
		}
		l.p.hardMax = laneMaxOut
		go l.readLoop()
		return l, nil
	})
}

func (l *laneConn) usable() bool {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	return l.p.err == nil && l.nextID < 1<<32-1
}

func (l *laneConn) poolKey() string { return l.key }

func (l *laneConn) close() { l.p.fail(net.ErrClosed) }

// readLoop hands each reply to its call until the connection ends, then
// hands the calls still open to replay or failure. It flushes what it
// wrote to clients once no more input is buffered.
func (l *laneConn) readLoop() {
	err := l.readReplies()
	l.p.fail(err)
	l.r.lanes.forget(l)
	l.p.mu.Lock()
	calls := l.calls
	l.calls = make(map[uint32]*stream)
	l.p.mu.Unlock()
	for _, s := range calls {
		s.onBackendLost(&l.fl, err)
	}
	l.fl.flush()
}

func (l *laneConn) readReplies() error {
	var rep lane.Reply
	for {
		if l.rd.Buffered() == 0 {
			l.fl.flush()
		}
		typ, id, body, err := l.rd.NextShared()
		if err != nil {
			return fmt.Errorf("read from plugin lane: %w", err)
		}
		var s *stream
		switch typ {
		case lane.TypeReply:
			if err := lane.ParseReply(body, &rep); err != nil {
				return err
			}
			l.p.mu.Lock()
			s = l.calls[id]
			delete(l.calls, id)
			l.p.mu.Unlock()
			if s != nil {
				s.onLaneReply(&l.fl, l, id, &rep)
			}
		case lane.TypeMsg:
			msg, err := lane.ParseMsg(body)
			if err != nil {
				return err
			}
			if s = l.lookup(id); s != nil {
				s.onLaneMsg(&l.fl, l, id, msg)
			}
		case lane.TypeHeader:
			md, err := lane.ParseHeader(body)
			if err != nil {
				return err
			}
			if s = l.lookup(id); s != nil {
				s.onLaneHeader(&l.fl, l, id, md)
			}
		case lane.TypeRedirect:
			call := new(lane.Call)
			target, err := lane.ParseRedirect(body, call)
			if err != nil {
				return err
			}
			// The body's storage serves the next frame.
			call.Msg = bytes.Clone(call.Msg)
			l.p.mu.Lock()
			s = l.calls[id]
			delete(l.calls, id)
			l.p.mu.Unlock()
			if s != nil {
				s.onLaneRedirect(&l.fl, l, id, target, call)
			}
		default:
			return fmt.Errorf("%w: frame type %d from the plugin", lane.ErrMalformed, typ)
		}
	}
}

func (l *laneConn) lookup(id uint32) *stream {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	return l.calls[id]
}

// attachLane opens s on the lane l. The request goes once the client has
// sent all of it.
func (s *stream) attachLane(fl *flushList, l *laneConn, release func()) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return errFinished
	}
	p := l.p
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return errRetry
	}
	id := l.nextID
	l.nextID++
	l.calls[id] = s
	p.mu.Unlock()
	s.ln, s.lid, s.release = l, id, release
	s.upEndSent, s.replied = false, false
	s.downRecv, s.downPending = lane.InitialCredit, 0
	s.drainLaneLocked(fl)
	return nil
}

// drainLaneLocked gives the client its window back for every request byte
// received (the router takes unary requests whole) and sends the call once
// the client ended its side.
func (s *stream) drainLaneLocked(fl *flushList) {
	if s.finished {
		return
	}
	if got := s.upBase + int64(len(s.up)); got > s.upCredited {
		s.creditClientLocked(fl, got-s.upCredited)
		s.upCredited = got
	}
	if !s.upEnd || s.upEndSent {
		return
	}
	call := lane.Call{Method: s.path, MD: s.laneMD, Msg: s.up}
	if code, msg := checkLaneRequest(&call, &s.upScan); code != codes.OK {
		s.failLocked(fl, code, msg)
		return
	}
	if rd := s.redirect; rd != nil {
		call.Method, call.MD, call.Msg = rd.Method, rd.MD, rd.Msg
	}
	if !s.deadline.IsZero() {
		if call.Timeout = time.Until(s.deadline); call.Timeout <= 0 {
			s.failLocked(fl, codes.DeadlineExceeded, "context deadline exceeded")
			return
		}
	}
	s.upEndSent, s.sentAny = true, true
	if s.inProc != nil {
		s.runLocked(&call)
		return
	}
	p := s.ln.p
	p.mu.Lock()
	if p.err == nil {
		p.out = lane.AppendCall(p.out, s.lid, &call)
		p.dirty = true
	}
	p.mu.Unlock()
	fl.add(p)
}

// checkLaneRequest checks that a call fits a lane frame and carries the one
// uncompressed message a lane call has, as the plugin will, so that a bad
// request fails alone instead of ending the lane it shares with other calls.
// The codes are those grpc-go's server gives.
func checkLaneRequest(c *lane.Call, scan *msgScanner) (codes.Code, string) {
	switch {
	case scan.msgs != 1 || !scan.boundary():
		return codes.Internal, fmt.Sprintf(
			"grpc: a call of %s takes one request message, the client sent %d and %d bytes more",
			c.Method, scan.msgs, scan.hn)
	case c.Msg[0] != 0:
		return codes.Internal, "grpc: compressed flag set with identity or empty encoding"
	}
	if n := lane.CallFrameLen(c); n > lane.MaxFrame {
		return codes.ResourceExhausted, fmt.Sprintf("call of %d bytes is larger than a plugin takes (%d)", n, lane.MaxFrame)
	}
	return codes.OK, ""
}

// attachLocal starts a call to one of the supervisor's own services, run in
// process once the client sent all of it.
func (s *stream) attachLocal(fl *flushList) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inProc = s.c.r.opts.LocalLane
	s.release = func() {}
	s.drainLaneLocked(fl)
}

// runLocked runs the call on a goroutine of its own, which may block (a
// plugin restart, say), and forwards its reply. Ending the call cancels it.
func (s *stream) runLocked(call *lane.Call) {
	ctx, cancel := context.WithCancel(s.c.r.ctx)
	s.cancel = cancel
	go func() {
		rep := s.inProc.Dispatch(ctx, call)
		var fl flushList
		s.onLaneReply(&fl, nil, 0, rep)
		fl.flush()
	}()
}

// cancelLaneLocked tells the plugin that a call it was sent is over.
func (s *stream) cancelLaneLocked(fl *flushList) {
	if s.ln == nil || !s.upEndSent || s.replied {
		return
	}
	p := s.ln.p
	p.mu.Lock()
	if p.err == nil {
		p.out = lane.AppendCancel(p.out, s.lid)
		p.dirty = true
	}
	p.mu.Unlock()
	fl.add(p)
}

// onLaneReply forwards the plugin's answer to the client: headers, the
// message and the status, or a trailers-only response.
func (s *stream) onLaneReply(fl *flushList, l *laneConn, id uint32, rep *lane.Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished || s.ln != l || s.lid != id {
		return
	}
	s.respHeaders, s.replied = true, true
	if rep.Msg != nil && !s.checkSendLocked(fl, rep.Msg) {
		return
	}
	switch {
	case s.headersSent:
		s.trailers = laneStatus(nil, rep)
	case rep.Msg != nil || len(rep.Header) > 0:
		s.sendLaneHeadersLocked(fl, rep.Header)
		s.trailers = laneStatus(nil, rep)
	default:
		s.trailers = laneStatus(responseStart(), rep)
	}
	s.downEnd = true
	s.drainDownLocked(fl, rep.Msg)
}

// onLaneRedirect hands the call over to the plugin target, as the plugin on
// l asked before it answered: the call goes there in the redirect's shape,
// and what that plugin answers goes to the client. A call is handed over
// once at most, so that plugins cannot pass it around for ever.
func (s *stream) onLaneRedirect(fl *flushList, l *laneConn, id uint32, target string, call *lane.Call) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished || s.ln != l || s.lid != id {
		return
	}
	s.replied = true // the plugin's call is over: nothing to cancel there
	switch {
	case s.respHeaders:
		s.failLocked(fl, codes.Internal, "plugin handed over a call it had answered")
		return
	case s.redirect != nil:
		s.failLocked(fl, codes.Internal, fmt.Sprintf("plugin %s handed over a call handed over to it", s.target))
		return
	}
	s.detachLocked(fl)
	s.target, s.redirect = target, call
	s.upEndSent = false
	go s.open(false)
}

// onLaneHeader forwards the header metadata a streaming handler sent.
func (s *stream) onLaneHeader(fl *flushList, l *laneConn, id uint32, md []lane.Field) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished || s.ln != l || s.lid != id || s.headersSent {
		return
	}
	s.respHeaders = true
	s.sendLaneHeadersLocked(fl, md)
}

// onLaneMsg forwards one message of a server stream, as far as the client's
// windows allow; the rest waits, and the plugin gets credit back as it
// leaves. A plugin that sends past its credit breaks the protocol.
func (s *stream) onLaneMsg(fl *flushList, l *laneConn, id uint32, msg []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished || s.ln != l || s.lid != id {
		return
	}
	s.respHeaders = true
	if s.downRecv <= 0 {
		s.failLocked(fl, codes.Internal, "plugin sent past its flow-control credit")
		return
	}
	s.downRecv -= int64(len(msg))
	if !s.checkSendLocked(fl, msg) {
		return
	}
	if !s.headersSent {
		s.sendLaneHeadersLocked(fl, nil)
	}
	s.drainDownLocked(fl, msg)
}

// checkSendLocked fails the call if msg is over the client's limit.
func (s *stream) checkSendLocked(fl *flushList, msg []byte) bool {
	n := s.downScan.feed(msg, s.c.r.opts.MaxSendMsgSize)
	if n < 0 {
		return true
	}
	s.failLocked(fl, codes.ResourceExhausted, fmt.Sprintf(
		"grpc: trying to send message larger than max (%d vs. %d)", n, s.c.r.opts.MaxSendMsgSize))
	return false
}

// sendLaneHeadersLocked writes the response headers with the plugin's
// header metadata.
func (s *stream) sendLaneHeadersLocked(fl *flushList, md []lane.Field) {
	fields := plainStart
	if len(md) > 0 {
		fields = appendLaneMD(responseStart(), md)
	}
	s.writeClientHeadersLocked(fl, fields, false)
	s.headersSent = true
}

// creditLaneLocked gives a streaming call's plugin n bytes of credit back,
// in grants of at least a quarter of the initial credit.
func (s *stream) creditLaneLocked(fl *flushList, n int64) {
	s.downPending += n
	if s.downPending < lane.InitialCredit/4 {
		return
	}
	grant := uint32(min(s.downPending, 1<<31))
	s.downPending -= int64(grant)
	s.downRecv += int64(grant)
	p := s.ln.p
	p.mu.Lock()
	if p.err == nil {
		p.out = lane.AppendCredit(p.out, s.lid, grant)
		p.dirty = true
	}
	p.mu.Unlock()
	fl.add(p)
}

// responseStart returns the fields every response begins with.
func responseStart() []hpack.HeaderField {
	return []hpack.HeaderField{
		{Name: ":status", Value: "200"},
		{Name: "content-type", Value: "application/grpc"},
	}
}

// Blocks most replies end with, shared: the peer's writer only reads them.
var (
	plainStart = responseStart()
	okTrailer  = []hpack.HeaderField{{Name: "grpc-status", Value: "0"}}
)

// laneStatus appends a reply's status and trailer metadata to fields.
func laneStatus(fields []hpack.HeaderField, rep *lane.Reply) []hpack.HeaderField {
	if fields == nil && rep.Code == 0 && rep.Message == "" && rep.Details == nil && len(rep.Trailer) == 0 {
		return okTrailer
	}
	fields = append(fields, hpack.HeaderField{Name: "grpc-status", Value: strconv.FormatUint(uint64(rep.Code), 10)})
	if rep.Message != "" {
		fields = append(fields, hpack.HeaderField{Name: "grpc-message", Value: encodeGRPCMessage(rep.Message)})
	}
	if rep.Details != nil {
		fields = append(fields, hpack.HeaderField{
			Name: "grpc-status-details-bin", Value: base64.RawStdEncoding.EncodeToString(rep.Details),
		})
	}
	return appendLaneMD(fields, rep.Trailer)
}

// appendLaneMD appends a plugin's metadata to fields, base64-encoding binary
// values and leaving out names that belong to the protocol.
func appendLaneMD(fields []hpack.HeaderField, md []lane.Field) []hpack.HeaderField {
	for _, f := range md {
		if f.Name == "" || reservedField(f.Name) || f.Name == pluginkit.HandledKey ||
			strings.ToLower(f.Name) != f.Name {
			continue
		}
		v := f.Value
		if strings.HasSuffix(f.Name, "-bin") {
			v = base64.RawStdEncoding.EncodeToString([]byte(v))
		}
		fields = append(fields, hpack.HeaderField{Name: f.Name, Value: v})
	}
	return fields
}

// reservedField reports whether a header name is gRPC's or HTTP's own, and
// so never call metadata.
func reservedField(name string) bool {
	if strings.HasPrefix(name, ":") || connectionHeaders[name] {
		return true
	}
	switch name {
	case "content-type", "content-length", "te", "grpc-timeout", "grpc-encoding",
		"grpc-accept-encoding", "grpc-status", "grpc-message", "grpc-status-details-bin":
		return true
	}
	return false
}

// laneMetadata returns a request's metadata as a lane carries it, with
// binary values decoded; false when one does not decode, or the request is
// compressed, which leaves the call to HTTP/2.
func laneMetadata(fields []hpack.HeaderField) ([]lane.Field, bool) {
	md := make([]lane.Field, 0, len(fields))
	for _, f := range fields {
		if f.Name == "grpc-encoding" && f.Value != "identity" {
			return nil, false
		}
		if reservedField(f.Name) {
			continue
		}
		if len(f.Name) > math.MaxUint16 || len(md) == math.MaxUint16 {
			// More than a lane frame's metadata holds: HTTP/2 takes it.
			return nil, false
		}
		v := f.Value
		if strings.HasSuffix(f.Name, "-bin") {
			enc := base64.StdEncoding
			if len(v)%4 != 0 {
				enc = base64.RawStdEncoding
			}
			b, err := enc.DecodeString(v)
			if err != nil {
				return nil, false
			}
			v = string(b)
		}
		md = append(md, lane.Field{Name: f.Name, Value: v})
	}
	return md, true
}
