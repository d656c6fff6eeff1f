package store

import (
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Writer appends to one ingest. It holds the ingest's ref until Close, so
// no other writer can open it meanwhile. A Writer is used by one goroutine;
// Status may be called from any.
type Writer struct {
	s  *Store
	in *ingest
	f  *os.File
	fw *fileWriter

	alg  digest.Algorithm
	hash hash.Hash
	done bool // committed: the ingest is gone

	mu        sync.Mutex // guards offset and updatedAt for Status
	offset    int64
	updatedAt time.Time
}

// Writer opens ref's ingest for writing, creating it or resuming it where
// an earlier writer stopped (Status reports that offset). total and
// expected, when set, are the size and digest the content must have.
//
// It fails with [errdefs.ErrAlreadyExists] if the blob expected is
// committed (an idle ingest for ref is then removed), and with
// [errdefs.ErrUnavailable] while another writer holds ref.
func (s *Store) Writer(ref string, total int64, expected digest.Digest) (*Writer, error) {
	if ref == "" {
		return nil, fmt.Errorf("open writer: ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if expected != "" {
		if err := ValidateDigest(expected); err != nil {
			return nil, err
		}
		if s.exists(expected) {
			s.dropIngest(ref)
			return nil, fmt.Errorf("open writer %s: content %s: %w", ref, expected, errdefs.ErrAlreadyExists)
		}
	}

	r, err := s.Reserve(ref)
	if err != nil {
		return nil, err
	}
	return r.Open(total, expected)
}

// Reservation holds an ingest's ref for a writer about to be opened, and
// leaves the ingest as it is meanwhile: no other writer and no abort can
// take the ref until the reservation is opened or released.
type Reservation struct {
	s    *Store
	ref  string
	done bool
}

// Reserve holds ref. It fails with [errdefs.ErrUnavailable] while a writer
// or another reservation holds ref.
func (s *Store) Reserve(ref string) (*Reservation, error) {
	if ref == "" {
		return nil, fmt.Errorf("reserve ingest: ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	if err := s.lock(ref, nil); err != nil {
		return nil, err
	}
	return &Reservation{s: s, ref: ref}, nil
}

// Open opens the reserved ref's writer as [Store.Writer] does, except that
// it does not look for the blob expected, and hands the ref to it. The
// reservation is spent either way.
func (r *Reservation) Open(total int64, expected digest.Digest) (*Writer, error) {
	if r.done {
		return nil, fmt.Errorf("open writer %s: reservation spent: %w", r.ref, errdefs.ErrFailedPrecondition)
	}
	w, err := r.s.openWriter(r.ref, total, expected)
	if err != nil {
		r.Release()
		return nil, err
	}
	r.done = true
	r.s.mu.Lock()
	r.s.locks[r.ref] = w
	r.s.mu.Unlock()
	return w, nil
}

// Release gives the ref up if the reservation was not opened.
func (r *Reservation) Release() {
	if !r.done {
		r.done = true
		r.s.unlock(r.ref, nil)
	}
}

// dropIngest removes ref's ingest if no writer holds it.
func (s *Store) dropIngest(ref string) {
	if err := s.Abort(ref); err != nil && !errdefs.IsNotFound(err) {
		s.log.Debug().Err(err).Str("key", ref).Msg("keep ingest of existing content")
	}
}

// openWriter loads or creates ref's ingest and positions a writer at its
// end. The caller holds ref.
func (s *Store) openWriter(ref string, total int64, expected digest.Digest) (*Writer, error) {
	in, err := s.loadIngest(ref, total)
	if err != nil {
		return nil, err
	}
	if in == nil {
		if in, err = s.createIngest(ref, total, expected); err != nil {
			return nil, err
		}
	}
	if expected == "" {
		expected = in.expected
	}

	f, err := os.OpenFile(in.data(), os.O_RDWR, 0)
	if err != nil {
		return nil, ingestError("open", ref, err)
	}
	w := &Writer{s: s, in: in, f: f, alg: digest.Canonical}
	if expected != "" {
		w.alg = expected.Algorithm()
	}
	if err := w.resume(); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// loadIngest returns ref's existing ingest, or nil if there is none to
// resume. An unreadable ingest, or one sized for another total, is removed.
func (s *Store) loadIngest(ref string, total int64) (*ingest, error) {
	dir := s.ingestDir(ref)
	in, err := readIngest(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, serr := os.Lstat(dir); errors.Is(serr, fs.ErrNotExist) {
			return nil, nil
		}
	case err == nil && (total <= 0 || in.total <= 0 || in.total == total):
		if total > 0 && in.total <= 0 {
			return in, in.setTotal(total)
		}
		return in, nil
	case err == nil:
		err = fmt.Errorf("size %d differs from the ingest's %d", total, in.total)
	}

	s.log.Warn().Err(err).Str("key", ref).Msg("restart ingest")
	if err := os.RemoveAll(dir); err != nil {
		return nil, ingestError("reset", ref, err)
	}
	return nil, nil
}

// resume hashes the bytes already in the data file and moves to its end.
func (w *Writer) resume() error {
	w.hash = w.alg.Hash()
	n, err := io.Copy(w.hash, w.f)
	if err != nil {
		return ingestError("resume", w.in.ref, err)
	}
	w.offset = n
	w.fw = newFileWriter(w.f, n)
	w.updatedAt = w.in.startedAt
	if fi, err := w.f.Stat(); err == nil {
		w.updatedAt = fi.ModTime()
	}
	return nil
}

// Ref returns the ref the writer holds.
func (w *Writer) Ref() string {
	return w.in.ref
}

// Status returns the ingest's current status.
func (w *Writer) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Status{
		Ref:       w.in.ref,
		Offset:    w.offset,
		Total:     w.in.total,
		Expected:  w.in.expected,
		StartedAt: w.in.startedAt,
		UpdatedAt: w.updatedAt,
	}
}

// Offset returns the number of bytes written so far.
func (w *Writer) Offset() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.offset
}

// Digest returns the digest of the bytes written so far.
func (w *Writer) Digest() digest.Digest {
	return digest.NewDigest(w.alg, w.hash)
}

// Write appends p to the ingest. The bytes reach the file in the
// background; an error writing them is returned by a later call.
func (w *Writer) Write(p []byte) (int, error) {
	return w.write(p, false)
}

// Append is Write for a chunk the caller hands over: the writer may keep
// p until it is written, so the caller must not change it afterwards. A
// large p reaches the file without being copied.
func (w *Writer) Append(p []byte) (int, error) {
	return w.write(p, true)
}

func (w *Writer) write(p []byte, owned bool) (int, error) {
	if w.done {
		return 0, w.committedError("write")
	}
	if err := w.fw.append(p, owned); err != nil {
		return 0, ingestError("write", w.in.ref, err)
	}
	w.hash.Write(p)
	w.advance(int64(len(p)))
	return len(p), nil
}

func (w *Writer) advance(n int64) {
	w.mu.Lock()
	w.offset += n
	w.updatedAt = time.Now()
	w.mu.Unlock()
}

// committedError is the error of doing op on a writer after its commit.
func (w *Writer) committedError(op string) error {
	return fmt.Errorf("%s ingest %s: already committed: %w", op, w.in.ref, errdefs.ErrFailedPrecondition)
}

// Truncate drops every byte written so far; only a size of 0 is supported.
func (w *Writer) Truncate(size int64) error {
	if size != 0 {
		return fmt.Errorf("truncate ingest %s to %d: only 0 is supported: %w",
			w.in.ref, size, errdefs.ErrInvalidArgument)
	}
	if w.done {
		return w.committedError("truncate")
	}
	w.fw.reset(0)
	if err := w.f.Truncate(0); err != nil {
		return ingestError("truncate", w.in.ref, err)
	}
	if _, err := w.f.Seek(0, io.SeekStart); err != nil {
		return ingestError("truncate", w.in.ref, err)
	}
	w.hash.Reset()
	w.mu.Lock()
	w.offset = 0
	w.updatedAt = time.Now()
	w.mu.Unlock()
	return nil
}

// Commit makes the bytes written the blob of their digest. size and
// expected, when set, must match, otherwise the error wraps
// [errdefs.ErrFailedPrecondition] and the ingest is kept as it is. If the
// blob is already committed the error wraps [errdefs.ErrAlreadyExists]
// (the bytes did match) and the existing blob is left untouched. Either
// way the ingest is then removed and its ref released. Commit returns once
// the blob and its directory entry are on disk.
func (w *Writer) Commit(size int64, expected digest.Digest) (digest.Digest, error) {
	if w.done {
		return "", w.committedError("commit")
	}
	// Put every byte on disk.
	if err := w.fw.flush(); err != nil {
		return "", ingestError("flush", w.in.ref, err)
	}
	if err := w.f.Sync(); err != nil {
		return "", ingestError("sync", w.in.ref, err)
	}

	// Check what was written against what was promised.
	dgst, err := w.verify(size, expected)
	if err != nil {
		return "", err
	}

	// Rename the data into blobs/ and forget the ingest.
	perr := w.s.publish(w.in.data(), dgst)
	if perr != nil && !errdefs.IsAlreadyExists(perr) {
		return "", perr
	}
	w.done = true
	w.fw.close()
	w.f.Close()
	if err := os.RemoveAll(w.in.dir); err != nil {
		w.s.log.Warn().Err(err).Str("key", w.in.ref).Msg("remove committed ingest")
	}
	w.s.unlock(w.in.ref, w)
	return dgst, perr
}

// verify checks the size and digest of the bytes written.
func (w *Writer) verify(size int64, expected digest.Digest) (digest.Digest, error) {
	offset := w.Offset()
	if size > 0 && size != offset {
		return "", fmt.Errorf("commit ingest %s: size %d, expected %d: %w",
			w.in.ref, offset, size, errdefs.ErrFailedPrecondition)
	}
	if expected == "" {
		expected = w.in.expected
	}
	if expected == "" {
		return w.Digest(), nil
	}
	if err := ValidateDigest(expected); err != nil {
		return "", err
	}
	dgst, err := w.digestAs(expected.Algorithm())
	if err != nil {
		return "", err
	}
	if dgst != expected {
		return "", fmt.Errorf("commit ingest %s: digest %s, expected %s: %w",
			w.in.ref, dgst, expected, errdefs.ErrFailedPrecondition)
	}
	return dgst, nil
}

// digestAs returns the digest of the data with alg, hashing the file again
// when the writer hashed with another algorithm.
func (w *Writer) digestAs(alg digest.Algorithm) (digest.Digest, error) {
	if alg == w.alg {
		return w.Digest(), nil
	}
	f, err := os.Open(w.in.data())
	if err != nil {
		return "", ingestError("hash", w.in.ref, err)
	}
	defer f.Close()
	dgst, err := alg.FromReader(f)
	if err != nil {
		return "", ingestError("hash", w.in.ref, err)
	}
	return dgst, nil
}

// errNoRenameNoReplace is renameNoReplace's answer where the file system
// cannot rename without replacing.
var errNoRenameNoReplace = errors.New("rename without replacing not supported")

// publish renames the synced file src into blobs/ as dgst and syncs the
// directory. An existing blob is never replaced.
func (s *Store) publish(src string, dgst digest.Digest) error {
	dir := s.path(blobsDir, string(dgst.Algorithm()))
	if err := s.makeBlobDir(dir); err != nil {
		return err
	}
	target := filepath.Join(dir, dgst.Encoded())
	err := renameNoReplace(src, target)
	if errors.Is(err, errNoRenameNoReplace) {
		// Check, then rename: a blob committed in between is replaced by
		// the same bytes.
		if _, serr := os.Lstat(target); serr == nil {
			err = os.ErrExist
		} else {
			err = os.Rename(src, target)
		}
	}
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("commit content %s: %w", dgst, errdefs.ErrAlreadyExists)
	}
	if err != nil {
		return blobError("commit", dgst, err)
	}
	if err := os.Chmod(target, 0o444); err != nil {
		s.log.Warn().Err(err).Str("digest", dgst.String()).Msg("make blob read-only")
	}
	return syncDir(dir)
}

// makeBlobDir creates the directory of one algorithm's blobs, durably.
func (s *Store) makeBlobDir(dir string) error {
	if _, err := os.Lstat(dir); err == nil {
		return nil
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create blob directory %q: %w", dir, err)
	}
	return syncDir(filepath.Dir(dir))
}

// Close flushes what was written, so a later writer can resume it, and
// releases the ref.
func (w *Writer) Close() error {
	defer w.s.unlock(w.in.ref, w)
	if w.done {
		return nil
	}
	w.done = true
	ferr := w.fw.close()
	cerr := w.f.Close()
	if err := errors.Join(ferr, cerr); err != nil {
		return ingestError("close", w.in.ref, err)
	}
	return nil
}
