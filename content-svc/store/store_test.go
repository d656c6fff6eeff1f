package store

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
)

func openStore(t testing.TB, root string) *Store {
	t.Helper()
	s, err := Open(root)
	if err != nil {
		t.Fatalf("Open(%q) = %v", root, err)
	}
	return s
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// ingestBytes writes data under ref and commits it.
func ingestBytes(t testing.TB, s *Store, ref string, data []byte) digest.Digest {
	t.Helper()
	w, err := s.Writer(ref, int64(len(data)), digest.FromBytes(data))
	if err != nil {
		t.Fatalf("Writer(%q) = %v", ref, err)
	}
	defer w.Close()
	if _, err := w.Write(data); err != nil {
		t.Fatalf("Write = %v", err)
	}
	dgst, err := w.Commit(int64(len(data)), digest.FromBytes(data))
	if err != nil {
		t.Fatalf("Commit = %v", err)
	}
	return dgst
}

func readBlob(t testing.TB, s *Store, dgst digest.Digest) []byte {
	t.Helper()
	f, _, err := s.Open(dgst)
	if err != nil {
		t.Fatalf("Open(%s) = %v", dgst, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wantClass fails t unless err is of the errdefs class is (nil: no error).
func wantClass(t testing.TB, what string, err error, is func(error) bool) {
	t.Helper()
	switch {
	case is == nil && err != nil:
		t.Fatalf("%s = %v, want no error", what, err)
	case is != nil && (err == nil || !is(err)):
		t.Fatalf("%s = %v, want another error class", what, err)
	}
}

func TestRoundTrip(t *testing.T) {
	s := openStore(t, t.TempDir())
	data := randomBytes(t, 3<<20+17)
	dgst := ingestBytes(t, s, "ns/round", data)
	if want := digest.FromBytes(data); dgst != want {
		t.Fatalf("Commit = %s, want %s", dgst, want)
	}

	info, err := s.Info(dgst)
	if err != nil {
		t.Fatalf("Info = %v", err)
	}
	if info.Size != int64(len(data)) || info.CreatedAt.IsZero() {
		t.Errorf("Info = %+v, want size %d and a time", info, len(data))
	}
	if !bytes.Equal(readBlob(t, s, dgst), data) {
		t.Error("read bytes differ from written ones")
	}
	fi, err := os.Stat(filepath.Join(s.Root(), "blobs", "sha256", dgst.Encoded()))
	if err != nil || fi.Mode().Perm() != 0o444 {
		t.Errorf("blob file = %v, %v; want mode 0444", fi, err)
	}

	var walked []digest.Digest
	if err := s.Walk(func(i Info) error { walked = append(walked, i.Digest); return nil }); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]digest.Digest{dgst}, walked); diff != "" {
		t.Errorf("Walk (-want +got):\n%s", diff)
	}
	if _, err := s.Status("ns/round"); !errdefs.IsNotFound(err) {
		t.Errorf("Status after commit = %v, want not found", err)
	}

	wantClass(t, "Delete", s.Delete(dgst), nil)
	_, err = s.Info(dgst)
	wantClass(t, "Info after delete", err, errdefs.IsNotFound)
	wantClass(t, "Delete again", s.Delete(dgst), errdefs.IsNotFound)
}

func TestSHA512(t *testing.T) {
	s := openStore(t, t.TempDir())
	data := []byte("five-twelve")
	want := digest.SHA512.FromBytes(data)

	w, err := s.Writer("r", 0, want)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Write(data)
	if got := w.Digest(); got != want {
		t.Errorf("Digest = %s, want %s", got, want)
	}
	dgst, err := w.Commit(0, "")
	if err != nil || dgst != want {
		t.Fatalf("Commit = %s, %v; want %s", dgst, err, want)
	}
	if !bytes.Equal(readBlob(t, s, want), data) {
		t.Error("read bytes differ")
	}
}

func TestResume(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root)
	data := randomBytes(t, 2<<20+5)
	half := len(data) / 2

	w, err := s.Writer("ns/resume", int64(len(data)), "")
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data[:half])
	if err := w.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}

	// A new process finds the ingest where the first writer left it.
	s = openStore(t, root)
	st, err := s.Status("ns/resume")
	if err != nil || st.Offset != int64(half) || st.Total != int64(len(data)) {
		t.Fatalf("Status = %+v, %v; want offset %d total %d", st, err, half, len(data))
	}
	w, err = s.Writer("ns/resume", int64(len(data)), "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, want := w.Digest(), digest.FromBytes(data[:half]); w.Offset() != int64(half) || got != want {
		t.Fatalf("resumed at %d with %s, want %d with %s", w.Offset(), got, half, want)
	}
	w.Write(data[half:])
	dgst, err := w.Commit(int64(len(data)), digest.FromBytes(data))
	if err != nil {
		t.Fatalf("Commit = %v", err)
	}
	if !bytes.Equal(readBlob(t, s, dgst), data) {
		t.Error("read bytes differ")
	}
}

