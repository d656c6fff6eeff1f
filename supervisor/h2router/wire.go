package h2router

import (
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
)

// msgScanner follows the gRPC length-prefixed message framing of one
// direction of a stream, without copying payloads, to enforce a size limit.
type msgScanner struct {
	hdr    [5]byte
	hn     int    // header bytes seen of the current message
	remain uint32 // payload bytes left in the current message
	msgs   int    // messages whose header was seen
}

// feed consumes data and reports the length of the first message whose
// announced size exceeds limit, or -1.
func (m *msgScanner) feed(data []byte, limit int) int64 {
	for len(data) > 0 {
		if m.remain > 0 {
			n := min(uint32(len(data)), m.remain)
			m.remain -= n
			data = data[n:]
			continue
		}
		n := copy(m.hdr[m.hn:], data)
		m.hn += n
		data = data[n:]
		if m.hn < len(m.hdr) {
			return -1
		}
		m.hn = 0
		m.msgs++
		size := uint32(m.hdr[1])<<24 | uint32(m.hdr[2])<<16 | uint32(m.hdr[3])<<8 | uint32(m.hdr[4])
		if limit > 0 && int64(size) > int64(limit) {
			return int64(size)
		}
		m.remain = size
	}
	return -1
}

// boundary reports whether the scanner stands between two messages.
func (m *msgScanner) boundary() bool {
	return m.hn == 0 && m.remain == 0
}

// trailersOnly returns the fields of a response that carries only a status.
func trailersOnly(code codes.Code, msg string) []hpack.HeaderField {
	return []hpack.HeaderField{
		{Name: ":status", Value: "200"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "grpc-status", Value: strconv.Itoa(int(code))},
		{Name: "grpc-message", Value: encodeGRPCMessage(msg)},
	}
}

// statusTrailer returns the trailer fields that end a response with a status.
func statusTrailer(code codes.Code, msg string) []hpack.HeaderField {
	return []hpack.HeaderField{
		{Name: "grpc-status", Value: strconv.Itoa(int(code))},
		{Name: "grpc-message", Value: encodeGRPCMessage(msg)},
	}
}

// encodeGRPCMessage percent-encodes msg as the grpc-message header wants:
// printable ASCII except '%' goes as is.
func encodeGRPCMessage(msg string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= 0x20 && c <= 0x7e && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
	return b.String()
}

// grpcStatus returns the code in a grpc-status field, and whether there is one.
func grpcStatus(fields []hpack.HeaderField) (codes.Code, bool) {
	for _, f := range fields {
		if f.Name == "grpc-status" {
			n, err := strconv.Atoi(f.Value)
			if err != nil {
				return codes.Unknown, true
			}
			return codes.Code(n), true
		}
	}
	return codes.OK, false
}

// parseTimeout decodes a grpc-timeout value such as "100m".
func parseTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	units := map[byte]time.Duration{
		'H': time.Hour, 'M': time.Minute, 'S': time.Second,
		'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond,
	}
	u, ok := units[v[len(v)-1]]
	if !ok {
		return 0, false
	}
	return time.Duration(n) * u, true
}

// formatTimeout encodes d as a grpc-timeout value in microseconds, or in
// milliseconds when the number would not fit in eight digits.
func formatTimeout(d time.Duration) string {
	d = max(d, time.Microsecond)
	if us := d / time.Microsecond; us < 1e8 {
		return strconv.FormatInt(int64(us), 10) + "u"
	}
	if ms := d / time.Millisecond; ms < 1e8 {
		return strconv.FormatInt(int64(ms), 10) + "m"
	}
	return strconv.FormatInt(int64(min(d/time.Second, 1e8-1)), 10) + "S"
}

// connectionHeaders are the fields HTTP/2 forbids (RFC 9113 8.2.2).
var connectionHeaders = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true,
	"transfer-encoding": true, "upgrade": true,
}

// checkRequest validates a request's fields and returns its :path.
func checkRequest(fields []hpack.HeaderField) (string, bool) {
	var method, scheme, path string
	for _, f := range fields {
		switch {
		case f.Name == ":method":
			method = f.Value
		case f.Name == ":scheme":
			scheme = f.Value
		case f.Name == ":path":
			path = f.Value
		case f.Name == ":authority":
		case strings.HasPrefix(f.Name, ":"):
			return "", false
		case connectionHeaders[f.Name]:
			return "", false
		case f.Name == "te" && f.Value != "trailers":
			return "", false
		}
	}
	if method == "" || scheme == "" || path == "" {
		return "", false
	}
	return path, true
}

// checkTrailers reports whether fields may end a request: no pseudo fields.
func checkTrailers(fields []hpack.HeaderField) bool {
	for _, f := range fields {
		if strings.HasPrefix(f.Name, ":") || connectionHeaders[f.Name] {
			return false
		}
	}
	return true
}

// hasContent reports whether fields announce a non-empty body.
func hasContent(fields []hpack.HeaderField) bool {
	for _, f := range fields {
		if f.Name == "content-length" {
			return f.Value != "0"
		}
	}
	return false
}
