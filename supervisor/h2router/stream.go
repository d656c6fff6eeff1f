package h2router

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"corral.dev/pluginkit"
	"corral.dev/pluginkit/lane"
)

// stream is one call: a client stream and, once the backend is known, the
// backend stream it is forwarded on. Bytes travel through two queues, up
// (client to backend) and down (backend to client); each side's stream
// window is credited only as its bytes leave the other side, so the router
// holds at most one stream window of a call in each direction.
type stream struct {
	c           *clientConn
	cid         uint32
	path        string
	service     string
	target      string
	fields      []hpack.HeaderField // request headers toward the backend
	start       time.Time
	deadline    time.Time // from grpc-timeout; zero when the call has none
	replayUntil time.Time
	ctx         context.Context
	cancel      context.CancelFunc

	mu      sync.Mutex
	b       *backendConn
	bid     uint32
	release func()
	sentAny bool // bytes of this call reached some backend

	// A unary or server-streaming call goes on the plugin's lane when it
	// has one (see lane.go) instead of an HTTP/2 stream; then b is nil.
	lane    bool         // the call may take a lane
	laneMD  []lane.Field // its metadata as the lane carries it
	ln      *laneConn
	lid     uint32
	replied bool // the plugin's reply on the lane came: nothing to cancel
	// redirect is the call a plugin handed this one over as, to the plugin
	// target names; nil until then.
	redirect *lane.Call
	inProc   *lane.Server // set when the call runs in the supervisor

	// Client to backend.
	up          []byte
	upOff       int   // bytes of up sent to the current backend stream
	upBase      int64 // call offset of up[0]
	upCredited  int64 // call offset up to which the client got its window back
	upPending   int64 // stream credit owed to the client
	upRecv      int64 // what the client may still send on this stream
	upWin       int64 // what the backend lets us send on this stream
	upEnd       bool  // the client ended its side
	upEndSent   bool  // and the backend was told
	upTrailers  []hpack.HeaderField
	upScan      msgScanner
	upTotal     int64 // bytes of request received
	contentLen  int64 // the request's content-length, -1 when it has none
	replayable  bool  // up holds the whole request, for a replay
	blockedUp   bool  // waiting in the backend peer's blocked list
	blockedDown bool  // waiting in the client peer's blocked list
	stalledUp   bool  // waiting in the backend peer's stalled list
	stalledDown bool  // waiting in the client peer's stalled list

	// Backend to client.
	respHeaders bool // the backend answered
	headersSent bool // response headers went to the client
	down        []byte
	downOff     int
	downPending int64 // stream credit owed to the backend
	downRecv    int64 // what the backend may still send on this stream
	downWin     int64 // what the client lets us send on this stream
	downEnd     bool  // the backend ended the response
	endSent     bool  // a DATA frame ended the client's stream
	trailers    []hpack.HeaderField
	downScan    msgScanner // over bytes received, for the size limit
	sentScan    msgScanner // over bytes sent, for message boundaries
	code        codes.Code
	finished    bool
}

// replayLimit is the most request bytes kept to replay a call.
const replayLimit = 256 << 10

// onClientData queues a DATA frame from the client and forwards what the
// backend's windows allow. flowLen counts padding, data does not.
func (s *stream) onClientData(fl *flushList, data []byte, flowLen int64, end bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.upEnd {
		s.c.p.credit(fl, flowLen)
		return http2.StreamError{StreamID: s.cid, Code: http2.ErrCodeStreamClosed}
	}
	if flowLen > s.upRecv {
		s.c.p.credit(fl, flowLen)
		return http2.StreamError{StreamID: s.cid, Code: http2.ErrCodeFlowControl}
	}
	s.upRecv -= flowLen
	s.creditClientLocked(fl, flowLen-int64(len(data)))
	s.upTotal += int64(len(data))
	if s.contentLen >= 0 && (s.upTotal > s.contentLen || end && s.upTotal != s.contentLen) {
		s.c.p.credit(fl, int64(len(data)))
		return http2.StreamError{StreamID: s.cid, Code: http2.ErrCodeProtocol}
	}
	if s.finished {
		s.c.p.credit(fl, int64(len(data)))
		return nil
	}
	if n := s.upScan.feed(data, s.c.r.opts.MaxRecvMsgSize); n >= 0 {
		s.c.p.credit(fl, int64(len(data)))
		s.failLocked(fl, codes.ResourceExhausted, fmt.Sprintf(
			"grpc: received message larger than max (%d vs. %d)", n, s.c.r.opts.MaxRecvMsgSize))
		return nil
	}
	if s.lane && s.upScan.msgs > 1 {
		// A method that takes one request: the router would hold what
		// follows without bound, as it takes such requests whole.
		s.c.p.credit(fl, int64(len(data)))
		s.failLocked(fl, codes.Internal, fmt.Sprintf(
			"grpc: a call of %s takes one request message, the client sent more", s.path))
		return nil
	}
	if s.replayable && !s.lane && len(s.up)+len(data) > replayLimit {
		s.stopRetainingLocked()
	}
	s.upEnd = end
	if !s.replayable && s.b != nil && len(s.up) == 0 {
		s.forwardUpLocked(fl, data)
		return nil
	}
	s.up = append(s.up, data...)
	s.drainUpLocked(fl)
	return nil
}