func TestResumeOtherTotalRestarts(t *testing.T) {
	s := openStore(t, t.TempDir())
	w, _ := s.Writer("r", 10, "")
	w.Write([]byte("abc"))
	w.Close()

	w, err := s.Writer("r", 20, "")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if st := w.Status(); st.Offset != 0 || st.Total != 20 {
		t.Errorf("Status = %+v, want a fresh ingest of 20", st)
	}
}

func TestLock(t *testing.T) {
	s := openStore(t, t.TempDir())
	w, err := s.Writer("ns/lock", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("held"))

	_, err = s.Writer("ns/lock", 0, "")
	wantClass(t, "second Writer", err, errdefs.IsUnavailable)
	wantClass(t, "Abort of held ref", s.Abort("ns/lock"), errdefs.IsUnavailable)
	if st, err := s.Status("ns/lock"); err != nil || st.Offset != 4 {
		t.Errorf("Status of held ref = %+v, %v; want offset 4", st, err)
	}

	w.Close()
	w.Close() // a second Close must not release someone else's lock
	w2, err := s.Writer("ns/lock", 0, "")
	if err != nil {
		t.Fatalf("Writer after Close = %v", err)
	}
	defer w2.Close()
	_, err = s.Writer("ns/lock", 0, "")
	wantClass(t, "third Writer", err, errdefs.IsUnavailable)
	if w2.Offset() != 4 {
		t.Errorf("resumed offset = %d, want 4", w2.Offset())
	}
}

// TestReserve holds a ref without touching its ingest, then opens it or
// gives it up.
func TestReserve(t *testing.T) {
	s := openStore(t, t.TempDir())
	r, err := s.Reserve("ns/r")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Writer("ns/r", 0, "")
	wantClass(t, "Writer of reserved ref", err, errdefs.IsUnavailable)
	_, err = s.Reserve("ns/r")
	wantClass(t, "second Reserve", err, errdefs.IsUnavailable)
	wantClass(t, "Abort of reserved ref", s.Abort("ns/r"), errdefs.IsUnavailable)
	_, err = s.Status("ns/r")
	wantClass(t, "Status of reserved ref", err, errdefs.IsNotFound)

	r.Release()
	r.Release() // a second Release must not release someone else's hold
	r2, err := s.Reserve("ns/r")
	if err != nil {
		t.Fatalf("Reserve after Release = %v", err)
	}
	w, err := r2.Open(0, "")
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	r2.Release() // spent: the writer keeps the ref
	_, err = s.Writer("ns/r", 0, "")
	wantClass(t, "Writer of opened ref", err, errdefs.IsUnavailable)
	_, err = r2.Open(0, "")
	wantClass(t, "second Open", err, errdefs.IsFailedPrecondition)
	w.Close()
	if _, err := s.Reserve("ns/r"); err != nil {
		t.Errorf("Reserve after the writer closed = %v", err)
	}
}

