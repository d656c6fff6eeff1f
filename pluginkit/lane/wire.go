// Package lane is the supervisor's fast path to a plugin for unary and
// server-streaming calls.
//
// Every public call reaches a plugin through the supervisor. Over HTTP/2 that
// hop makes the plugin run a whole gRPC server transport per call (a reader,
// a handler and a writer goroutine, HPACK, flow control, BDP pings), which
// costs it more CPU than containerd spends on the entire call. A unary call
// needs none of that: the supervisor already holds the whole request when the
// client ends its stream, and the answer is one message and a status. On a
// lane the supervisor sends the request as one frame and the plugin answers
// with one frame, on a unix socket that carries many calls at once.
//
// A frame is a 9-byte header, then a body:
//
//	u32 length of type, id and body (big-endian, as every integer here)
//	u8  type (TypeCall, TypeCancel, TypeReply, TypeMsg, TypeCredit, TypeHeader,
//	    TypeRedirect)
//	u32 call id, chosen by the supervisor, unique among a connection's open calls
//
// Call body: method (u16 length, bytes), timeout in nanoseconds (i64, 0 for
// none), metadata, message. Reply body: code (u32), status message (u32
// length, bytes), status details (u32 length, bytes: a marshalled
// google.rpc.Status, empty when the status has no details), header metadata,
// trailer metadata, message flag (u8, 1 when a message follows), message.
// Cancel has no body. Metadata is a u16 count of pairs, each a u16-length key
// and a u32-length value; values of "-bin" keys are raw bytes, not base64. A
// message is in gRPC's own length-prefixed form (u8 compressed flag, always 0
// here, u32 length, bytes), so that the supervisor moves it between the
// client's DATA frames and a lane without copying it into a new shape.
//
// A server-streaming call (one request, a stream of answers) starts with the
// same call frame. The plugin then sends its answers as message frames, each
// one length-prefixed message for the call, after a header frame when the
// handler sends header metadata before its first message, and ends the call
// with a reply frame that carries no message. A message frame may go only
// while the call has credit: each call starts with InitialCredit bytes, a
// message costs its length, and the supervisor grants more with credit
// frames (body: u32 bytes) as the client takes the messages, so that a client
// that stops reading holds the plugin back instead of filling the
// supervisor's memory. A message may take the credit below zero; the next
// waits until it is positive again. Header body: metadata. Message body: the
// message.
//
// Instead of answering a server-streaming call, a plugin may hand it over
// before it sent anything for it: a redirect frame names another plugin and
// carries a call body, and the supervisor makes that call to that plugin
// (by its id, as the internal socket addresses plugins) and streams its
// answer to the client as the answer to the first. The first plugin's call
// is over once the redirect is sent. Redirect body: target (u16 length,
// bytes), then a call body. metadata-svc uses it to let content-svc stream
// the bytes of a large read once it has checked that the namespace may read
// the blob, so that they cross the supervisor once instead of twice.
//
// Client-streaming and bidirectional calls, and calls whose client
// compresses its messages, stay on HTTP/2.
package lane

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// Frame types.
const (
	TypeCall   byte = 1
	TypeCancel byte = 2
	TypeReply  byte = 3
	TypeMsg    byte = 4
	TypeCredit byte = 5
	TypeHeader byte = 6
	// TypeRedirect hands a server-streaming call over to another plugin.
	TypeRedirect byte = 7
)

// InitialCredit is the credit each server-streaming call starts with.
const InitialCredit = 1 << 20

// HeaderLen is the length of a frame's header.
const HeaderLen = 9

// MaxFrame bounds a frame's length field: a 16 MiB message with room for
// its metadata. A reader refuses a longer frame and the connection ends.
const MaxFrame = 17 << 20

// Field is one metadata pair.
type Field struct {
	Name, Value string
}

// Call is a call's request.
type Call struct {
	Method  string
	Timeout time.Duration // zero: no deadline
	MD      []Field
	Msg     []byte // length-prefixed, see the package comment
}

// Reply is a call's outcome. A server-streaming call's reply has no
// message: its messages went ahead in message frames.
type Reply struct {
	Code    uint32
	Message string
	Details []byte
	Header  []Field
	Trailer []Field
	Msg     []byte // length-prefixed; nil when the call failed
}

// ErrMalformed is wrapped by every error about a frame's contents.
var ErrMalformed = errors.New("lane: malformed frame")

func appendHeader(b []byte, typ byte, id uint32) ([]byte, int) {
	start := len(b)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = append(b, typ)
	b = binary.BigEndian.AppendUint32(b, id)
	return b, start
}

func finish(b []byte, start int) []byte {
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-4))
	return b
}

func appendMD(b []byte, md []Field) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(md)))
	for _, f := range md {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f.Name)))
		b = append(b, f.Name...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(f.Value)))
		b = append(b, f.Value...)
	}
	return b
}