// forwardUpLocked sends data, a frame's payload that the reader reuses once
// the frame is handled, straight from there as far as the windows allow,
// and queues only the rest: a call that keeps no copy for a replay and has
// nothing queued saves copying its bytes in between.
func (s *stream) forwardUpLocked(fl *flushList, data []byte) {
	owned := s.up
	s.up, s.upOff = data, 0
	s.drainUpLocked(fl)
	if s.upOff == len(s.up) {
		// Sent whole: drainUpLocked counted it and emptied s.up.
		s.up, s.upOff = owned[:0], 0
		return
	}
	s.upBase += int64(s.upOff)
	s.up, s.upOff = append(owned[:0], s.up[s.upOff:]...), 0
}

// onClientTrailers queues the client's trailing HEADERS, which end its side.
func (s *stream) onClientTrailers(fl *flushList, fields []hpack.HeaderField) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.upTrailers = fields
	s.upEnd = true
	s.drainUpLocked(fl)
}

// stopRetainingLocked gives up the replay copy of the request.
func (s *stream) stopRetainingLocked() {
	s.replayable = false
	n := copy(s.up, s.up[s.upOff:])
	s.upBase += int64(s.upOff)
	s.up = s.up[:n]
	s.upOff = 0
}

// drainUpLocked sends queued request bytes as far as the backend's windows
// allow, and gives the client back the window of what left.
func (s *stream) drainUpLocked(fl *flushList) {
	if s.ln != nil || s.inProc != nil {
		s.drainLaneLocked(fl)
		return
	}
	if s.b == nil || s.finished {
		return
	}
	p := s.b.p
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return
	}
	for s.upOff < len(s.up) {
		n := min(int64(len(s.up)-s.upOff), s.upWin, p.sendWin, int64(p.maxFrame))
		if p.fullLocked() {
			if !s.stalledUp {
				s.stalledUp = true
				p.stalled = append(p.stalled, s)
			}
			break
		}
		if n <= 0 {
			if p.sendWin <= 0 && !s.blockedUp {
				s.blockedUp = true
				p.blocked = append(p.blocked, s)
			}
			break
		}
		end := s.upEnd && s.upTrailers == nil && s.upOff+int(n) == len(s.up)
		_ = p.fr.WriteData(s.bid, end, s.up[s.upOff:s.upOff+int(n)])
		s.upOff += int(n)
		s.upWin -= n
		p.sendWin -= n
		s.upEndSent = s.upEndSent || end
		s.sentAny = true
	}
	if s.upOff == len(s.up) && s.upEnd && !s.upEndSent {
		if s.upTrailers != nil {
			_ = p.writeHeadersLocked(s.bid, s.upTrailers, true)
		} else {
			_ = p.fr.WriteData(s.bid, true, nil)
		}
		s.upEndSent = true
	}
	p.dirty = true
	p.mu.Unlock()
	fl.add(p)

	if sent := s.upBase + int64(s.upOff); sent > s.upCredited {
		s.creditClientLocked(fl, sent-s.upCredited)
		s.upCredited = sent
	}
	if !s.replayable && s.upOff == len(s.up) {
		s.upBase += int64(len(s.up))
		s.up, s.upOff = s.up[:0], 0
	}
}

