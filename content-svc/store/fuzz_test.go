package store

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// FuzzValidateDigest checks that every digest ValidateDigest accepts names
// a file directly inside blobs/<algorithm>/.
func FuzzValidateDigest(f *testing.F) {
	for _, seed := range []string{
		digest.FromString("x").String(),
		digest.SHA512.FromString("x").String(),
		"sha256:../../etc/passwd",
		"sha256:" + strings.Repeat("a", 64) + "/..",
		"sha384:",
	} {
		f.Add(seed)
	}
	s := &Store{root: "/root"}
	f.Fuzz(func(t *testing.T, in string) {
		dgst := digest.Digest(in)
		if ValidateDigest(dgst) != nil {
			return
		}
		p := s.blobPath(dgst)
		dir := filepath.Join("/root", blobsDir, string(dgst.Algorithm()))
		if filepath.Clean(p) != p || filepath.Dir(p) != dir {
			t.Fatalf("digest %q maps to %q, outside %q", in, p, dir)
		}
	})
}

// FuzzWriter runs a writer through a sequence of writes, truncations,
// reopenings and commits drawn from the input, and checks it against the
// bytes a plain slice holds after the same steps.
func FuzzWriter(f *testing.F) {
	f.Add([]byte{0, 10, 1, 20, 2, 0, 30, 3, 4})
	f.Add([]byte{1, 200, 1, 255, 3, 1, 40, 4})
	f.Fuzz(func(t *testing.T, ops []byte) {
		s := openStore(t, t.TempDir())
		w, err := s.Writer("fuzz", 0, "")
		if err != nil {
			t.Fatal(err)
		}
		defer func() { w.Close() }()
		var model []byte
		for i := 0; i+1 < len(ops); i += 2 {
			switch op, arg := ops[i]%5, int(ops[i+1]); op {
			case 0, 1: // small and large writes, copied or handed over
				n := arg * (1 + int(op)*4096)
				chunk := bytes.Repeat([]byte{ops[i+1]}, n)
				model = append(model, chunk...)
				if op == 0 {
					_, err = w.Write(chunk)
				} else {
					_, err = w.Append(chunk)
				}
			case 2:
				model = model[:0]
				err = w.Truncate(0)
			case 3: // the stream ends; another writer resumes
				if err = w.Close(); err == nil {
					w, err = s.Writer("fuzz", 0, "")
				}
			case 4:
				checkCommit(t, s, w, model)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if w.Offset() != int64(len(model)) || w.Digest() != digest.FromBytes(model) {
				t.Fatalf("after op %d: offset %d digest %s, want %d %s",
					ops[i], w.Offset(), w.Digest(), len(model), digest.FromBytes(model))
			}
		}
		checkCommit(t, s, w, model)
	})
}

// checkCommit commits w with a wrong size, then with the right one, and
// checks the blob holds want.
func checkCommit(t *testing.T, s *Store, w *Writer, want []byte) {
	t.Helper()
	if _, err := w.Commit(int64(len(want))+1, ""); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Commit of a wrong size = %v", err)
	}
	dgst, err := w.Commit(int64(len(want)), digest.FromBytes(want))
	if err != nil {
		t.Fatalf("Commit = %v", err)
	}
	if !bytes.Equal(readBlob(t, s, dgst), want) {
		t.Fatal("blob differs from what was written")
	}
}