func TestTruncate(t *testing.T) {
	s := openStore(t, t.TempDir())
	w, _ := s.Writer("r", 0, "")
	defer w.Close()
	w.Write([]byte("garbage"))
	if err := w.Truncate(0); err != nil {
		t.Fatalf("Truncate = %v", err)
	}
	wantClass(t, "Truncate(3)", w.Truncate(3), errdefs.IsInvalidArgument)
	w.Write([]byte("good"))
	dgst, err := w.Commit(4, digest.FromString("good"))
	if err != nil {
		t.Fatalf("Commit = %v", err)
	}
	if got := string(readBlob(t, s, dgst)); got != "good" {
		t.Errorf("blob = %q, want %q", got, "good")
	}
}

func TestCommitMismatch(t *testing.T) {
	data := []byte("hello world")
	tests := []struct {
		name     string
		size     int64
		expected digest.Digest
		is       func(error) bool
	}{
		{"size", 5, "", errdefs.IsFailedPrecondition},
		{"digest", 0, digest.FromString("other"), errdefs.IsFailedPrecondition},
		{"both", 100, digest.FromString("other"), errdefs.IsFailedPrecondition},
		{"sha512 digest", 0, digest.SHA512.FromString("other"), errdefs.IsFailedPrecondition},
		{"bad digest", 0, "sha256:../../etc", errdefs.IsInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			w, _ := s.Writer("r", 0, "")
			defer w.Close()
			w.Write(data)
			_, err := w.Commit(tt.size, tt.expected)
			wantClass(t, "Commit", err, tt.is)
			assertNoBlobs(t, s)

			// The ingest is intact and can still be committed.
			if _, err := w.Commit(int64(len(data)), digest.FromBytes(data)); err != nil {
				t.Errorf("Commit after mismatch = %v", err)
			}
		})
	}
}

func assertNoBlobs(t *testing.T, s *Store) {
	t.Helper()
	n := 0
	s.Walk(func(Info) error { n++; return nil })
	if n != 0 {
		t.Errorf("store holds %d blobs, want none", n)
	}
}

func TestExisting(t *testing.T) {
	s := openStore(t, t.TempDir())
	data := []byte("exists")
	dgst := ingestBytes(t, s, "a", data)
	before, _ := s.Info(dgst)

	// A writer expecting the blob is refused at once, and drops its ingest.
	w, _ := s.Writer("b", 0, "")
	w.Write([]byte("ex"))
	w.Close()
	_, err := s.Writer("b", int64(len(data)), dgst)
	wantClass(t, "Writer expecting existing", err, errdefs.IsAlreadyExists)
	if _, err := s.Status("b"); !errdefs.IsNotFound(err) {
		t.Errorf("Status of dropped ingest = %v, want not found", err)
	}

	// A writer that does not say is told at commit, once its bytes matched.
	w, _ = s.Writer("c", 0, "")
	defer w.Close()
	w.Write(data)
	got, err := w.Commit(int64(len(data)), dgst)
	wantClass(t, "Commit of existing", err, errdefs.IsAlreadyExists)
	if got != dgst {
		t.Errorf("Commit digest = %s, want %s", got, dgst)
	}
	after, _ := s.Info(dgst)
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("existing blob changed (-before +after):\n%s", diff)
	}
	if _, err := s.Status("c"); !errdefs.IsNotFound(err) {
		t.Errorf("Status after AlreadyExists = %v, want not found", err)
	}
}

func TestBadDigests(t *testing.T) {
	s := openStore(t, t.TempDir())
	bad := []digest.Digest{
		"",
		"sha256:../../../etc/passwd",
		"sha256/../../x",
		digest.Digest("../blobs/sha256/" + digest.FromString("x").Encoded()),
		digest.Digest("sha256:" + digest.FromString("x").Encoded() + "/.."),
		"md5:d41d8cd98f00b204e9800998ecf8427e",
		"sha256:ABCDEF",
		digest.Digest("SHA256:" + digest.FromString("x").Encoded()),
	}
	for _, d := range bad {
		t.Run(string(d), func(t *testing.T) {
			_, err := s.Info(d)
			wantClass(t, "Info", err, errdefs.IsInvalidArgument)
			_, _, err = s.Open(d)
			wantClass(t, "Open", err, errdefs.IsInvalidArgument)
			wantClass(t, "Delete", s.Delete(d), errdefs.IsInvalidArgument)
			if d != "" {
				_, err = s.Writer("r", 0, d)
				wantClass(t, "Writer", err, errdefs.IsInvalidArgument)
			}
		})
	}
}