// creditClientLocked gives the client n bytes of window back, on the
// connection and, while it may still send, on the stream.
func (s *stream) creditClientLocked(fl *flushList, n int64) {
	if n <= 0 {
		return
	}
	s.c.p.credit(fl, n)
	if s.upEnd || s.finished {
		return
	}
	s.upPending += n
	if s.upPending >= clientStreamWindow/4 {
		s.c.p.writeWindowUpdate(fl, s.cid, s.upPending)
		s.upRecv += s.upPending
		s.upPending = 0
	}
}

// onBackendHeaders forwards the backend's response headers or trailers.
func (s *stream) onBackendHeaders(fl *flushList, fields []hpack.HeaderField, end bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return
	}
	fields = cleanResponse(fields)
	if !s.respHeaders {
		s.respHeaders = true
		if s.replayable {
			s.stopRetainingLocked()
			s.drainUpLocked(fl)
		}
		if !end {
			s.writeClientHeadersLocked(fl, fields, false)
			s.headersSent = true
			return
		}
	}
	if end {
		s.downEnd = true
		s.trailers = fields
		s.drainDownLocked(fl, nil)
	}
}

// writeClientHeadersLocked writes a HEADERS block to the client.
func (s *stream) writeClientHeadersLocked(fl *flushList, fields []hpack.HeaderField, end bool) {
	p := s.c.p
	p.mu.Lock()
	if p.err == nil {
		_ = p.writeHeadersLocked(s.cid, fields, end)
	}
	p.mu.Unlock()
	fl.add(p)
}

// onBackendData queues a DATA frame from the backend and forwards what the
// client's windows allow.
func (s *stream) onBackendData(fl *flushList, data []byte, flowLen int64, end bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished || s.b == nil {
		return nil
	}
	if flowLen > s.downRecv {
		return http2.StreamError{StreamID: s.bid, Code: http2.ErrCodeFlowControl}
	}
	s.downRecv -= flowLen
	s.creditBackendLocked(fl, flowLen-int64(len(data)))
	if n := s.downScan.feed(data, s.c.r.opts.MaxSendMsgSize); n >= 0 {
		s.failLocked(fl, codes.ResourceExhausted, fmt.Sprintf(
			"grpc: trying to send message larger than max (%d vs. %d)", n, s.c.r.opts.MaxSendMsgSize))
		return nil
	}
	s.downEnd = s.downEnd || end
	s.drainDownLocked(fl, data)
	return nil
}

// drainDownLocked sends queued response bytes, then those of extra, as far
// as the client's windows allow, queues the rest of extra, sends the
// trailers once nothing is left, and gives the backend back its window.
func (s *stream) drainDownLocked(fl *flushList, extra []byte) {
	if s.finished {
		return
	}
	p := s.c.p
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return
	}
	sent := s.writeDownLocked(p, s.down[s.downOff:], len(extra) == 0)
	s.downOff += sent
	if s.downOff == len(s.down) && len(extra) > 0 {
		n := s.writeDownLocked(p, extra, true)
		sent += n
		extra = extra[n:]
	}
	if len(extra) > 0 {
		// What the client has taken goes, so that the queue holds only
		// what waits, however long the stream.
		if s.downOff > 0 {
			s.down = s.down[:copy(s.down, s.down[s.downOff:])]
			s.downOff = 0
		}
		s.down = append(s.down, extra...)
	}
	done := false
	if s.downOff == len(s.down) && s.downEnd {
		switch {
		case s.trailers != nil:
			_ = p.writeHeadersLocked(s.cid, s.trailers, true)
		case !s.headersSent:
			_ = p.writeHeadersLocked(s.cid, trailersOnly(codes.Internal, "plugin sent no status"), true)
		case !s.endSent:
			_ = p.fr.WriteData(s.cid, true, nil)
		}
		done = true
	}
	p.dirty = true
	p.mu.Unlock()
	fl.add(p)

	s.creditBackendLocked(fl, int64(sent))
	if s.downOff == len(s.down) {
		s.down, s.downOff = s.down[:0], 0
	}
	if done {
		s.code = codes.Unknown
		if c, ok := grpcStatus(s.trailers); ok {
			s.code = c
		}
		s.completeLocked(fl)
	}
}

