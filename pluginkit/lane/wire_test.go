package lane_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"corral.dev/pluginkit/lane"
)

// allBytes is a "-bin" value holding every byte value.
var allBytes = func() string {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return string(b)
}()

// equateEmpty compares byte and metadata slices by content, nil equal to
// empty; cmp's own walk through a 4 MiB message takes seconds.
var equateEmpty = cmp.Options{
	cmp.Comparer(bytes.Equal),
	cmp.Comparer(slices.Equal[[]lane.Field]),
}

func testCalls() map[string]*lane.Call {
	return map[string]*lane.Call{
		"minimal": {Method: "/s/M", Msg: lane.AppendMsg(nil, nil)},
		"empty metadata": {
			Method: "/containerd.services.namespaces.v1.Namespaces/Get",
			MD:     []lane.Field{},
			Msg:    lane.AppendMsg(nil, []byte("req")),
		},
		"repeated metadata and timeout": {
			Method:  "/s/M",
			Timeout: 1500 * time.Millisecond,
			MD: []lane.Field{
				{Name: "k", Value: "a"},
				{Name: "k", Value: "b"},
				{Name: "empty", Value: ""},
				{Name: "trace-bin", Value: allBytes},
			},
			Msg: lane.AppendMsg(nil, []byte{0, 1, 2}),
		},
		"large message": {
			Method: "/s/M",
			Msg:    lane.AppendMsg(nil, bytes.Repeat([]byte("x"), 4<<20)),
		},
	}
}

func testReplies() map[string]*lane.Reply {
	return map[string]*lane.Reply{
		"empty message": {Msg: lane.AppendMsg(nil, nil)},
		"message and metadata": {
			Header:  []lane.Field{{Name: "h", Value: "1"}, {Name: "h", Value: "2"}},
			Trailer: []lane.Field{{Name: "corral-handled", Value: "1"}, {Name: "t-bin", Value: allBytes}},
			Msg:     lane.AppendMsg(nil, []byte("resp")),
		},
		"error": {Code: 5, Message: "namespace x: not found"},
		"error with details": {
			Code:    9,
			Message: "failed precondition",
			Details: []byte{0x08, 0x09, 0x12, 0x01, 'x'},
			Trailer: []lane.Field{{Name: "t", Value: ""}},
		},
		"large message": {Msg: lane.AppendMsg(nil, bytes.Repeat([]byte("y"), 4<<20))},
	}
}

// readOne reads the single frame in b and checks that nothing follows.
func readOne(t *testing.T, b []byte) (byte, uint32, []byte) {
	t.Helper()
	r := lane.NewReader(bytes.NewReader(b))
	typ, id, body, err := r.Next()
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if _, _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("Next after the frame = %v, want io.EOF", err)
	}
	return typ, id, body
}