func TestRefsAreHashed(t *testing.T) {
	s := openStore(t, t.TempDir())
	for _, ref := range []string{"../../escape", "/abs/path", "ns/a\x00b", ".tmp-x"} {
		w, err := s.Writer(ref, 0, "")
		if err != nil {
			t.Fatalf("Writer(%q) = %v", ref, err)
		}
		w.Write([]byte(ref))
		w.Close()
		st, err := s.Status(ref)
		if err != nil || st.Ref != ref {
			t.Errorf("Status(%q) = %+v, %v", ref, st, err)
		}
	}
	entries, _ := os.ReadDir(filepath.Dir(s.Root()))
	if len(entries) != 1 {
		t.Errorf("store wrote outside its root: %v", entries)
	}
	_, err := s.Writer("", 0, "")
	wantClass(t, "Writer without ref", err, errdefs.IsInvalidArgument)
}

func TestOpenCleansLeftovers(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root)
	w, _ := s.Writer("keep", 0, "")
	w.Write([]byte("resumable"))
	w.Close()

	ingest := filepath.Join(root, "ingest")
	leftovers := map[string]map[string]string{
		".tmp-123":         {"ref": "half"},
		"not-a-ref":        {"ref": "x", "startedat": "2026-01-01T00:00:00Z", "data": ""},
		hashRef("noData"):  {"ref": "noData", "startedat": "2026-01-01T00:00:00Z"},
		hashRef("badTime"): {"ref": "badTime", "startedat": "yesterday", "data": ""},
		hashRef("badTotal"): {
			"ref": "badTotal", "startedat": "2026-01-01T00:00:00Z", "total": "1x", "data": "",
		},
	}
	for dir, files := range leftovers {
		os.Mkdir(filepath.Join(ingest, dir), 0o700)
		for name, content := range files {
			os.WriteFile(filepath.Join(ingest, dir, name), []byte(content), 0o600)
		}
	}
	os.WriteFile(filepath.Join(ingest, "stray-file"), nil, 0o600)

	s = openStore(t, root)
	entries, _ := os.ReadDir(ingest)
	if len(entries) != 1 || entries[0].Name() != hashRef("keep") {
		t.Errorf("ingest dir after Open = %v, want only the resumable ingest", entries)
	}
	list, err := s.ListStatuses()
	if err != nil || len(list) != 1 || list[0].Ref != "keep" || list[0].Offset != 9 {
		t.Errorf("ListStatuses = %+v, %v", list, err)
	}
}

func hashRef(ref string) string {
	s := &Store{root: "/"}
	return filepath.Base(s.ingestDir(ref))
}

func TestAbort(t *testing.T) {
	s := openStore(t, t.TempDir())
	w, _ := s.Writer("r", 0, "")
	w.Write([]byte("x"))
	w.Close()

	wantClass(t, "Abort", s.Abort("r"), nil)
	_, err := s.Status("r")
	wantClass(t, "Status after Abort", err, errdefs.IsNotFound)
	wantClass(t, "Abort again", s.Abort("r"), errdefs.IsNotFound)
}

