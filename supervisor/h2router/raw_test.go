package h2router

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
)

// rawOutcome is what a raw client saw: the grpc-status of stream 1 and the
// code of a GOAWAY, if any.
type rawOutcome struct {
	status string
	goAway string
}

// rawExchange writes data to a fresh router connection and reads frames
// until the connection ends or a second passes.
func rawExchange(t *testing.T, r *Router, data []byte) rawOutcome {
	t.Helper()
	ours, theirs := socketPair(t)
	defer ours.Close()
	r.ServeConn(theirs)
	go func() {
		if data[0]&1 == 1 {
			_, _ = ours.Write([]byte(http2.ClientPreface))
		}
		_, _ = ours.Write(data[1:])
	}()
	_ = ours.SetReadDeadline(time.Now().Add(time.Second))
	fr := http2.NewFramer(nil, ours)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var out rawOutcome
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return out
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			for _, hf := range f.Fields {
				if hf.Name == "grpc-status" && f.StreamID == 1 {
					out.status = hf.Value
				}
			}
		case *http2.GoAwayFrame:
			out.goAway = f.ErrCode.String()
		}
	}
}

func TestRawSequences(t *testing.T) {
	b := startBackend(t, &fakeNamespaces{}, &fakeContent{})
	r, _ := startRouter(t, newFakeBackends(b, b), Options{})
	seeds := fuzzSeeds()
	for _, tc := range []struct {
		name string
		seed int
		want rawOutcome
	}{
		{"well formed", 0, rawOutcome{status: "0"}},
		{"no settings first", 2, rawOutcome{goAway: "PROTOCOL_ERROR"}},
		{"oversized frame", 3, rawOutcome{goAway: "FRAME_SIZE_ERROR"}},
		{"invalid hpack", 4, rawOutcome{goAway: "COMPRESSION_ERROR"}},
		{"window overflow", 5, rawOutcome{goAway: "FLOW_CONTROL_ERROR"}},
		{"reused stream id", 6, rawOutcome{goAway: "PROTOCOL_ERROR"}},
		// Stream 1 is reset, then DATA on idle stream 9 ends the connection.
		{"data beyond the window", 8, rawOutcome{goAway: "PROTOCOL_ERROR"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := rawExchange(t, r, seeds[tc.seed])
			if tc.want.status == "" {
				got.status = "" // whatever the plugin made of the bytes
			}
			if got != tc.want {
				t.Errorf("outcome = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestH2Spec runs h2spec (path in $H2SPEC) against the router and against
// a plain grpc-go server, both on test-only TCP listeners, and logs both
// reports for comparison.
func TestH2Spec(t *testing.T) {
	bin := os.Getenv("H2SPEC")
	if bin == "" {
		t.Skip("set H2SPEC to the h2spec binary")
	}
	b := startBackend(t, &fakeNamespaces{}, &fakeContent{})
	r, _ := startRouter(t, newFakeBackends(b, b), Options{})
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go r.Serve(rl)

	plain := grpc.NewServer()
	namespacesapi.RegisterNamespacesServer(plain, &fakeNamespaces{})
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go plain.Serve(pl)
	t.Cleanup(plain.Stop)

	for name, l := range map[string]net.Listener{"h2router": rl, "grpc-go": pl} {
		port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
		out, err := exec.Command(bin, "-h", "127.0.0.1", "-p", port, "-o", "2").CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		t.Logf("h2spec against %s:\n%s", name, out)
	}
}

// TestClientThatNeverReads grants the router huge windows for an endless
// Read and never reads its socket: the plugin connection it shares with
// other clients keeps serving them, and the router's buffers stay bounded.
func TestClientThatNeverReads(t *testing.T) {
	cs := &fakeContent{}
	b := startBackend(t, &fakeNamespaces{}, cs)
	r, conn := startRouter(t, newFakeBackends(b, b), Options{})

	w := newFrameWriter(true).do(func(fr *http2.Framer) {
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: maxWindow})
		_ = fr.WriteWindowUpdate(0, maxWindow-65535)
	}).headers(1, "/"+contentService+"/Read", false).
		message(1, &contentapi.ReadContentRequest{Size: -1, Offset: 64 << 10}, true)
	ours, theirs := socketPair(t)
	defer ours.Close()
	r.ServeConn(theirs)
	if _, err := ours.Write(append([]byte(http2.ClientPreface), w.bytes()[1:]...)); err != nil {
		t.Fatal(err)
	}

	var before int64
	waitFor(t, "the plugin to stall", func() bool {
		time.Sleep(200 * time.Millisecond)
		now := cs.sent.Load()
		stalled := now == before && now > 0
		before = now
		return stalled
	})
	client := namespacesapi.NewNamespacesClient(conn)
	for range 20 {
		ctx, cancel := context.WithTimeout(nsCtx(), 2*time.Second)
		_, err := client.Get(ctx, &namespacesapi.GetNamespaceRequest{Name: "a"})
		cancel()
		if err != nil {
			t.Fatalf("call beside a client that never reads = %v", err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.p.mu.Lock()
		n := c.p.pendingLocked()
		c.p.mu.Unlock()
		if n > maxOut+64<<10 {
			t.Errorf("router buffers %d bytes for a client, want at most %d", n, maxOut+64<<10)
		}
	}
}

// TestPingFloodWithoutReading sends pings and never reads the answers: the
// router drops the connection once the answers pile up, instead of growing.
func TestPingFloodWithoutReading(t *testing.T) {
	b := startBackend(t, &fakeNamespaces{}, &fakeContent{})
	r, _ := startRouter(t, newFakeBackends(b, b), Options{})
	ours, theirs := socketPair(t)
	defer ours.Close()
	r.ServeConn(theirs)

	w := newFrameWriter(true).do(func(fr *http2.Framer) {
		_ = fr.WriteSettings()
		for range 1 << 14 {
			_ = fr.WritePing(false, [8]byte{})
		}
	})
	first := append([]byte(http2.ClientPreface), w.bytes()[1:]...)
	burst := first[len(first)-(1<<14)*17:]
	if _, err := ours.Write(first); err != nil {
		t.Fatal(err)
	}
	sent := len(first)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if sent > 4*hardMaxOut {
			break
		}
		sent += len(burst)
		_ = ours.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := ours.Write(burst); err != nil {
			return // the router hung up
		}
	}
	t.Fatal("router kept taking pings it could not answer")
}
