package lane_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	cpb "github.com/containerd/containerd/api/services/content/v1"
	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"

	"corral.dev/pluginkit/lane"
)

// readHead encodes a ReadContentResponse up to n bytes of data.
func readHead(offset int64, n int) []byte {
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(offset))
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

// tempFile writes data to a new file and opens it.
func tempFile(t *testing.T, data []byte) *os.File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestSendFile: messages whose data comes from a file arrive whole and in
// order with the header frame, messages sent as usual, the reply, and
// frames of other calls; they take credit as any message does.
func TestSendFile(t *testing.T) {
	data := make([]byte, 3<<20+12345)
	rand.Read(data)
	f := tempFile(t, data)
	// Chunk sizes cross the initial credit and include small ones.
	sizes := []int{1 << 20, 7, 1 << 20, 64 << 10, len(data) - 2<<20 - 7 - 64<<10}
	read := func(req *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
		srv.SetHeader(metadata.Pairs("x-sent", "file"))
		var off int64
		for i, n := range sizes {
			if i == 1 {
				// One message the usual way, between file messages.
				if err := srv.Send(&cpb.ReadContentResponse{Offset: off, Data: data[off : off+int64(n)]}); err != nil {
					return err
				}
			} else if sent, err := lane.SendFile(srv.Context(), readHead(off, n), f, off, n); !sent || err != nil {
				return fmt.Errorf("SendFile at %d: sent %v, %v", off, sent, err)
			}
			off += int64(n)
		}
		return nil
	}
	_, sock := startContent(t, lane.ServerOptions{}, read)
	c := dial(t, sock)

	const streams = 4
	var wg sync.WaitGroup
	wg.Go(func() {
		for id := uint32(1); id <= streams; id++ {
			c.read(id, 0, "file")
			c.call(100+id, getMethod, 0, nil, &api.GetNamespaceRequest{Name: fmt.Sprint(id)})
		}
	})
	got := c.collect(streams, 100)
	wg.Wait()
	for id := uint32(1); id <= streams; id++ {
		s := got[id]
		checkStatus(t, s.reply, codes.OK, "")
		if len(s.headers) != 1 || len(s.headers[0]) != 1 || s.headers[0][0] != (lane.Field{Name: "x-sent", Value: "file"}) {
			t.Errorf("call %d: header frames %v, want one with x-sent", id, s.headers)
		}
		if s.types[0] != lane.TypeHeader {
			t.Errorf("call %d: frame type %d came first, want the header", id, s.types[0])
		}
		var joined []byte
		for i, m := range s.msgs {
			if m.GetOffset() != int64(len(joined)) {
				t.Errorf("call %d: message %d at offset %d, want %d", id, i, m.GetOffset(), len(joined))
			}
			joined = append(joined, m.GetData()...)
		}
		if len(s.msgs) != len(sizes) || !bytes.Equal(joined, data) {
			t.Errorf("call %d: %d messages, %d bytes; want %d messages with the file's %d bytes",
				id, len(s.msgs), len(joined), len(sizes), len(data))
		}
	}
}

// TestSendFileWaitsForCredit: a file message past the call's credit waits
// for a grant, and frames of other calls pass meanwhile.
func TestSendFileWaitsForCredit(t *testing.T) {
	data := make([]byte, 2<<20)
	f := tempFile(t, data)
	read := func(req *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
		for off := int64(0); off < int64(len(data)); off += 512 << 10 {
			if _, err := lane.SendFile(srv.Context(), readHead(off, 512<<10), f, off, 512<<10); err != nil {
				return err
			}
		}
		return nil
	}
	_, sock := startContent(t, lane.ServerOptions{}, read)
	c := dial(t, sock)
	c.read(1, 0, "file")
	s := new(streamed)
	c.take(1, s, creditSpent)
	c.probe()
	c.write(lane.AppendCredit(nil, 1, lane.InitialCredit))
	c.take(1, s, replied)
	checkStatus(t, s.reply, codes.OK, "")
	if len(s.msgs) != 4 {
		t.Errorf("%d messages, want 4", len(s.msgs))
	}
}

// TestSendFileShortFile: a file that ends before the bytes its message
// announced ends the connection, whose frame could not be completed.
func TestSendFileShortFile(t *testing.T) {
	f := tempFile(t, []byte("only eleven"))
	read := func(req *cpb.ReadContentRequest, srv cpb.Content_ReadServer) error {
		_, err := lane.SendFile(srv.Context(), readHead(0, 100), f, 0, 100)
		return err
	}
	_, sock := startContent(t, lane.ServerOptions{}, read)
	c := dial(t, sock)
	c.read(1, 0, "short")
	c.expectClosed()
}

// TestSendFileOffLane: off a lane, SendFile sends nothing and says so.
func TestSendFileOffLane(t *testing.T) {
	f := tempFile(t, []byte("data"))
	if sent, err := lane.SendFile(context.Background(), readHead(0, 4), f, 0, 4); sent || err != nil {
		t.Errorf("SendFile off a lane = %v, %v; want false, nil", sent, err)
	}
}