func TestListStatuses(t *testing.T) {
	s := openStore(t, t.TempDir())
	for _, ref := range []string{"default/a-1", "default/a-2", "other/b-1"} {
		w, _ := s.Writer(ref, 10, "")
		w.Write([]byte(ref))
		w.Close()
	}
	held, _ := s.Writer("default/held", 0, "")
	defer held.Close()
	held.Write([]byte("live"))

	tests := []struct {
		filters []string
		want    []string
		is      func(error) bool
	}{
		{nil, []string{"default/a-1", "default/a-2", "default/held", "other/b-1"}, nil},
		{[]string{""}, []string{"default/a-1", "default/a-2", "default/held", "other/b-1"}, nil},
		{[]string{`ref~=^default/a-`}, []string{"default/a-1", "default/a-2"}, nil},
		{[]string{`ref==other/b-1`}, []string{"other/b-1"}, nil},
		{[]string{`ref==other/b-1`, `ref~=held`}, []string{"default/held", "other/b-1"}, nil},
		{[]string{`ref~=a-, total==10`}, []string{"default/a-1", "default/a-2"}, nil},
		{[]string{`offset==4, ref~=held`}, []string{"default/held"}, nil},
		{[]string{`ref==`}, nil, errdefs.IsInvalidArgument},
	}
	for _, tt := range tests {
		list, err := s.ListStatuses(tt.filters...)
		wantClass(t, "ListStatuses", err, tt.is)
		var got []string
		for _, st := range list {
			got = append(got, st.Ref)
		}
		if diff := cmp.Diff(tt.want, got, sortStrings); diff != "" {
			t.Errorf("ListStatuses(%q) (-want +got):\n%s", tt.filters, diff)
		}
	}
}

var sortStrings = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

func TestWriteAfterCommit(t *testing.T) {
	s := openStore(t, t.TempDir())
	w, _ := s.Writer("r", 0, "")
	defer w.Close()
	w.Write([]byte("x"))
	if _, err := w.Commit(0, ""); err != nil {
		t.Fatal(err)
	}
	_, err := w.Write([]byte("y"))
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Write after Commit = %v, want failed precondition", err)
	}
}

func TestEmptyBlob(t *testing.T) {
	s := openStore(t, t.TempDir())
	dgst := ingestBytes(t, s, "empty", nil)
	if info, err := s.Info(dgst); err != nil || info.Size != 0 {
		t.Errorf("Info(empty) = %+v, %v", info, err)
	}
}

func TestMixedWrites(t *testing.T) {
	s := openStore(t, t.TempDir())
	data := randomBytes(t, 5<<20+333)
	w, _ := s.Writer("mixed", 0, "")
	defer w.Close()

	// Single bytes, small and large hand-overs, and copies of all sizes.
	sizes := []int{1, 1, 7, 300 << 10, 2<<20 + 1, 100, 1 << 20, 5}
	off := 0
	for i := 0; off < len(data); i++ {
		n := min(sizes[i%len(sizes)], len(data)-off)
		chunk := append([]byte(nil), data[off:off+n]...)
		var err error
		if i%2 == 0 {
			_, err = w.Append(chunk)
		} else {
			_, err = w.Write(chunk)
			clear(chunk) // Write must not keep the caller's slice
		}
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	dgst, err := w.Commit(int64(len(data)), digest.FromBytes(data))
	if err != nil {
		t.Fatalf("Commit = %v", err)
	}
	if !bytes.Equal(readBlob(t, s, dgst), data) {
		t.Error("read bytes differ")
	}
}

func TestWriteErrorSurfaces(t *testing.T) {
	s := openStore(t, t.TempDir())
	w, _ := s.Writer("broken", 0, "")
	w.f.Close() // the disk fails under the writer
	chunk := make([]byte, 1<<20)
	var err error
	for range 2 * queueLen {
		if _, err = w.Append(chunk); err != nil {
			break
		}
	}
	if err == nil {
		_, err = w.Commit(0, "")
	}
	if err == nil {
		t.Fatal("writes to a closed file succeeded")
	}
	assertNoBlobs(t, s)
	w.Close()
	if _, err := s.Writer("broken", 0, ""); err != nil {
		t.Errorf("Writer after a failed one = %v", err)
	}
}

func TestIngestErrorClasses(t *testing.T) {
	tests := []struct {
		err error
		is  func(error) bool
	}{
		{fs.ErrNotExist, errdefs.IsNotFound},
		{&os.PathError{Op: "write", Path: "data", Err: syscall.ENOSPC}, errdefs.IsResourceExhausted},
		{syscall.EDQUOT, errdefs.IsResourceExhausted},
	}
	for _, tt := range tests {
		wantClass(t, fmt.Sprint(tt.err), ingestError("write", "r", tt.err), tt.is)
	}
}
