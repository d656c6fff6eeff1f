package h2router

import (
	"bytes"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	"corral.dev/pluginkit/testkit"
)

// frameWriter builds client byte sequences for the fuzz seeds.
type frameWriter struct {
	buf  bytes.Buffer
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

func newFrameWriter(preface bool) *frameWriter {
	w := &frameWriter{}
	w.buf.WriteByte(0)
	if preface {
		w.buf.Bytes()[0] = 1
	}
	w.fr = http2.NewFramer(&w.buf, nil)
	w.fr.AllowIllegalWrites = true
	w.enc = hpack.NewEncoder(&w.hbuf)
	return w
}

func (w *frameWriter) headers(id uint32, path string, end bool) *frameWriter {
	w.hbuf.Reset()
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: path}, {Name: ":authority", Value: "x"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	} {
		_ = w.enc.WriteField(f)
	}
	_ = w.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: w.hbuf.Bytes(), EndHeaders: true, EndStream: end,
	})
	return w
}

func (w *frameWriter) message(id uint32, m proto.Message, end bool) *frameWriter {
	b, _ := proto.Marshal(m)
	msg := append([]byte{0, 0, 0, 0, byte(len(b))}, b...)
	_ = w.fr.WriteData(id, end, msg)
	return w
}

func (w *frameWriter) do(fn func(fr *http2.Framer)) *frameWriter {
	fn(w.fr)
	return w
}

func (w *frameWriter) bytes() []byte { return w.buf.Bytes() }

func fuzzSeeds() [][]byte {
	get := "/" + nsService + "/Get"
	read := "/" + contentService + "/Read"
	req := &namespacesapi.GetNamespaceRequest{Name: "a"}
	settings := func(fr *http2.Framer) { _ = fr.WriteSettings() }
	return [][]byte{
		// A well-formed call.
		newFrameWriter(true).do(settings).headers(1, get, false).message(1, req, true).bytes(),
		// A bad preface.
		append([]byte{0}, "GET / HTTP/1.1\r\n\r\n"...),
		// No SETTINGS first.
		newFrameWriter(true).headers(1, get, true).bytes(),
		// An oversized frame.
		newFrameWriter(true).do(settings).do(func(fr *http2.Framer) {
			_ = fr.WriteRawFrame(http2.FrameData, 0, 1, make([]byte, 20000))
		}).bytes(),
		// Invalid HPACK.
		newFrameWriter(true).do(settings).do(func(fr *http2.Framer) {
			_ = fr.WriteHeaders(http2.HeadersFrameParam{
				StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff}, EndHeaders: true,
			})
		}).bytes(),
		// Connection and stream window overflow.
		newFrameWriter(true).do(settings).headers(1, read, false).do(func(fr *http2.Framer) {
			_ = fr.WriteWindowUpdate(0, 1<<31-1)
			_ = fr.WriteWindowUpdate(1, 1<<31-1)
		}).bytes(),
		// A reused and a decreasing stream id.
		newFrameWriter(true).do(settings).headers(3, get, true).headers(3, get, true).
			headers(1, get, true).bytes(),
		// A storm of resets, some on idle streams.
		newFrameWriter(true).do(settings).headers(1, get, false).do(func(fr *http2.Framer) {
			for id := uint32(1); id < 200; id += 2 {
				_ = fr.WriteRSTStream(id, http2.ErrCodeCancel)
			}
		}).bytes(),
		// Data beyond the window, data on an idle stream, CONTINUATION
		// without HEADERS, a PUSH_PROMISE, pings and bad settings.
		newFrameWriter(true).do(settings).headers(1, read, false).do(func(fr *http2.Framer) {
			for range 80 {
				_ = fr.WriteData(1, false, make([]byte, 16384))
			}
			_ = fr.WriteData(9, false, []byte("x"))
			_ = fr.WriteContinuation(1, true, []byte{0x82})
			_ = fr.WritePing(false, [8]byte{1})
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
			_ = fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
		}).bytes(),
		// A call that reads a lot with a tiny window, then goes silent.
		newFrameWriter(true).do(func(fr *http2.Framer) {
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
		}).headers(1, read, false).bytes(),
	}
}

// FuzzClientFrames feeds frame sequences to the client side of a router
// whose backends are real gRPC servers: it must neither panic nor leave
// goroutines behind once the connection is gone.
func FuzzClientFrames(f *testing.F) { fuzzClientFrames(f) }

// FuzzClientFramesOverLanes is FuzzClientFrames with backends that serve
// lanes, where the router takes unary and server-streaming requests whole.
func FuzzClientFramesOverLanes(f *testing.F) {
	withLanes = true
	f.Cleanup(func() { withLanes = false })
	fuzzClientFrames(f)
}

func fuzzClientFrames(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	b := startBackend(f, &fakeNamespaces{}, &fakeContent{})
	r, conn := startRouter(f, newFakeBackends(b, b), Options{})
	// Connect the router to the plugin first: that connection stays.
	_, err := namespacesapi.NewNamespacesClient(conn).Get(nsCtx(), &namespacesapi.GetNamespaceRequest{Name: "a"})
	if err != nil {
		f.Fatal(err)
	}
	// The count is taken in the first run: the fuzzing engine starts
	// goroutines of its own before it.
	var baseline int
	var once sync.Once

	f.Fuzz(func(t *testing.T, data []byte) {
		once.Do(func() { baseline = settledGoroutines() })
		if len(data) == 0 {
			return
		}
		ours, theirs := socketPair(t)
		r.ServeConn(theirs)
		go io.Copy(io.Discard, ours)
		if data[0]&1 == 1 {
			_, _ = ours.Write([]byte(http2.ClientPreface))
		}
		_ = ours.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, _ = ours.Write(data[1:])
		time.Sleep(time.Millisecond)
		ours.Close()

		testkit.WaitFor(t, "the router to drop the connection", func() bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return len(r.conns) == 1
		})
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > baseline+2 {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), baseline,
					buf[:runtime.Stack(buf, true)])
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// settledGoroutines returns the goroutine count once it stops changing.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for range 50 {
		time.Sleep(10 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			break
		}
		n = m
	}
	return n
}

// socketPair returns the two ends of a connected unix socket pair.
func socketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := fileConn(fds[0], "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := fileConn(fds[1], "b")
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// fileConn wraps a socket descriptor in a net.Conn, closing the descriptor
// either way.
func fileConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return net.FileConn(f)
}
