package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"

	"corral.dev/pluginkit/filters"
)

// Files of an ingest directory.
const (
	refFile       = "ref"
	dataFile      = "data"
	startedAtFile = "startedat"
	totalFile     = "total"
	expectedFile  = "expected"
	tmpPrefix     = ".tmp-"
)

// Status describes an ingest: a ref's bytes written so far.
type Status struct {
	Ref       string
	Offset    int64
	Total     int64
	Expected  digest.Digest
	StartedAt time.Time
	UpdatedAt time.Time
}

// ingest is what an ingest directory holds besides its data.
type ingest struct {
	dir       string
	ref       string
	total     int64
	expected  digest.Digest
	startedAt time.Time
}

// ingestDir returns the directory of ref's ingest: the ref is hashed, never
// used as a path.
func (s *Store) ingestDir(ref string) string {
	sum := sha256.Sum256([]byte(ref))
	return s.path(ingestDir, hex.EncodeToString(sum[:]))
}

func (in *ingest) data() string {
	return filepath.Join(in.dir, dataFile)
}

// readIngest reads the ingest in dir. A missing directory is
// [fs.ErrNotExist]; any other problem means the directory is not a usable
// ingest.
func readIngest(dir string) (*ingest, error) {
	ref, err := os.ReadFile(filepath.Join(dir, refFile))
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(ref)
	if hex.EncodeToString(sum[:]) != filepath.Base(dir) {
		return nil, fmt.Errorf("ingest %q holds another ref", dir)
	}
	in := &ingest{dir: dir, ref: string(ref)}
	if in.startedAt, err = readTime(filepath.Join(dir, startedAtFile)); err != nil {
		return nil, err
	}
	if in.total, err = readTotal(filepath.Join(dir, totalFile)); err != nil {
		return nil, err
	}
	if in.expected, err = readExpected(filepath.Join(dir, expectedFile)); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(in.data()); err != nil {
		return nil, err
	}
	return in, nil
}

func readTime(path string) (time.Time, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	return time.Parse(time.RFC3339Nano, string(b))
}

func readTotal(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(string(b), 10, 64)
}

func readExpected(path string) (digest.Digest, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	dgst := digest.Digest(b)
	return dgst, ValidateDigest(dgst)
}

// createIngest makes a fresh ingest for ref. Its files are written in a
// temporary directory renamed into place, so a crash never leaves an ingest
// with missing files under its final name.
func (s *Store) createIngest(ref string, total int64, expected digest.Digest) (*ingest, error) {
	tmp, err := os.MkdirTemp(s.path(ingestDir), tmpPrefix)
	if err != nil {
		return nil, fmt.Errorf("create ingest %s: %w", ref, err)
	}
	defer os.RemoveAll(tmp)

	in := &ingest{dir: tmp, ref: ref, total: total, expected: expected, startedAt: time.Now()}
	files := map[string]string{
		refFile:       ref,
		startedAtFile: in.startedAt.Format(time.RFC3339Nano),
		dataFile:      "",
	}
	if total > 0 {
		files[totalFile] = strconv.FormatInt(total, 10)
	}
	if expected != "" {
		files[expectedFile] = string(expected)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(tmp, name), []byte(content), 0o600); err != nil {
			return nil, fmt.Errorf("create ingest %s: %w", ref, err)
		}
	}

	in.dir = s.ingestDir(ref)
	if err := os.Rename(tmp, in.dir); err != nil {
		return nil, fmt.Errorf("create ingest %s: %w", ref, err)
	}
	return in, nil
}

// setTotal records a size for an ingest that had none.
func (in *ingest) setTotal(total int64) error {
	path := filepath.Join(in.dir, totalFile)
	if err := os.WriteFile(path, []byte(strconv.FormatInt(total, 10)), 0o600); err != nil {
		return fmt.Errorf("record size of ingest %s: %w", in.ref, err)
	}
	in.total = total
	return nil
}

// recoverIngests removes the ingests a crash left unusable and returns how
// many it kept and removed.
func (s *Store) recoverIngests() (kept, removed int, err error) {
	root := s.path(ingestDir)
	entries, err := os.ReadDir(root)
	if err != nil {
		return 0, 0, fmt.Errorf("list ingests: %w", err)
	}
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		if !strings.HasPrefix(e.Name(), tmpPrefix) && e.IsDir() {
			_, rerr := readIngest(dir)
			if rerr == nil {
				kept++
				continue
			}
			s.log.Warn().Err(rerr).Str("dir", dir).Msg("remove unusable ingest")
		}
		if err := os.RemoveAll(dir); err != nil {
			return kept, removed, fmt.Errorf("remove ingest %q: %w", dir, err)
		}
		removed++
	}
	return kept, removed, nil
}

