package service_test

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"corral.dev/pluginkit/testkit"
)

// readLog records the Read calls content-svc serves.
type readLog struct {
	mu    sync.Mutex
	reads []*contentapi.ReadContentRequest
	// before, when set, runs ahead of each Read; an error fails the Read.
	before func(*contentapi.ReadContentRequest) error
}

func (l *readLog) take() []*contentapi.ReadContentRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.reads
	l.reads = nil
	return r
}

// offsets returns the offsets of the reads logged so far.
func (l *readLog) offsets() []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var offs []int64
	for _, r := range l.reads {
		offs = append(offs, r.GetOffset())
	}
	slices.Sort(offs)
	return offs
}

// loggingBlobs is content-svc's service, logging its Read calls.
type loggingBlobs struct {
	contentapi.ContentServer
	log *readLog
}

func (b *loggingBlobs) Read(req *contentapi.ReadContentRequest, ss contentapi.Content_ReadServer) error {
	b.log.mu.Lock()
	b.log.reads = append(b.log.reads, req)
	before := b.log.before
	b.log.mu.Unlock()
	if before != nil {
		if err := before(req); err != nil {
			return err
		}
	}
	return b.ContentServer.Read(req, ss)
}

// putBlob commits n bytes of a pattern in the namespace of ctx.
func putBlob(t *testing.T, env *contentEnv, ctx context.Context, n int) ([]byte, digest.Digest) {
	t.Helper()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	d := digest.FromBytes(data)
	if _, err := (write{ref: "blob", data: data, expected: d}).run(ctx, env.content); err != nil {
		t.Fatalf("write blob: %v", err)
	}
	env.rawLog.take()
	return data, d
}

// readAt reads size bytes at off through the namespaced service, as a
// ReaderAt does.
func readAt(t *testing.T, env *contentEnv, ctx context.Context, d digest.Digest, off, size int64) []byte {
	t.Helper()
	rc, err := env.content.Read(ctx, &contentapi.ReadContentRequest{Digest: d.String(), Offset: off, Size: size})
	if err != nil {
		t.Fatalf("Read at %d: %v", off, err)
	}
	var got []byte
	for {
		resp, err := rc.Recv()
		if err != nil {
			break
		}
		if resp.GetOffset() != int64(len(got)) {
			t.Fatalf("Read at %d: reply at %d after %d bytes", off, resp.GetOffset(), len(got))
		}
		got = append(got, resp.GetData()...)
	}
	return got
}

// TestContentReadAhead reads a blob in order, 32 KiB at a time: each 1 MiB
// chunk is fetched from content-svc once, and a read in the second half of
// a chunk fetches the next before any read asks for it.
func TestContentReadAhead(t *testing.T) {
	env := newContentEnv(t, "shared")
	ctx := inNamespace("ra")
	const mib = 1 << 20
	data, d := putBlob(t, env, ctx, 2*mib+mib/2)

	const piece = 32 << 10
	for off := int64(0); off < int64(len(data)); off += piece {
		if off == mib {
			// The reads so far reached the second half of chunk 0.
			testkit.WaitFor(t, "chunk 1 read ahead", func() bool {
				return slices.Equal(env.rawLog.offsets(), []int64{0, mib})
			})
		}
		if off == mib/2-piece && !slices.Equal(env.rawLog.offsets(), []int64{0}) {
			t.Fatalf("reads in the first half of chunk 0 fetched %v, want chunk 0 only", env.rawLog.offsets())
		}
		got := readAt(t, env, ctx, d, off, piece)
		if want := data[off:min(off+piece, int64(len(data)))]; !bytes.Equal(got, want) {
			t.Fatalf("read at %d: %d bytes, not the %d written there", off, len(got), len(want))
		}
	}
	if got, want := env.rawLog.offsets(), []int64{0, mib, 2 * mib}; !slices.Equal(got, want) {
		t.Errorf("content-svc reads at %v, want one per chunk at %v", got, want)
	}
	for _, r := range env.rawLog.take() {
		if r.GetSize() > mib {
			t.Errorf("content-svc read of %d bytes, more than a chunk", r.GetSize())
		}
	}
}

// TestContentReadsShareAFetch: calls that want the same chunk at once wait
// for one fetch.
func TestContentReadsShareAFetch(t *testing.T) {
	env := newContentEnv(t, "shared")
	ctx := inNamespace("ra")
	data, d := putBlob(t, env, ctx, 3<<20)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			off := int64(i * 1000)
			if got := readAt(t, env, ctx, d, off, 4096); !bytes.Equal(got, data[off:off+4096]) {
				t.Errorf("read at %d: %d bytes, not the ones written there", off, len(got))
			}
		})
	}
	wg.Wait()
	if got := env.rawLog.offsets(); !slices.Equal(got, []int64{0}) {
		t.Errorf("content-svc reads at %v, want one fetch of chunk 0", got)
	}
}

// TestContentReadAfterFailedReadAhead: a read that joined a read-ahead
// which then failed fetches the chunk itself instead of failing.
func TestContentReadAfterFailedReadAhead(t *testing.T) {
	env := newContentEnv(t, "shared")
	ctx := inNamespace("ra")
	const mib = 1 << 20
	data, d := putBlob(t, env, ctx, 2*mib)

	release := make(chan struct{})
	var failed sync.Once
	env.rawLog.mu.Lock()
	env.rawLog.before = func(req *contentapi.ReadContentRequest) error {
		if req.GetOffset() != mib {
			return nil
		}
		err := status.Error(codes.Unavailable, "content plugin restarting")
		var first bool
		failed.Do(func() { first = true })
		if !first {
			return nil
		}
		<-release
		return err
	}
	env.rawLog.mu.Unlock()

	readAt(t, env, ctx, d, mib-4096, 4096) // starts reading chunk 1 ahead
	testkit.WaitFor(t, "chunk 1 read ahead", func() bool { return slices.Contains(env.rawLog.offsets(), mib) })
	got := make(chan []byte)
	go func() { got <- readAt(t, env, ctx, d, mib, 4096) }()
	time.Sleep(100 * time.Millisecond) // the read joins the fetch under way
	close(release)
	if b := <-got; !bytes.Equal(b, data[mib:mib+4096]) {
		t.Errorf("read after a failed read-ahead: %d bytes, not the ones written there", len(b))
	}
}
