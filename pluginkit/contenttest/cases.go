package contenttest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
)

// testRoundTrip ingests as ctr does, then reads, stats and deletes.
func testRoundTrip(s *suite) {
	data := randomBytes(s.t, 3*ChunkSize+17)
	dgst := digest.FromBytes(data)

	st := s.openWrite()
	first := st.must(stat(s.ref, int64(len(data)), dgst))
	if first.GetOffset() != 0 || first.GetTotal() != int64(len(data)) ||
		first.GetDigest() != digest.FromBytes(nil).String() || first.GetStartedAt() == nil {
		s.t.Errorf("first STAT reply = %v, want offset 0, total %d, the empty digest, a time",
			first, len(data))
	}
	st.writeFrom(0, data)
	resp := st.must(commit(int64(len(data)), int64(len(data)), dgst))
	if resp.GetAction() != contentapi.WriteAction_COMMIT || resp.GetOffset() != int64(len(data)) ||
		resp.GetDigest() != dgst.String() {
		s.t.Fatalf("COMMIT reply = %v, want offset %d digest %s", resp, len(data), dgst)
	}
	st.close()

	info, err := s.c.Info(s.ctx(), &contentapi.InfoRequest{Digest: dgst.String()})
	if err != nil {
		s.t.Fatalf("Info = %v", err)
	}
	if i := info.GetInfo(); i.GetDigest() != dgst.String() || i.GetSize() != int64(len(data)) ||
		i.GetCreatedAt().AsTime().IsZero() {
		s.t.Errorf("Info = %v, want digest %s size %d and a time", i, dgst, len(data))
	}
	got, err := s.read(dgst, 0, 0)
	if err != nil || !bytes.Equal(got, data) {
		s.t.Errorf("Read = %d bytes, %v; want the %d bytes written", len(got), err, len(data))
	}
	if _, err := s.c.Status(s.ctx(), &contentapi.StatusRequest{Ref: s.ref}); err == nil {
		s.t.Errorf("Status of a committed ref = nil error, want not found")
	}

	_, err = s.c.Delete(s.ctx(), &contentapi.DeleteContentRequest{Digest: dgst.String()})
	if err != nil {
		s.t.Fatalf("Delete = %v", err)
	}
	_, err = s.c.Info(s.ctx(), &contentapi.InfoRequest{Digest: dgst.String()})
	s.wantCode("Info after Delete", err, errdefs.IsNotFound)
	_, err = s.c.Delete(s.ctx(), &contentapi.DeleteContentRequest{Digest: dgst.String()})
	s.wantCode("Delete again", err, errdefs.IsNotFound)
	_, err = s.read(dgst, 0, 0)
	s.wantCode("Read after Delete", err, errdefs.IsNotFound)
}

// testList finds committed blobs with List, in full and by digest.
func testList(s *suite) {
	a := s.ingest(s.ref+"-a", randomBytes(s.t, 10))
	b := s.ingest(s.ref+"-b", randomBytes(s.t, 20))
	all := s.list()
	if all[a] != 10 || all[b] != 20 {
		s.t.Errorf("List = %v, want %s (10) and %s (20) among them", all, a, b)
	}
	one := s.list("digest==" + a.String())
	if one[a] != 10 || one[b] != 0 {
		s.t.Errorf("List(digest==%s) = %v, want it and not %s", a, one, b)
	}
}

// list returns the sizes of the blobs List gives by digest.
func (s *suite) list(filters ...string) map[digest.Digest]int64 {
	s.t.Helper()
	ls, err := s.c.List(s.ctx(), &contentapi.ListContentRequest{Filters: filters})
	if err != nil {
		s.t.Fatalf("List = %v", err)
	}
	out := map[digest.Digest]int64{}
	for {
		resp, err := ls.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			s.t.Fatalf("List = %v", err)
		}
		for _, i := range resp.GetInfo() {
			out[digest.Digest(i.GetDigest())] = i.GetSize()
		}
	}
}

// testWriteWithoutRef checks that the first message must name a ref.
func testWriteWithoutRef(s *suite) {
	st := s.openWrite()
	_, err := st.do(&contentapi.WriteContentRequest{Action: contentapi.WriteAction_STAT})
	s.wantCode("Write without ref", err, errdefs.IsInvalidArgument)
}

