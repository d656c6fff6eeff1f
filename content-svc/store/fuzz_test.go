package store

import (
	"path/filepath"
	"strings"
	"testing"

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
