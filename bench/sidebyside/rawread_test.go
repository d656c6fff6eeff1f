package sidebyside

import (
	"encoding/binary"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/protobuf/proto"
)

// TestRawMessages: data fields are counted however the messages are split
// across DATA frames, empty messages included.
func TestRawMessages(t *testing.T) {
	var stream []byte
	var want int64
	for i, n := range []int{0, 1, 5, 16 << 10, 100000, 3} {
		b, err := proto.Marshal(&contentapi.ReadContentResponse{Offset: int64(i * 7), Data: make([]byte, n)})
		if err != nil {
			t.Fatal(err)
		}
		stream = binary.BigEndian.AppendUint32(append(stream, 0), uint32(len(b)))
		stream = append(stream, b...)
		want += int64(n)
	}
	for _, split := range []int{1, 2, 5, 7, 16 << 10, len(stream)} {
		var m rawMessages
		for b := stream; len(b) > 0; {
			n := min(split, len(b))
			if err := m.feed(b[:n]); err != nil {
				t.Fatalf("split %d: %v", split, err)
			}
			b = b[n:]
		}
		if m.data != want || !m.whole() {
			t.Errorf("split %d: %d data bytes, whole %v; want %d, true", split, m.data, m.whole(), want)
		}
	}

	var m rawMessages
	if err := m.feed(stream[:len(stream)-1]); err != nil || m.whole() {
		t.Errorf("a message cut short: whole %v, err %v", m.whole(), err)
	}
	if err := new(rawMessages).feed([]byte{1, 0, 0, 0, 0}); err == nil {
		t.Error("a compressed message was taken")
	}
	if err := new(rawMessages).feed([]byte{0, 0, 0, 0, 2, 0x12, 0x05}); err == nil {
		t.Error("a data field running past its message was taken")
	}
}