func TestCallRoundTrip(t *testing.T) {
	for name, want := range testCalls() {
		t.Run(name, func(t *testing.T) {
			typ, id, body := readOne(t, lane.AppendCall(nil, 42, want))
			if typ != lane.TypeCall || id != 42 {
				t.Fatalf("frame = type %d id %d, want type %d id 42", typ, id, lane.TypeCall)
			}
			var got lane.Call
			if err := lane.ParseCall(body, &got); err != nil {
				t.Fatalf("ParseCall: %v", err)
			}
			if diff := cmp.Diff(want, &got, equateEmpty); diff != "" {
				t.Errorf("call (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReplyRoundTrip(t *testing.T) {
	for name, want := range testReplies() {
		t.Run(name, func(t *testing.T) {
			typ, id, body := readOne(t, lane.AppendReply(nil, 1<<31, want))
			if typ != lane.TypeReply || id != 1<<31 {
				t.Fatalf("frame = type %d id %d, want type %d id %d", typ, id, lane.TypeReply, 1<<31)
			}
			var got lane.Reply
			if err := lane.ParseReply(body, &got); err != nil {
				t.Fatalf("ParseReply: %v", err)
			}
			if diff := cmp.Diff(want, &got, equateEmpty); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
			if (want.Msg == nil) != (got.Msg == nil) {
				t.Errorf("reply message nil = %v, want %v", got.Msg == nil, want.Msg == nil)
			}
		})
	}
}

func TestCancelRoundTrip(t *testing.T) {
	typ, id, body := readOne(t, lane.AppendCancel(nil, 7))
	if typ != lane.TypeCancel || id != 7 || len(body) != 0 {
		t.Errorf("frame = type %d id %d body %q, want type %d id 7 and no body", typ, id, body, lane.TypeCancel)
	}
}

func TestStreamFramesRoundTrip(t *testing.T) {
	msg := lane.AppendMsg(nil, []byte("resp"))
	typ, id, body := readOne(t, lane.AppendMsgFrame(nil, 3, msg))
	got, err := lane.ParseMsg(body)
	if typ != lane.TypeMsg || id != 3 || err != nil || !bytes.Equal(got, msg) {
		t.Errorf("message frame = type %d id %d %x, %v; want type %d id 3 %x",
			typ, id, got, err, lane.TypeMsg, msg)
	}

	const most = 1<<32 - 1
	typ, id, body = readOne(t, lane.AppendCredit(nil, 4, most))
	n, err := lane.ParseCredit(body)
	if typ != lane.TypeCredit || id != 4 || err != nil || n != most {
		t.Errorf("credit frame = type %d id %d %d, %v; want type %d id 4 %d",
			typ, id, n, err, lane.TypeCredit, most)
	}

	call := testCalls()["minimal"]
	typ, id, body = readOne(t, lane.AppendRedirect(nil, 6, "content", call))
	var rc lane.Call
	target, err := lane.ParseRedirect(body, &rc)
	if typ != lane.TypeRedirect || id != 6 || err != nil || target != "content" {
		t.Fatalf("redirect frame = type %d id %d to %q, %v; want type %d id 6 to content",
			typ, id, target, err, lane.TypeRedirect)
	}
	if diff := cmp.Diff(*call, rc, equateEmpty); diff != "" {
		t.Errorf("redirected call (-want +got):\n%s", diff)
	}
	if _, err := lane.ParseRedirect(lane.AppendRedirect(nil, 6, "", call)[lane.HeaderLen:], &rc); !errors.Is(err, lane.ErrMalformed) {
		t.Errorf("redirect without a target: %v, want ErrMalformed", err)
	}

	headers := [][]lane.Field{nil, {{Name: "h", Value: "1"}, {Name: "h-bin", Value: allBytes}}}
	for _, want := range headers {
		typ, id, body = readOne(t, lane.AppendHeader(nil, 5, want))
		got, err := lane.ParseHeader(body)
		if typ != lane.TypeHeader || id != 5 || err != nil {
			t.Fatalf("header frame = type %d id %d, %v; want type %d id 5",
				typ, id, err, lane.TypeHeader)
		}
		if diff := cmp.Diff(want, got, equateEmpty); diff != "" {
			t.Errorf("header (-want +got):\n%s", diff)
		}
	}
}

// TestCallFrameLen: CallFrameLen is the length field AppendCall writes.
func TestCallFrameLen(t *testing.T) {
	for name, c := range testCalls() {
		frame := lane.AppendCall(nil, 1, c)
		if got, want := lane.CallFrameLen(c), int(binary.BigEndian.Uint32(frame)); got != want {
			t.Errorf("%s: CallFrameLen = %d, the frame says %d", name, got, want)
		}
	}
}

// TestFramesInOneStream: frames appended to one buffer read back in order.
func TestFramesInOneStream(t *testing.T) {
	var b []byte
	b = lane.AppendCall(b, 1, testCalls()["minimal"])
	b = lane.AppendCancel(b, 1)
	b = lane.AppendReply(b, 2, testReplies()["error"])
	r := lane.NewReader(bytes.NewReader(b))
	for _, want := range []struct {
		typ byte
		id  uint32
	}{{lane.TypeCall, 1}, {lane.TypeCancel, 1}, {lane.TypeReply, 2}} {
		typ, id, _, err := r.Next()
		if err != nil || typ != want.typ || id != want.id {
			t.Fatalf("Next = type %d id %d, %v; want type %d id %d", typ, id, err, want.typ, want.id)
		}
	}
	if _, _, _, err := r.Next(); err != io.EOF {
		t.Errorf("Next at the end = %v, want io.EOF", err)
	}
}

// TestNextShared: NextShared reads the frames Next reads, into storage it
// reuses for a frame that fits and does not keep for a huge one.
func TestNextShared(t *testing.T) {
	big := lane.AppendMsg(nil, bytes.Repeat([]byte{7}, 3<<20))
	msgs := [][]byte{
		lane.AppendMsg(nil, bytes.Repeat([]byte{1}, 40<<10)),
		lane.AppendMsg(nil, []byte("small")),
		big,
		lane.AppendMsg(nil, bytes.Repeat([]byte{2}, 30<<10)),
	}
	var b []byte
	for i, m := range msgs {
		b = lane.AppendMsgFrame(b, uint32(i), m)
	}
	r := lane.NewReader(bytes.NewReader(b))
	var first []byte
	for i, want := range msgs {
		typ, id, body, err := r.NextShared()
		if err != nil || typ != lane.TypeMsg || id != uint32(i) {
			t.Fatalf("NextShared = type %d id %d, %v; want a message frame of id %d", typ, id, err, i)
		}
		got, err := lane.ParseMsg(body)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("frame %d: ParseMsg = %d bytes, %v; want the %d bytes sent", i, len(got), err, len(want))
		}
		switch i {
		case 0:
			first = body
		case 1, 3:
			if &body[0] != &first[0] {
				t.Errorf("frame %d did not reuse the storage of frame 0", i)
			}
		case 2:
			if &body[0] == &first[0] {
				t.Errorf("a %d-byte frame went into the %d-byte storage", len(body), cap(first))
			}
		}
	}
	if _, _, _, err := r.NextShared(); err != io.EOF {
		t.Errorf("NextShared at the end = %v, want io.EOF", err)
	}
}

// TestTruncatedBodies: every strict prefix of a valid body is malformed.
func TestTruncatedBodies(t *testing.T) {
	type body struct {
		b     []byte
		parse func([]byte) error
	}
	bodies := make(map[string]body)
	for name, c := range testCalls() {
		bodies["call/"+name] = body{lane.AppendCall(nil, 1, c)[lane.HeaderLen:], func(b []byte) error {
			return lane.ParseCall(b, new(lane.Call))
		}}
	}
	for name, c := range testCalls() {
		bodies["redirect/"+name] = body{lane.AppendRedirect(nil, 1, "content", c)[lane.HeaderLen:], func(b []byte) error {
			_, err := lane.ParseRedirect(b, new(lane.Call))
			return err
		}}
	}
	for name, r := range testReplies() {
		bodies["reply/"+name] = body{lane.AppendReply(nil, 1, r)[lane.HeaderLen:], func(b []byte) error {
			return lane.ParseReply(b, new(lane.Reply))
		}}
	}
	for name, tc := range bodies {
		if strings.HasSuffix(name, "/large message") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			for i := range len(tc.b) {
				if err := tc.parse(tc.b[:i]); !errors.Is(err, lane.ErrMalformed) {
					t.Fatalf("parse of %d of %d bytes = %v, want ErrMalformed", i, len(tc.b), err)
				}
			}
		})
	}
}

func TestMalformed(t *testing.T) {
	call := lane.AppendCall(nil, 1, testCalls()["minimal"])[lane.HeaderLen:]
	reply := lane.AppendReply(nil, 1, testReplies()["error"])[lane.HeaderLen:]
	for _, tc := range []struct {
		name  string
		parse func() error
	}{
		{"call with bytes after its message", func() error {
			return lane.ParseCall(append(bytes.Clone(call), 0), new(lane.Call))
		}},
		{"call with a compressed message", func() error {
			c := testCalls()["minimal"]
			c.Msg[0] = 1
			return lane.ParseCall(lane.AppendCall(nil, 1, c)[lane.HeaderLen:], new(lane.Call))
		}},
		{"call with a negative timeout", func() error {
			c := testCalls()["minimal"]
			c.Timeout = -1
			return lane.ParseCall(lane.AppendCall(nil, 1, c)[lane.HeaderLen:], new(lane.Call))
		}},
		{"reply with bytes after no message", func() error {
			return lane.ParseReply(append(bytes.Clone(reply), 0), new(lane.Reply))
		}},
		{"reply with a bad message flag", func() error {
			b := bytes.Clone(reply)
			b[len(b)-1] = 2
			return lane.ParseReply(b, new(lane.Reply))
		}},
		{"message frame with a bad prefix", func() error {
			_, err := lane.ParseMsg([]byte{0, 0, 0, 0, 2, 'x'})
			return err
		}},
		{"empty message frame", func() error {
			_, err := lane.ParseMsg(nil)
			return err
		}},
		{"credit of 3 bytes", func() error {
			_, err := lane.ParseCredit([]byte{0, 0, 1})
			return err
		}},
		{"credit of 5 bytes", func() error {
			_, err := lane.ParseCredit([]byte{0, 0, 0, 0, 1})
			return err
		}},
		{"header with bytes after its metadata", func() error {
			_, err := lane.ParseHeader(append(lane.AppendHeader(nil, 1, nil)[lane.HeaderLen:], 0))
			return err
		}},
		{"truncated header", func() error {
			b := lane.AppendHeader(nil, 1, []lane.Field{{Name: "h", Value: "1"}})[lane.HeaderLen:]
			_, err := lane.ParseHeader(b[:len(b)-1])
			return err
		}},
		{"message prefix longer than the message", func() error {
			_, err := lane.MsgPayload([]byte{0, 0, 0, 0, 2, 'x'})
			return err
		}},
	} {
		if err := tc.parse(); !errors.Is(err, lane.ErrMalformed) {
			t.Errorf("%s: error = %v, want ErrMalformed", tc.name, err)
		}
	}
}

func TestReaderErrors(t *testing.T) {
	frame := lane.AppendCall(nil, 1, testCalls()["minimal"])
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, io.EOF},
		{"short header", frame[:4], io.ErrUnexpectedEOF},
		{"short body", frame[:len(frame)-1], io.ErrUnexpectedEOF},
		{"length below the header", []byte{0, 0, 0, 4, 1, 0, 0, 0, 1}, lane.ErrMalformed},
		{"length above MaxFrame", []byte{0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 1}, lane.ErrMalformed},
	} {
		_, _, _, err := lane.NewReader(bytes.NewReader(tc.in)).Next()
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Next = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, c := range testCalls() {
		if len(c.Msg) < 1<<10 {
			f.Add(lane.AppendCall(nil, 0, c)[lane.HeaderLen:])
		}
	}
	for _, r := range testReplies() {
		if len(r.Msg) < 1<<10 {
			f.Add(lane.AppendReply(nil, 0, r)[lane.HeaderLen:])
		}
	}
	f.Add(lane.AppendRedirect(nil, 0, "content", testCalls()["minimal"])[lane.HeaderLen:])
	f.Add([]byte(strings.Repeat("\xff", 32)))
	f.Fuzz(func(t *testing.T, body []byte) {
		type redirect struct {
			Target string
			Call   lane.Call
		}
		checkReencode(t, "redirect", body, func(b []byte, rd *redirect) (err error) {
			rd.Target, err = lane.ParseRedirect(b, &rd.Call)
			return err
		}, func(rd *redirect) []byte {
			return lane.AppendRedirect(nil, 0, rd.Target, &rd.Call)
		})
		checkReencode(t, "call", body, lane.ParseCall, func(c *lane.Call) []byte {
			return lane.AppendCall(nil, 0, c)
		})
		checkReencode(t, "reply", body, lane.ParseReply, func(r *lane.Reply) []byte {
			return lane.AppendReply(nil, 0, r)
		})
		checkReencode(t, "header", body, func(b []byte, md *[]lane.Field) (err error) {
			*md, err = lane.ParseHeader(b)
			return err
		}, func(md *[]lane.Field) []byte {
			return lane.AppendHeader(nil, 0, *md)
		})
		checkReencode(t, "message", body, func(b []byte, msg *[]byte) (err error) {
			*msg, err = lane.ParseMsg(b)
			return err
		}, func(msg *[]byte) []byte {
			return lane.AppendMsgFrame(nil, 0, *msg)
		})
	})
}

// checkReencode parses body; when that succeeds, the value must encode to
// the same body and parse again to the same value.
func checkReencode[T any](
	t *testing.T,
	kind string,
	body []byte,
	parse func([]byte, *T) error,
	encode func(*T) []byte,
) {
	var first T
	if err := parse(body, &first); err != nil {
		if !errors.Is(err, lane.ErrMalformed) {
			t.Fatalf("parse %s: error %v does not wrap ErrMalformed", kind, err)
		}
		return
	}
	again := encode(&first)[lane.HeaderLen:]
	if !bytes.Equal(again, body) {
		t.Fatalf("%s re-encodes as %x, parsed from %x", kind, again, body)
	}
	var second T
	if err := parse(again, &second); err != nil {
		t.Fatalf("re-parse %s: %v", kind, err)
	}
	if diff := cmp.Diff(first, second); diff != "" {
		t.Fatalf("%s after re-encoding (-first +second):\n%s", kind, diff)
	}
}
