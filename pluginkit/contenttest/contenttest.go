// Package contenttest is a conformance suite for containerd's Content gRPC
// service (containerd.services.content.v1.Content). The same suite runs
// against content-svc's raw store, against the namespaced service the
// metadata plugin serves, and against the whole daemon, so each layer is
// held to the protocol containerd's clients rely on.
//
// The suite only writes blobs of random bytes under refs of its own, so it
// can share a store with other tests. It does not test labels, which the
// raw store does not keep.
package contenttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
)

// ChunkSize is the size of the chunks the suite writes, and the most data
// it accepts in one Read reply.
const ChunkSize = 1 << 20

// Run runs the suite. newClient returns a client of the service under test;
// ctx returns the context of each call. For a namespaced service it must
// carry the namespace, and where a garbage collector runs (containerd, the
// metadata plugin) a lease too, or blobs vanish between the suite's calls.
func Run(
	t *testing.T,
	newClient func(t *testing.T) contentapi.ContentClient,
	ctx func() context.Context,
) {
	tests := []struct {
		name string
		fn   func(*suite)
	}{
		{"RoundTrip", testRoundTrip},
		{"List", testList},
		{"WriteWithoutRef", testWriteWithoutRef},
		{"ExpectedExists", testExpectedExists},
		{"CommitExisting", testCommitExisting},
		{"Resume", testResume},
		{"Lock", testLock},
		{"Truncate", testTruncate},
		{"OffsetGap", testOffsetGap},
		{"CommitMismatch", testCommitMismatch},
		{"BadDigests", testBadDigests},
		{"ReadRanges", testReadRanges},
		{"StatusAndAbort", testStatusAndAbort},
	}
	prefix := "contenttest-" + randomHex(t, 6) + "-"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(&suite{t: t, c: newClient(t), ctx: ctx, ref: prefix + tt.name})
		})
	}
}

// suite is what one test of the suite works with.
type suite struct {
	t   *testing.T
	c   contentapi.ContentClient
	ctx func() context.Context
	ref string // a ref of the test's own; more are made by appending
}

func randomHex(t testing.TB, n int) string {
	return hex.EncodeToString(randomBytes(t, n))
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// wantCode fails the test unless err, brought back to its errdefs class,
// satisfies is.
func (s *suite) wantCode(what string, err error, is func(error) bool) {
	s.t.Helper()
	if err == nil || !is(errgrpc.ToNative(err)) {
		s.t.Fatalf("%s = %v, want another error class", what, err)
	}
}

// stream is one Write stream of the suite.
type stream struct {
	s      *suite
	w      contentapi.Content_WriteClient
	cancel context.CancelFunc
}

// openWrite opens a Write stream, bound to its own context.
func (s *suite) openWrite() *stream {
	s.t.Helper()
	ctx, cancel := context.WithCancel(s.ctx())
	w, err := s.c.Write(ctx)
	if err != nil {
		cancel()
		s.t.Fatalf("Write = %v", err)
	}
	st := &stream{s: s, w: w, cancel: cancel}
	s.t.Cleanup(st.close)
	return st
}

// do sends req and returns the reply, or the error the stream ended with.
func (st *stream) do(
	req *contentapi.WriteContentRequest,
) (*contentapi.WriteContentResponse, error) {
	if err := st.w.Send(req); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return st.w.Recv()
}

// must is do for a request that has to succeed.
func (st *stream) must(req *contentapi.WriteContentRequest) *contentapi.WriteContentResponse {
	st.s.t.Helper()
	resp, err := st.do(req)
	if err != nil {
		st.s.t.Fatalf("Write %v at %d = %v", req.GetAction(), req.GetOffset(), err)
	}
	return resp
}

// close ends the stream without a commit, and waits for the server to
// finish with it.
func (st *stream) close() {
	_ = st.w.CloseSend()
	for {
		if _, err := st.w.Recv(); err != nil {
			break
		}
	}
	st.cancel()
}

// stat sends the opening STAT of a stream.
func stat(ref string, total int64, expected digest.Digest) *contentapi.WriteContentRequest {
	return &contentapi.WriteContentRequest{
		Action:   contentapi.WriteAction_STAT,
		Ref:      ref,
		Total:    total,
		Expected: expected.String(),
	}
}

func write(offset int64, data []byte) *contentapi.WriteContentRequest {
	return &contentapi.WriteContentRequest{
		Action: contentapi.WriteAction_WRITE,
		Offset: offset,
		Data:   data,
	}
}

func commit(offset, total int64, expected digest.Digest) *contentapi.WriteContentRequest {
	return &contentapi.WriteContentRequest{
		Action:   contentapi.WriteAction_COMMIT,
		Offset:   offset,
		Total:    total,
		Expected: expected.String(),
	}
}

// writeFrom sends data from offset on in ChunkSize chunks, checking each
// reply's offset.
func (st *stream) writeFrom(offset int64, data []byte) {
	st.s.t.Helper()
	for len(data) > 0 {
		n := min(len(data), ChunkSize)
		resp := st.must(write(offset, data[:n]))
		offset += int64(n)
		if resp.GetOffset() != offset {
			st.s.t.Fatalf("WRITE reply offset = %d, want %d", resp.GetOffset(), offset)
		}
		data = data[n:]
	}
}

// ingest writes data under ref and commits it, as ctr content ingest does.
func (s *suite) ingest(ref string, data []byte) digest.Digest {
	s.t.Helper()
	dgst := digest.FromBytes(data)
	st := s.openWrite()
	defer st.close()
	st.must(stat(ref, int64(len(data)), dgst))
	st.writeFrom(0, data)
	resp := st.must(commit(int64(len(data)), int64(len(data)), dgst))
	if resp.GetOffset() != int64(len(data)) || resp.GetDigest() != dgst.String() {
		s.t.Fatalf("COMMIT reply = offset %d digest %s, want %d %s",
			resp.GetOffset(), resp.GetDigest(), len(data), dgst)
	}
	s.t.Cleanup(func() {
		_, _ = s.c.Delete(s.ctx(), &contentapi.DeleteContentRequest{Digest: dgst.String()})
	})
	return dgst
}

// read reads a blob with Read, checking the size of each chunk.
func (s *suite) read(dgst digest.Digest, offset, size int64) ([]byte, error) {
	s.t.Helper()
	rs, err := s.c.Read(s.ctx(), &contentapi.ReadContentRequest{
		Digest: dgst.String(), Offset: offset, Size: size,
	})
	if err != nil {
		return nil, err
	}
	var out []byte
	for {
		resp, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if len(resp.GetData()) > ChunkSize {
			s.t.Errorf("Read chunk of %d bytes, want at most %d", len(resp.GetData()), ChunkSize)
		}
		// Offsets count from the requested offset, as containerd's do.
		if want := int64(len(out)); resp.GetOffset() != want {
			s.t.Errorf("Read chunk at offset %d, want %d", resp.GetOffset(), want)
		}
		out = append(out, resp.GetData()...)
	}
}
