// Package store is content-svc's content-addressed blob store: committed
// blobs named by their digest, and resumable ingests named by a ref.
//
// The store is raw: it knows nothing of namespaces or labels, which the
// metadata plugin keeps. Every path is built from a validated digest or from
// the SHA-256 of a ref, never from a caller's string. The layout under the
// root directory is:
//
//	blobs/<algorithm>/<hex>      committed blobs, read-only (0444)
//	ingest/<sha256 of ref>/      one directory per ingest
//	    ref                      the ref, as given
//	    startedat                when the ingest began (RFC 3339)
//	    total                    the expected size, if known
//	    expected                 the expected digest, if known
//	    data                     the bytes written so far
//	ingest/.tmp-*                an ingest being created; removed on Open
//
// An ingest directory appears under its final name only once all its files
// exist, so on Open every ingest is either complete and resumable (its offset
// is the size of data) or removed. A commit renames data into blobs/ after
// an fsync of the file, without replacing an existing blob, then fsyncs the
// directory, so a blob is never visible before all its bytes are on disk.
package store

import (
	// The digest package hashes with whatever implementations are linked.
	_ "crypto/sha256"
	_ "crypto/sha512"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// Directory names under the store's root.
const (
	blobsDir  = "blobs"
	ingestDir = "ingest"
)

// algorithms are the digest algorithms the store accepts, in walk order.
var algorithms = []digest.Algorithm{digest.SHA256, digest.SHA384, digest.SHA512}

// Info describes a committed blob.
type Info struct {
	Digest    digest.Digest
	Size      int64
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Store is a content store rooted in one directory. It is safe for
// concurrent use; only one Store may use a directory at a time.
type Store struct {
	root string
	log  zerolog.Logger

	mu    sync.Mutex
	locks map[string]*Writer // ref -> the writer holding it
}

// Opt configures a Store.
type Opt func(*Store)

// WithLogger makes the store log to l.
func WithLogger(l zerolog.Logger) Opt {
	return func(s *Store) { s.log = l }
}

// Open opens the store in root, creating the directories it needs, and
// removes what a crash left half made: ingests being created and ingest
// directories whose files are incomplete or do not match their name.
func Open(root string, opts ...Opt) (*Store, error) {
	s := &Store{root: root, log: zerolog.Nop(), locks: map[string]*Writer{}}
	for _, o := range opts {
		o(s)
	}
	for _, dir := range []string{root, s.path(blobsDir), s.path(ingestDir)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create content directory %q: %w", dir, err)
		}
	}
	kept, removed, err := s.recoverIngests()
	if err != nil {
		return nil, err
	}
	s.log.Info().Str("root", root).Int("ingests", kept).Int("removed", removed).
		Msg("content store open")
	return s, nil
}

// Root returns the store's root directory.
func (s *Store) Root() string {
	return s.root
}

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.root}, elem...)...)
}

// blobPath returns the path of the blob dgst, which must be valid.
func (s *Store) blobPath(dgst digest.Digest) string {
	return s.path(blobsDir, string(dgst.Algorithm()), dgst.Encoded())
}

// ValidateDigest returns an error wrapping [errdefs.ErrInvalidArgument]
// unless dgst is a well-formed sha256, sha384 or sha512 digest.
func ValidateDigest(dgst digest.Digest) error {
	if err := dgst.Validate(); err != nil {
		return fmt.Errorf("parse digest %q: %w: %w", string(dgst), err, errdefs.ErrInvalidArgument)
	}
	switch dgst.Algorithm() {
	case digest.SHA256, digest.SHA384, digest.SHA512:
		return nil
	}
	return fmt.Errorf("parse digest %q: unsupported algorithm: %w",
		string(dgst), errdefs.ErrInvalidArgument)
}

// Info returns the size and times of the blob dgst.
func (s *Store) Info(dgst digest.Digest) (Info, error) {
	if err := ValidateDigest(dgst); err != nil {
		return Info{}, err
	}
	fi, err := os.Lstat(s.blobPath(dgst))
	if err != nil {
		return Info{}, blobError("stat", dgst, err)
	}
	return blobInfo(dgst, fi), nil
}

func blobInfo(dgst digest.Digest, fi fs.FileInfo) Info {
	return Info{Digest: dgst, Size: fi.Size(), CreatedAt: fi.ModTime(), UpdatedAt: fi.ModTime()}
}

// blobError wraps err from doing op on the blob dgst, classifying a missing
// file as [errdefs.ErrNotFound].
func blobError(op string, dgst digest.Digest, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s content %s: %w", op, dgst, errdefs.ErrNotFound)
	}
	return fmt.Errorf("%s content %s: %w", op, dgst, err)
}

// Walk calls fn for every committed blob, stopping at the first error fn
// returns, which Walk returns.
func (s *Store) Walk(fn func(Info) error) error {
	for _, alg := range algorithms {
		entries, err := os.ReadDir(s.path(blobsDir, string(alg)))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("list content %s: %w", alg, err)
		}
		for _, e := range entries {
			dgst := digest.NewDigestFromEncoded(alg, e.Name())
			if !e.Type().IsRegular() || dgst.Validate() != nil {
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted while walking
			}
			if err != nil {
				return fmt.Errorf("stat content %s: %w", dgst, err)
			}
			if err := fn(blobInfo(dgst, fi)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Open opens the blob dgst for reading and returns it with its info.
func (s *Store) Open(dgst digest.Digest) (*os.File, Info, error) {
	if err := ValidateDigest(dgst); err != nil {
		return nil, Info{}, err
	}
	f, err := os.Open(s.blobPath(dgst))
	if err != nil {
		return nil, Info{}, blobError("open", dgst, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, Info{}, blobError("stat", dgst, err)
	}
	return f, blobInfo(dgst, fi), nil
}

// Delete removes the blob dgst.
func (s *Store) Delete(dgst digest.Digest) error {
	if err := ValidateDigest(dgst); err != nil {
		return err
	}
	if err := os.Remove(s.blobPath(dgst)); err != nil {
		return blobError("delete", dgst, err)
	}
	return nil
}

// exists reports whether the blob dgst is committed.
func (s *Store) exists(dgst digest.Digest) bool {
	_, err := os.Lstat(s.blobPath(dgst))
	return err == nil
}

// syncDir fsyncs the directory dir, so that entries made in it persist.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %q: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %q: %w", dir, err)
	}
	return nil
}