// testExpectedExists checks that a writer expecting a committed blob is
// told at once.
func testExpectedExists(s *suite) {
	data := randomBytes(s.t, 100)
	dgst := s.ingest(s.ref+"-first", data)
	st := s.openWrite()
	_, err := st.do(stat(s.ref+"-second", int64(len(data)), dgst))
	s.wantCode("first Write reply for an existing blob", err, errdefs.IsAlreadyExists)
}

// testCommitExisting checks that committing bytes already stored is
// AlreadyExists and leaves the blob readable.
func testCommitExisting(s *suite) {
	data := randomBytes(s.t, 100)
	dgst := s.ingest(s.ref+"-first", data)
	st := s.openWrite()
	st.must(stat(s.ref+"-second", 0, ""))
	st.writeFrom(0, data)
	_, err := st.do(commit(int64(len(data)), int64(len(data)), dgst))
	s.wantCode("COMMIT of an existing blob", err, errdefs.IsAlreadyExists)
	if got, err := s.read(dgst, 0, 0); err != nil || !bytes.Equal(got, data) {
		s.t.Errorf("Read after a second commit = %d bytes, %v", len(got), err)
	}
}

// testResume checks that an ingest outlives its stream and resumes.
func testResume(s *suite) {
	data := randomBytes(s.t, 2*ChunkSize+3)
	dgst, half := digest.FromBytes(data), int64(ChunkSize+1)

	st := s.openWrite()
	st.must(stat(s.ref, int64(len(data)), dgst))
	st.writeFrom(0, data[:half])
	st.close()

	st = s.openWrite()
	resp := st.must(stat(s.ref, int64(len(data)), dgst))
	if resp.GetOffset() != half || resp.GetDigest() != digest.FromBytes(data[:half]).String() {
		s.t.Fatalf("resumed STAT = offset %d digest %s, want %d and the digest of those bytes",
			resp.GetOffset(), resp.GetDigest(), half)
	}
	st.writeFrom(half, data[half:])
	resp = st.must(commit(int64(len(data)), int64(len(data)), dgst))
	if resp.GetDigest() != dgst.String() {
		s.t.Fatalf("COMMIT digest = %s, want %s", resp.GetDigest(), dgst)
	}
	s.t.Cleanup(func() {
		_, _ = s.c.Delete(s.ctx(), &contentapi.DeleteContentRequest{Digest: dgst.String()})
	})
	if got, err := s.read(dgst, 0, 0); err != nil || !bytes.Equal(got, data) {
		s.t.Errorf("Read of the resumed blob = %d bytes, %v", len(got), err)
	}
}

// testLock checks one writer per ref, released when a stream is cancelled.
func testLock(s *suite) {
	data := randomBytes(s.t, 64)
	dgst := digest.FromBytes(data)
	holder := s.openWrite()
	holder.must(stat(s.ref, int64(len(data)), dgst))
	holder.writeFrom(0, data[:10])

	second := s.openWrite()
	_, err := second.do(stat(s.ref, int64(len(data)), dgst))
	s.wantCode("second writer", err, errdefs.IsUnavailable)

	// Cancelling the holder frees the ref; the release may take a moment
	// to cross the hops, so retry as containerd's client does.
	holder.cancel()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := s.openWrite()
		resp, err := st.do(stat(s.ref, int64(len(data)), dgst))
		if err == nil {
			if resp.GetOffset() != 10 {
				s.t.Fatalf("offset after the holder went = %d, want 10", resp.GetOffset())
			}
			st.writeFrom(10, data[10:])
			st.must(commit(int64(len(data)), int64(len(data)), dgst))
			break
		}
		if !errdefs.IsUnavailable(errgrpc.ToNative(err)) || time.Now().After(deadline) {
			s.t.Fatalf("writer after the holder was cancelled = %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Cleanup(func() {
		_, _ = s.c.Delete(s.ctx(), &contentapi.DeleteContentRequest{Digest: dgst.String()})
	})
}