// Status returns the status of ref's ingest.
func (s *Store) Status(ref string) (Status, error) {
	if w := s.holder(ref); w != nil {
		return w.Status(), nil
	}
	in, err := readIngest(s.ingestDir(ref))
	if err != nil {
		return Status{}, ingestError("stat", ref, err)
	}
	return in.status()
}

// status reads the offset and modification time of an idle ingest's data.
func (in *ingest) status() (Status, error) {
	fi, err := os.Lstat(in.data())
	if err != nil {
		return Status{}, ingestError("stat", in.ref, err)
	}
	return Status{
		Ref:       in.ref,
		Offset:    fi.Size(),
		Total:     in.total,
		Expected:  in.expected,
		StartedAt: in.startedAt,
		UpdatedAt: fi.ModTime(),
	}, nil
}

// ingestError wraps err from doing op on ref's ingest, classifying a
// missing ingest as [errdefs.ErrNotFound] and a full disk as
// [errdefs.ErrResourceExhausted].
func ingestError(op, ref string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s ingest %s: %w", op, ref, errdefs.ErrNotFound)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("%s ingest %s: %w: %w", op, ref, err, errdefs.ErrResourceExhausted)
	}
	return fmt.Errorf("%s ingest %s: %w", op, ref, err)
}

// ListStatuses returns the status of every ingest that matches any of
// the filters (containerd's filter language over the fields ref, expected,
// offset and total); no filter matches every ingest.
func (s *Store) ListStatuses(fs ...string) ([]Status, error) {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("parse filters: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	entries, err := os.ReadDir(s.path(ingestDir))
	if err != nil {
		return nil, fmt.Errorf("list ingests: %w", err)
	}
	var list []Status
	for _, e := range entries {
		st, ok := s.statusOf(e.Name())
		if ok && filter.Match(statusAdaptor(st)) {
			list = append(list, st)
		}
	}
	return list, nil
}

// statusOf returns the status of the ingest directory name, if it is one.
func (s *Store) statusOf(name string) (Status, bool) {
	if strings.HasPrefix(name, tmpPrefix) {
		return Status{}, false
	}
	in, err := readIngest(s.path(ingestDir, name))
	if err != nil {
		return Status{}, false // committed or aborted meanwhile, or being made
	}
	if w := s.holder(in.ref); w != nil {
		return w.Status(), true
	}
	st, err := in.status()
	return st, err == nil
}

// statusAdaptor exposes a status to a filter.
func statusAdaptor(st Status) filters.Adaptor {
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) != 1 {
			return "", false
		}
		switch fieldpath[0] {
		case "ref":
			return st.Ref, st.Ref != ""
		case "expected":
			return string(st.Expected), st.Expected != ""
		case "offset":
			return strconv.FormatInt(st.Offset, 10), true
		case "total":
			return strconv.FormatInt(st.Total, 10), st.Total > 0
		}
		return "", false
	})
}

// Abort removes ref's ingest and its data. An ingest a writer holds is not
// removed: that is [errdefs.ErrUnavailable].
func (s *Store) Abort(ref string) error {
	if err := s.lock(ref, nil); err != nil {
		return err
	}
	defer s.unlock(ref, nil)

	dir := s.ingestDir(ref)
	if _, err := os.Lstat(dir); err != nil {
		return ingestError("abort", ref, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return ingestError("abort", ref, err)
	}
	return nil
}

// lock makes w the holder of ref, or fails with [errdefs.ErrUnavailable]
// if ref is held. A nil w holds the ref for the store itself.
func (s *Store) lock(ref string, w *Writer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, held := s.locks[ref]; held {
		return fmt.Errorf("ref %s locked: %w", ref, errdefs.ErrUnavailable)
	}
	s.locks[ref] = w
	return nil
}

// unlock releases ref if w holds it.
func (s *Store) unlock(ref string, w *Writer) {
	s.mu.Lock()
	if held, ok := s.locks[ref]; ok && held == w {
		delete(s.locks, ref)
	}
	s.mu.Unlock()
}

// holder returns the writer holding ref, if any.
func (s *Store) holder(ref string) *Writer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.locks[ref]
}