// writeDownLocked writes a prefix of data to the client as DATA frames, as
// far as the windows allow, and returns its length. The last frame ends the
// stream when last is set and the backend ended it without trailers. The
// caller holds the client peer's mutex.
func (s *stream) writeDownLocked(p *peer, data []byte, last bool) int {
	sent := 0
	for sent < len(data) {
		n := int(min(int64(len(data)-sent), s.downWin, p.sendWin, int64(p.maxFrame)))
		if p.fullLocked() {
			if !s.stalledDown {
				s.stalledDown = true
				p.stalled = append(p.stalled, s)
			}
			break
		}
		if n <= 0 {
			if p.sendWin <= 0 && !s.blockedDown {
				s.blockedDown = true
				p.blocked = append(p.blocked, s)
			}
			break
		}
		chunk := data[sent : sent+n]
		end := last && s.downEnd && s.trailers == nil && sent+n == len(data)
		_ = p.fr.WriteData(s.cid, end, chunk)
		s.endSent = s.endSent || end
		s.sentScan.feed(chunk, 0)
		s.downWin -= int64(n)
		p.sendWin -= int64(n)
		sent += n
	}
	return sent
}

// creditBackendLocked gives the backend n bytes of stream window back. The
// backend's connection window is credited as bytes arrive (see
// backendConn.onData).
func (s *stream) creditBackendLocked(fl *flushList, n int64) {
	if n <= 0 || s.downEnd {
		return
	}
	if s.ln != nil {
		s.creditLaneLocked(fl, n)
		return
	}
	if s.b == nil {
		return
	}
	s.downPending += n
	if s.downPending >= backendStreamWindow/4 {
		s.b.p.writeWindowUpdate(fl, s.bid, s.downPending)
		s.downRecv += s.downPending
		s.downPending = 0
	}
}

// completeLocked ends a call whose response reached the client in full. A
// client still sending is told to stop; a backend still receiving likewise.
func (s *stream) completeLocked(fl *flushList) {
	if !s.upEnd {
		s.c.p.writeRST(fl, s.cid, http2.ErrCodeNo)
	}
	if s.b != nil && !s.upEndSent {
		s.b.p.writeRST(fl, s.bid, http2.ErrCodeCancel)
	}
	s.finishLocked(fl)
}

// failLocked ends the call with a status of the router's own, cancelling
// the backend's stream.
func (s *stream) failLocked(fl *flushList, code codes.Code, msg string) {
	if s.finished {
		return
	}
	reset := false
	switch {
	case !s.headersSent:
		s.writeClientHeadersLocked(fl, trailersOnly(code, msg), true)
	case s.sentScan.boundary():
		s.writeClientHeadersLocked(fl, statusTrailer(code, msg), true)
	default:
		// Part of a message reached the client: no status can follow it.
		s.c.p.writeRST(fl, s.cid, resetCode(code))
		reset = true
	}
	s.code = code
	if !s.upEnd && !reset {
		s.c.p.writeRST(fl, s.cid, http2.ErrCodeNo)
	}
	if s.b != nil {
		s.b.p.writeRST(fl, s.bid, http2.ErrCodeCancel)
	}
	s.cancelLaneLocked(fl)
	s.finishLocked(fl)
}

// resetCode returns the RST_STREAM code that gRPC clients read as code,
// or as Internal when HTTP/2 has none for it. Only Unavailable maps to
// REFUSED_STREAM, which grpc-go may retry transparently when no message
// has arrived yet: a plugin lost mid-message may be asked again, a
// misbehaving one is not.
func resetCode(code codes.Code) http2.ErrCode {
	switch code {
	case codes.Unavailable:
		return http2.ErrCodeRefusedStream
	case codes.Canceled:
		return http2.ErrCodeCancel
	case codes.ResourceExhausted:
		return http2.ErrCodeEnhanceYourCalm
	case codes.PermissionDenied:
		return http2.ErrCodeInadequateSecurity
	}
	return http2.ErrCodeInternal
}

// fail is failLocked for callers that do not hold s.mu.
func (s *stream) fail(fl *flushList, code codes.Code, msg string) {
	s.mu.Lock()
	s.failLocked(fl, code, msg)
	s.mu.Unlock()
}