// testTruncate checks that a write at offset 0 starts the ingest over.
func testTruncate(s *suite) {
	good := randomBytes(s.t, 40)
	dgst := digest.FromBytes(good)
	st := s.openWrite()
	st.must(stat(s.ref, 0, ""))
	st.writeFrom(0, randomBytes(s.t, 100))
	resp := st.must(write(0, good))
	if resp.GetOffset() != int64(len(good)) {
		s.t.Fatalf("offset after a write at 0 = %d, want %d", resp.GetOffset(), len(good))
	}
	resp = st.must(commit(int64(len(good)), int64(len(good)), dgst))
	if resp.GetDigest() != dgst.String() {
		s.t.Fatalf("COMMIT digest = %s, want %s", resp.GetDigest(), dgst)
	}
	s.t.Cleanup(func() {
		_, _ = s.c.Delete(s.ctx(), &contentapi.DeleteContentRequest{Digest: dgst.String()})
	})
}

// testOffsetGap checks that a write away from the current offset fails.
func testOffsetGap(s *suite) {
	for _, off := range []int64{3, 10} {
		st := s.openWrite()
		st.must(stat(s.ref, 0, ""))
		st.writeFrom(0, []byte("four"))
		_, err := st.do(write(off, []byte("more")))
		s.wantCode("write at a gap", err, errdefs.IsOutOfRange)
		st.close()
	}
}

// testCommitMismatch checks that a wrong size or digest commits nothing.
func testCommitMismatch(s *suite) {
	data := randomBytes(s.t, 50)
	dgst := digest.FromBytes(data)
	tests := []struct {
		name     string
		total    int64
		expected digest.Digest
	}{
		{"size", 49, dgst},
		{"digest", int64(len(data)), digest.FromString("something else")},
	}
	for _, tt := range tests {
		st := s.openWrite()
		st.must(stat(s.ref+"-"+tt.name, 0, ""))
		st.writeFrom(0, data)
		_, err := st.do(commit(int64(len(data)), tt.total, tt.expected))
		s.wantCode(tt.name+" mismatch", err, errdefs.IsFailedPrecondition)
		st.close()
		for _, d := range []digest.Digest{dgst, tt.expected} {
			_, err = s.c.Info(s.ctx(), &contentapi.InfoRequest{Digest: d.String()})
			s.wantCode("Info after a "+tt.name+" mismatch", err, errdefs.IsNotFound)
		}
		_, _ = s.c.Abort(s.ctx(), &contentapi.AbortRequest{Ref: s.ref + "-" + tt.name})
	}
}

// testBadDigests checks that malformed digests, path traversal among them,
// are invalid arguments everywhere.
func testBadDigests(s *suite) {
	hexOf := digest.FromString("x").Encoded()
	bad := []string{
		"sha256:../../../../etc/passwd",
		"../blobs/sha256/" + hexOf,
		"sha256:" + hexOf + "/..",
		"sha256:" + hexOf[:10],
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		"not a digest",
	}
	for _, d := range bad {
		_, err := s.c.Info(s.ctx(), &contentapi.InfoRequest{Digest: d})
		s.wantCode("Info("+d+")", err, errdefs.IsInvalidArgument)
		_, err = s.c.Delete(s.ctx(), &contentapi.DeleteContentRequest{Digest: d})
		s.wantCode("Delete("+d+")", err, errdefs.IsInvalidArgument)
		_, err = s.read(digest.Digest(d), 0, 0)
		s.wantCode("Read("+d+")", err, errdefs.IsInvalidArgument)
		s.writeExpecting(d)
	}
}

// writeExpecting checks that a writer told to expect a malformed digest
// fails, on the first message or at the latest at COMMIT (containerd
// checks only then), and commits nothing.
func (s *suite) writeExpecting(d string) {
	s.t.Helper()
	st := s.openWrite()
	defer st.close()
	_, err := st.do(&contentapi.WriteContentRequest{Ref: s.ref, Expected: d})
	if err == nil {
		data := randomBytes(s.t, 10)
		st.writeFrom(0, data)
		_, err = st.do(commit(10, 10, digest.Digest(d)))
		if err == nil {
			s.t.Fatalf("Write expecting %s committed", d)
		}
		_, _ = s.c.Abort(s.ctx(), &contentapi.AbortRequest{Ref: s.ref})
	}
	native := errgrpc.ToNative(err)
	if !errdefs.IsInvalidArgument(native) && !errdefs.IsFailedPrecondition(native) {
		s.t.Fatalf("Write expecting %s = %v, want invalid argument", d, err)
	}
}