// CallFrameLen returns the value of the length field of c's call frame,
// which a Reader refuses above MaxFrame.
func CallFrameLen(c *Call) int {
	return HeaderLen - 4 + 2 + len(c.Method) + 8 + mdLen(c.MD) + len(c.Msg)
}

// AppendCall appends a call frame to b. Metadata beyond 65,535 pairs or
// with keys over 65,535 bytes cannot be encoded; callers keep within HTTP/2
// header limits, which are far smaller.
func AppendCall(b []byte, id uint32, c *Call) []byte {
	b, start := appendHeader(b, TypeCall, id)
	return finish(appendCall(b, c), start)
}

func appendCall(b []byte, c *Call) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(c.Method)))
	b = append(b, c.Method...)
	b = binary.BigEndian.AppendUint64(b, uint64(c.Timeout))
	b = appendMD(b, c.MD)
	return append(b, c.Msg...)
}

// AppendRedirect appends a redirect frame to b: the call c, to be made to
// the plugin target instead.
func AppendRedirect(b []byte, id uint32, target string, c *Call) []byte {
	b, start := appendHeader(b, TypeRedirect, id)
	b = binary.BigEndian.AppendUint16(b, uint16(len(target)))
	b = append(b, target...)
	return finish(appendCall(b, c), start)
}

// AppendCancel appends a cancel frame to b.
func AppendCancel(b []byte, id uint32) []byte {
	b, start := appendHeader(b, TypeCancel, id)
	return finish(b, start)
}

// AppendReply appends a reply frame to b.
func AppendReply(b []byte, id uint32, r *Reply) []byte {
	b, start := appendHeader(b, TypeReply, id)
	b = binary.BigEndian.AppendUint32(b, r.Code)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Message)))
	b = append(b, r.Message...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Details)))
	b = append(b, r.Details...)
	b = appendMD(b, r.Header)
	b = appendMD(b, r.Trailer)
	if r.Msg == nil {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		b = append(b, r.Msg...)
	}
	return finish(b, start)
}

// AppendMsgFrame appends a message frame to b; msg is length-prefixed.
func AppendMsgFrame(b []byte, id uint32, msg []byte) []byte {
	b, start := appendHeader(b, TypeMsg, id)
	b = append(b, msg...)
	return finish(b, start)
}

// AppendCredit appends a credit frame granting n bytes to b.
func AppendCredit(b []byte, id uint32, n uint32) []byte {
	b, start := appendHeader(b, TypeCredit, id)
	b = binary.BigEndian.AppendUint32(b, n)
	return finish(b, start)
}

// AppendHeader appends a header frame to b.
func AppendHeader(b []byte, id uint32, md []Field) []byte {
	b, start := appendHeader(b, TypeHeader, id)
	b = appendMD(b, md)
	return finish(b, start)
}

// ParseMsg returns the message of a message frame's body.
func ParseMsg(body []byte) ([]byte, error) {
	p := parser{b: body}
	msg := p.msg()
	return msg, p.err
}

// ParseCredit returns the bytes a credit frame's body grants.
func ParseCredit(body []byte) (uint32, error) {
	if len(body) != 4 {
		return 0, fmt.Errorf("%w: credit body of %d bytes", ErrMalformed, len(body))
	}
	return binary.BigEndian.Uint32(body), nil
}

// ParseHeader returns the metadata of a header frame's body.
func ParseHeader(body []byte) ([]Field, error) {
	p := parser{b: body}
	md := p.md()
	if p.err == nil && len(p.b) != 0 {
		p.err = fmt.Errorf("%w: %d bytes after header metadata", ErrMalformed, len(p.b))
	}
	return md, p.err
}

// AppendMsg appends payload to b in length-prefixed form.
func AppendMsg(b []byte, payload []byte) []byte {
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// MsgPayload returns the payload of a length-prefixed message: exactly one,
// uncompressed.
func MsgPayload(msg []byte) ([]byte, error) {
	if len(msg) < 5 {
		return nil, fmt.Errorf("%w: message of %d bytes has no prefix", ErrMalformed, len(msg))
	}
	if msg[0] != 0 {
		return nil, fmt.Errorf("%w: compressed message", ErrMalformed)
	}
	if n := binary.BigEndian.Uint32(msg[1:]); int64(n) != int64(len(msg)-5) {
		return nil, fmt.Errorf("%w: message prefix says %d bytes, %d follow", ErrMalformed, n, len(msg)-5)
	}
	return msg[5:], nil
}

// Reader reads frames from a connection.
type Reader struct {
	br   *bufio.Reader
	hdr  [HeaderLen]byte
	body []byte // NextShared's storage
}

// NewReader returns a Reader over r.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 64<<10)}
}