// onClientReset ends the call because the client reset it or went away.
func (s *stream) onClientReset(fl *flushList, code http2.ErrCode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return
	}
	if s.b != nil {
		s.b.p.writeRST(fl, s.bid, code)
	}
	s.cancelLaneLocked(fl)
	s.code = codes.Canceled
	s.upEnd = true
	s.finishLocked(fl)
}

// onBackendReset handles RST_STREAM from the backend: a refused call is
// replayed when it can be, anything else goes on to the client.
func (s *stream) onBackendReset(fl *flushList, code http2.ErrCode) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return
	}
	if code == http2.ErrCodeRefusedStream && s.replayLocked(fl) {
		return
	}
	if code == http2.ErrCodeNo && s.downEnd {
		return
	}
	s.c.p.writeRST(fl, s.cid, code)
	s.code = codes.Internal
	switch code {
	case http2.ErrCodeCancel:
		s.code = codes.Canceled
	case http2.ErrCodeRefusedStream:
		s.code = codes.Unavailable
	}
	s.upEnd = true
	s.finishLocked(fl)
}

// onBackendLost handles the loss of the backend connection the call was on.
func (s *stream) onBackendLost(fl *flushList, cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished || s.replayLocked(fl) {
		return
	}
	s.b, s.ln = nil, nil
	s.failLocked(fl, codes.Unavailable, fmt.Sprintf("plugin connection lost: %v", cause))
}

// replayLocked sends the call again, to the plugin's next process, if the
// plugin never answered it and the router still holds the whole request.
func (s *stream) replayLocked(fl *flushList) bool {
	if !s.replayable || s.respHeaders || time.Now().After(s.replayUntil) {
		return false
	}
	s.detachLocked(fl)
	s.upOff = 0
	s.upEndSent = false
	s.downRecv = 0
	s.c.r.opts.Log.Debug().Str("method", s.path).Msg("plugin connection failed, replaying call")
	go s.open(true)
	return true
}

// detachLocked drops the call's backend stream and lease.
func (s *stream) detachLocked(fl *flushList) {
	if s.b != nil {
		p := s.b.p
		p.mu.Lock()
		s.b.removeLocked(s.bid)
		p.mu.Unlock()
	}
	if s.ln != nil {
		p := s.ln.p
		p.mu.Lock()
		delete(s.ln.calls, s.lid)
		p.mu.Unlock()
	}
	if s.release != nil {
		s.release()
	}
	s.b, s.bid, s.release = nil, 0, nil
	s.ln, s.lid = nil, 0
	s.blockedUp = false
}

// finishLocked forgets the call on both connections, returns every window
// its queues held, releases the plugin and records the call's outcome.
func (s *stream) finishLocked(fl *flushList) {
	if s.finished {
		return
	}
	s.finished = true
	if s.cancel != nil {
		s.cancel()
	}
	c := s.c
	c.p.mu.Lock()
	delete(c.streams, s.cid)
	c.p.mu.Unlock()
	if queued := s.upBase + int64(len(s.up)) - s.upCredited; queued > 0 {
		c.p.credit(fl, queued)
	}
	s.detachLocked(fl)
	s.up, s.down = nil, nil
	if obs := c.r.opts.Observe; obs != nil {
		obs(s.path, s.start, statusErr(s.code))
	}
}

// requestFields returns the headers that open the call on a backend. A
// replay carries what remains of the client's deadline.
func (s *stream) requestFields(replay bool) []hpack.HeaderField {
	if !replay || s.deadline.IsZero() {
		return s.fields
	}
	out := make([]hpack.HeaderField, 0, len(s.fields)+1)
	for _, f := range s.fields {
		if f.Name != "grpc-timeout" {
			out = append(out, f)
		}
	}
	return append(out, hpack.HeaderField{Name: "grpc-timeout", Value: formatTimeout(time.Until(s.deadline))})
}

// cleanResponse drops the router's own keys from a response block.
func cleanResponse(fields []hpack.HeaderField) []hpack.HeaderField {
	for i, f := range fields {
		if f.Name == pluginkit.HandledKey {
			out := append(fields[:i:i], fields[i+1:]...)
			return cleanResponse(out)
		}
	}
	return fields
}
