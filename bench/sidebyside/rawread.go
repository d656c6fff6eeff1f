package sidebyside

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Flow-control windows the bare reader grants: the stream's at once, the
// connection's as it consumes.
const (
	rawStreamWindow = 1 << 30
	rawConnWindow   = 16 << 20
)

// rawRead reads the blob of digest in one Content.Read call over a bare
// HTTP/2 connection to the socket at address, in namespace ns, and returns
// the data bytes that came. It frames the request itself, grants flow
// control as data arrives, and decodes no more of each message than its
// data field, so that what it measures is how fast the daemon streams: a
// grpc-go client's receive path costs about 1.4 ms of CPU per MiB on its
// own, which on two CPUs caps what any daemon can be seen to do. Frames are
// the 16 KiB a gRPC client accepts.
func rawRead(ctx context.Context, address, ns, digest string) (int64, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", address)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	w := bufio.NewWriter(nc)
	fr := http2.NewFramer(w, bufio.NewReaderSize(nc, 256<<10))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := writeReadRequest(w, fr, ns, digest); err != nil {
		return 0, err
	}

	var (
		msg     rawMessages
		owed    uint32 // connection window consumed and not yet granted back
		grpcErr error
	)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return msg.data, fmt.Errorf("read frame: %w", err)
		}
		switch f := f.(type) {
		case *http2.DataFrame:
			if err := msg.feed(f.Data()); err != nil {
				return msg.data, err
			}
			if owed += f.Length; owed >= rawConnWindow/4 {
				if err := fr.WriteWindowUpdate(0, owed); err != nil {
					return msg.data, err
				}
				owed = 0
				if err := w.Flush(); err != nil {
					return msg.data, err
				}
			}
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				if grpcErr = trailerStatus(f); grpcErr == nil && !msg.whole() {
					grpcErr = errors.New("the stream ended inside a message")
				}
				return msg.data, grpcErr
			}
			if st := f.PseudoValue("status"); st != "200" {
				return msg.data, fmt.Errorf("HTTP status %s", st)
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := fr.WriteSettingsAck(); err != nil {
					return msg.data, err
				}
				if err := w.Flush(); err != nil {
					return msg.data, err
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				if err := fr.WritePing(true, f.Data); err != nil {
					return msg.data, err
				}
				if err := w.Flush(); err != nil {
					return msg.data, err
				}
			}
		case *http2.RSTStreamFrame:
			return msg.data, fmt.Errorf("stream reset: %v", f.ErrCode)
		case *http2.GoAwayFrame:
			return msg.data, fmt.Errorf("connection going away: %v", f.ErrCode)
		}
	}
}

// writeReadRequest writes the connection preface, the settings, and the
// Read call of digest on stream 1.
func writeReadRequest(w *bufio.Writer, fr *http2.Framer, ns, digest string) error {
	if _, err := io.WriteString(w, http2.ClientPreface); err != nil {
		return err
	}
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: rawStreamWindow}); err != nil {
		return err
	}
	if err := fr.WriteWindowUpdate(0, rawConnWindow-65535); err != nil {
		return err
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":authority", "localhost"},
		{":path", "/containerd.services.content.v1.Content/Read"},
		{"content-type", "application/grpc"}, {"te", "trailers"},
		{"containerd-namespace", ns},
	} {
		if err := enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]}); err != nil {
			return err
		}
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
		return err
	}
	req, err := proto.Marshal(&contentapi.ReadContentRequest{Digest: digest})
	if err != nil {
		return err
	}
	body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(req)))
	if err := fr.WriteData(1, true, append(body, req...)); err != nil {
		return err
	}
	return w.Flush()
}

// trailerStatus returns the call's error from its trailers, nil for OK.
func trailerStatus(f *http2.MetaHeadersFrame) error {
	for _, hf := range f.Fields {
		if hf.Name == "grpc-status" {
			if hf.Value == "0" {
				return nil
			}
			return fmt.Errorf("grpc-status %s: %s", hf.Value, headerValue(f, "grpc-message"))
		}
	}
	return errors.New("trailers without grpc-status")
}

func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// rawMessages splits the gRPC messages of a response out of its DATA
// frames and counts the bytes of their data fields.
type rawMessages struct {
	prefix [5]byte
	have   int    // bytes of prefix held
	buf    []byte // the message being assembled
	want   int    // its length
	data   int64  // data bytes of the messages decoded
}

func (m *rawMessages) feed(b []byte) error {
	for len(b) > 0 {
		if m.have < len(m.prefix) {
			n := copy(m.prefix[m.have:], b)
			m.have += n
			b = b[n:]
			if m.have < len(m.prefix) {
				return nil
			}
			if m.prefix[0] != 0 {
				return errors.New("compressed message")
			}
			m.want = int(binary.BigEndian.Uint32(m.prefix[1:]))
			m.buf = m.buf[:0]
		}
		n := min(len(b), m.want-len(m.buf))
		m.buf = append(m.buf, b[:n]...)
		b = b[n:]
		if len(m.buf) == m.want {
			if err := m.decode(); err != nil {
				return err
			}
			m.have = 0
		}
	}
	return nil
}

// decode counts the data field of the assembled ReadContentResponse.
func (m *rawMessages) decode() error {
	b := m.buf
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if num == 2 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			m.data += int64(len(v))
			b = b[n:]
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
	}
	return nil
}

// whole reports whether no message is cut short.
func (m *rawMessages) whole() bool { return m.have == 0 }
