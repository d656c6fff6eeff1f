package h2router

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	namespacesapi "github.com/containerd/containerd/api/services/namespaces/v1"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"

	"corral.dev/pluginkit/testkit"
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

// h2specExceptions are the h2spec cases the router fails and a plain
// grpc-go server passes, with the reason each is accepted.
var h2specExceptions = map[string]string{
	// h2spec opens one stream more than SETTINGS_MAX_CONCURRENT_STREAMS
	// allows and expects it refused. The router answers h2spec's requests
	// (no gRPC method) at once, so none stays open and the limit is never
	// reached; a stream beyond it is refused (TestStreamLimit).
	"http2/5.1.2/1": "streams answered at once never reach the limit",
}

// TestH2Spec runs h2spec (path in $H2SPEC; `make deps` installs it) against
// the router and against a plain grpc-go server, both on test-only TCP
// listeners: every case the router fails, the grpc-go server fails too, or
// it is one of h2specExceptions.
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

	// Both at once: h2spec waits out its timeout on every case a server
	// does not answer.
	var router, grpcGo h2specResult
	var routerErr, grpcGoErr error
	var wg sync.WaitGroup
	wg.Go(func() { router, routerErr = runH2Spec(bin, rl.Addr(), t.TempDir()) })
	wg.Go(func() { grpcGo, grpcGoErr = runH2Spec(bin, pl.Addr(), t.TempDir()) })
	wg.Wait()
	if err := errors.Join(routerErr, grpcGoErr); err != nil {
		t.Fatal(err)
	}
	if len(router.passed) < 100 {
		t.Fatalf("h2spec passed %d cases against the router; did it run?", len(router.passed))
	}
	for id, desc := range router.failed {
		if _, ok := grpcGo.failed[id]; ok {
			continue
		}
		if why, ok := h2specExceptions[id]; ok {
			t.Logf("h2spec %s (%s) fails against the router only: %s", id, desc, why)
			continue
		}
		t.Errorf("h2spec %s fails against the router and not against grpc-go: %s", id, desc)
	}
	t.Logf("h2spec: router passed %d, failed %d; grpc-go passed %d, failed %d",
		len(router.passed), len(router.failed), len(grpcGo.passed), len(grpcGo.failed))
}

// h2specResult is what one h2spec run reported, by case id
// ("<package>/<number>", such as "http2/5.1.2/1").
type h2specResult struct {
	passed, failed map[string]string // id to description
}

// runH2Spec runs h2spec against addr and reads its JUnit report, which it
// writes in dir.
func runH2Spec(bin string, addr net.Addr, dir string) (h2specResult, error) {
	report := filepath.Join(dir, "report.xml")
	port := strconv.Itoa(addr.(*net.TCPAddr).Port)
	out, err := exec.Command(bin, "-h", "127.0.0.1", "-p", port, "-o", "2", "-j", report).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return h2specResult{}, fmt.Errorf("h2spec: %w\n%s", err, out)
	}
	data, err := os.ReadFile(report)
	if err != nil {
		return h2specResult{}, fmt.Errorf("h2spec wrote no report: %w\n%s", err, out)
	}
	var doc struct {
		Suites []struct {
			Package string `xml:"package,attr"`
			Cases   []struct {
				Name    string    `xml:"classname,attr"`
				Failure *struct{} `xml:"failure"`
				Error   *struct{} `xml:"error"`
				Skipped *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &doc); err != nil {
		return h2specResult{}, fmt.Errorf("parse h2spec report: %w", err)
	}
	res := h2specResult{passed: map[string]string{}, failed: map[string]string{}}
	for _, suite := range doc.Suites {
		for i, c := range suite.Cases {
			id := fmt.Sprintf("%s/%d", suite.Package, i+1)
			switch {
			case c.Skipped != nil:
			case c.Failure != nil || c.Error != nil:
				res.failed[id] = c.Name
			default:
				res.passed[id] = c.Name
			}
		}
	}
	return res, nil
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
	testkit.WaitFor(t, "the plugin to stall", func() bool {
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

// TestStreamLimit opens as many streams as SETTINGS_MAX_CONCURRENT_STREAMS
// allows, each waiting for its request, and one more: the one more is
// refused, the others are not.
func TestStreamLimit(t *testing.T) {
	b := startBackend(t, &fakeNamespaces{}, &fakeContent{})
	r, _ := startRouter(t, newFakeBackends(b, b), Options{})
	w := newFrameWriter(true).do(func(fr *http2.Framer) { _ = fr.WriteSettings() })
	get := "/" + nsService + "/Get"
	last := uint32(2*maxConcurrentStreams + 1)
	for id := uint32(1); id <= last; id += 2 {
		w.headers(id, get, false)
	}
	ours, theirs := socketPair(t)
	defer ours.Close()
	r.ServeConn(theirs)
	go func() {
		_, _ = ours.Write([]byte(http2.ClientPreface))
		_, _ = ours.Write(w.bytes()[1:])
	}()
	_ = ours.SetReadDeadline(time.Now().Add(10 * time.Second))
	fr := http2.NewFramer(nil, ours)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no RST_STREAM for stream %d: %v", last, err)
		}
		rst, ok := f.(*http2.RSTStreamFrame)
		if !ok {
			continue
		}
		if rst.StreamID != last || rst.ErrCode != http2.ErrCodeRefusedStream {
			t.Fatalf("RST_STREAM %v for stream %d, want REFUSED_STREAM for stream %d only",
				rst.ErrCode, rst.StreamID, last)
		}
		return
	}
}