// testReadRanges reads parts of a blob and past its end.
func testReadRanges(s *suite) {
	data := randomBytes(s.t, 2*ChunkSize+100)
	dgst := s.ingest(s.ref, data)
	size := int64(len(data))
	tests := []struct {
		offset, size int64
		want         []byte
	}{
		{0, 0, data},
		{5, 10, data[5:15]},
		{ChunkSize - 1, ChunkSize + 2, data[ChunkSize-1 : 2*ChunkSize+1]},
		{ChunkSize - 10, 20, data[ChunkSize-10 : ChunkSize+10]},
		{2*ChunkSize - 10, 40 << 10, data[2*ChunkSize-10 : 2*ChunkSize+100]},
		{size - 3, 0, data[size-3:]},
		{size - 3, 100, data[size-3:]},
		{size, 0, nil},
	}
	for _, tt := range tests {
		got, err := s.read(dgst, tt.offset, tt.size)
		if err != nil || !bytes.Equal(got, tt.want) {
			s.t.Errorf("Read(%d, %d) = %d bytes, %v; want %d bytes",
				tt.offset, tt.size, len(got), err, len(tt.want))
		}
	}
	_, err := s.read(dgst, size+1, 0)
	s.wantCode("Read past the end", err, errdefs.IsOutOfRange)
}

// testStatusAndAbort checks Status, ListStatuses with ref filters, and
// Abort.
func testStatusAndAbort(s *suite) {
	refs := []string{s.ref + "-a", s.ref + "-b"}
	for i, ref := range refs {
		st := s.openWrite()
		st.must(stat(ref, 100, ""))
		st.writeFrom(0, make([]byte, 10*(i+1)))
		st.close()
	}
	ctx := s.ctx()

	resp, err := s.c.Status(ctx, &contentapi.StatusRequest{Ref: refs[1]})
	if err != nil {
		s.t.Fatalf("Status = %v", err)
	}
	got := resp.GetStatus()
	if got.GetRef() != refs[1] || got.GetOffset() != 20 || got.GetTotal() != 100 {
		s.t.Errorf("Status = %v, want ref %s offset 20 total 100", got, refs[1])
	}
	s.wantStatuses(ctx, "ref=="+refs[0], refs[0])
	s.wantStatuses(ctx, "ref~=^"+s.ref+"-", refs...)

	for _, ref := range refs {
		if _, err := s.c.Abort(ctx, &contentapi.AbortRequest{Ref: ref}); err != nil {
			s.t.Fatalf("Abort(%s) = %v", ref, err)
		}
	}
	_, err = s.c.Status(ctx, &contentapi.StatusRequest{Ref: refs[0]})
	s.wantCode("Status after Abort", err, errdefs.IsNotFound)
	_, err = s.c.Abort(ctx, &contentapi.AbortRequest{Ref: refs[0]})
	s.wantCode("Abort again", err, errdefs.IsNotFound)
	s.wantStatuses(ctx, "ref~=^"+s.ref+"-")
}

// wantStatuses checks that ListStatuses(filter) lists exactly refs.
func (s *suite) wantStatuses(ctx context.Context, filter string, refs ...string) {
	s.t.Helper()
	resp, err := s.c.ListStatuses(ctx, &contentapi.ListStatusesRequest{Filters: []string{filter}})
	if err != nil {
		s.t.Fatalf("ListStatuses(%q) = %v", filter, err)
	}
	got := map[string]bool{}
	for _, st := range resp.GetStatuses() {
		got[st.GetRef()] = true
	}
	if len(got) != len(refs) {
		s.t.Errorf("ListStatuses(%q) = %v, want %v", filter, got, refs)
	}
	for _, ref := range refs {
		if !got[ref] {
			s.t.Errorf("ListStatuses(%q) = %v, want %v", filter, got, refs)
		}
	}
}