// Buffered returns the bytes read from the connection and not yet returned,
// so that a reader can tell whether another frame may follow at once.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// Next returns the next frame. The body is a new slice the caller owns, so
// the fields parsed from it stay valid after the next call.
func (r *Reader) Next() (typ byte, id uint32, body []byte, err error) {
	return r.next(false)
}

// keepBody is the largest body storage NextShared keeps for the next frame.
const keepBody = 2 << 20

// NextShared is Next for a caller that copies what it keeps of a frame: the
// body, and what is parsed from it other than strings, is valid only until
// the next call, since the Reader reuses its storage. That spares a frame
// an allocation, which for a large one is also a zeroing.
func (r *Reader) NextShared() (typ byte, id uint32, body []byte, err error) {
	return r.next(true)
}

func (r *Reader) next(shared bool) (typ byte, id uint32, body []byte, err error) {
	if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
		return 0, 0, nil, err
	}
	n := binary.BigEndian.Uint32(r.hdr[:4])
	if n < HeaderLen-4 || n > MaxFrame {
		return 0, 0, nil, fmt.Errorf("%w: length %d", ErrMalformed, n)
	}
	typ, id = r.hdr[4], binary.BigEndian.Uint32(r.hdr[5:])
	size := int(n - (HeaderLen - 4))
	switch {
	case !shared:
		body = make([]byte, size)
	case size <= cap(r.body):
		body = r.body[:size]
	default:
		body = make([]byte, size)
		if size <= keepBody {
			r.body = body
		}
	}
	if _, err := io.ReadFull(r.br, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, nil, err
	}
	return typ, id, body, nil
}

// parser takes a body apart; the first error sticks.
type parser struct {
	b   []byte
	err error
}

func (p *parser) take(n int) []byte {
	if p.err != nil {
		return nil
	}
	// n comes from a u32 field: on a 32-bit platform it may have wrapped.
	if n < 0 || n > len(p.b) {
		p.err = fmt.Errorf("%w: %d bytes wanted, %d left", ErrMalformed, uint32(n), len(p.b))
		return nil
	}
	out := p.b[:n:n]
	p.b = p.b[n:]
	return out
}

func (p *parser) u16() int {
	b := p.take(2)
	if b == nil {
		return 0
	}
	return int(binary.BigEndian.Uint16(b))
}

func (p *parser) u32() uint32 {
	b := p.take(4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (p *parser) md() []Field {
	n := p.u16()
	if n == 0 || p.err != nil {
		return nil
	}
	md := make([]Field, 0, min(n, len(p.b)/6))
	for i := 0; i < n && p.err == nil; i++ {
		k := p.take(p.u16())
		v := p.take(int(p.u32()))
		md = append(md, Field{Name: string(k), Value: string(v)})
	}
	return md
}

// msg takes the rest of the body as one length-prefixed message.
func (p *parser) msg() []byte {
	if p.err != nil {
		return nil
	}
	msg := p.b
	p.b = nil
	if _, err := MsgPayload(msg); err != nil {
		p.err = err
		return nil
	}
	return msg
}

// ParseCall decodes a call frame's body into c; c's fields point into body.
func ParseCall(body []byte, c *Call) error {
	p := parser{b: body}
	return p.call(c)
}

// ParseRedirect decodes a redirect frame's body: the target plugin and the
// call to make to it; c's fields point into body.
func ParseRedirect(body []byte, c *Call) (target string, err error) {
	p := parser{b: body}
	target = string(p.take(p.u16()))
	if err := p.call(c); err != nil {
		return "", err
	}
	if target == "" {
		return "", fmt.Errorf("%w: redirect without a target", ErrMalformed)
	}
	return target, nil
}

func (p *parser) call(c *Call) error {
	c.Method = string(p.take(p.u16()))
	if t := p.take(8); t != nil {
		c.Timeout = time.Duration(binary.BigEndian.Uint64(t))
	}
	c.MD = p.md()
	c.Msg = p.msg()
	if p.err == nil && c.Timeout < 0 {
		p.err = fmt.Errorf("%w: negative timeout", ErrMalformed)
	}
	return p.err
}

// ParseReply decodes a reply frame's body into r; r's fields point into body.
func ParseReply(body []byte, r *Reply) error {
	p := parser{b: body}
	r.Code = p.u32()
	r.Message = string(p.take(int(p.u32())))
	r.Details = p.take(int(p.u32()))
	r.Header = p.md()
	r.Trailer = p.md()
	r.Msg = nil
	switch flag := p.take(1); {
	case flag == nil:
	case flag[0] == 1:
		r.Msg = p.msg()
	case flag[0] != 0:
		p.err = fmt.Errorf("%w: message flag %d", ErrMalformed, flag[0])
	case len(p.b) != 0:
		p.err = fmt.Errorf("%w: %d bytes after a reply without message", ErrMalformed, len(p.b))
	}
	if p.err == nil && len(r.Details) == 0 {
		r.Details = nil
	}
	return p.err
}
