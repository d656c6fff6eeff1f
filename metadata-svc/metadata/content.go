package metadata

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/pluginkit/filters"
	plabels "corral.dev/pluginkit/labels"
)

// Keys of the content records drawn in the package doc.
var (
	keyRecord   = []byte("record")
	keyIngests  = []byte("ingests")
	keyLease    = []byte("lease")
	keyExpected = []byte("expected")
	keyExpireAt = []byte("expire-at")
)

// IngestTTL is how long an ingest that no lease holds is kept after its
// last writer started, before the collector aborts it.
const IngestTTL = 24 * time.Hour

// ContentStore keeps each namespace's records of the blobs it may use: the
// digest, size, times and labels. The bytes live in the content plugin.
// Get it from [DB.Content].
type ContentStore struct {
	db *DB
}

// Content returns the store of blob records.
func (db *DB) Content() *ContentStore {
	return &ContentStore{db: db}
}

// ParseDigest returns dgst as a digest, or an error wrapping
// [errdefs.ErrInvalidArgument] if it is not a valid one.
func ParseDigest(dgst string) (digest.Digest, error) {
	d, err := digest.Parse(dgst)
	if err != nil {
		return "", fmt.Errorf("digest %.80q: %v: %w", dgst, err, errdefs.ErrInvalidArgument)
	}
	return d, nil
}

// Info returns the record of blob dgst in namespace ns, or an error wrapping
// [errdefs.ErrNotFound] if the namespace does not hold it.
func (s *ContentStore) Info(ctx context.Context, ns, dgst string) (*contentapi.Info, error) {
	d, err := ParseDigest(dgst)
	if err != nil {
		return nil, err
	}
	var info *contentapi.Info
	err = s.db.view(func(tx *bolt.Tx) error {
		info, err = readBlob(blobsBucket(tx, ns), d)
		return err
	})
	return info, err
}

// Walk calls fn with every record in namespace ns that matches one of the
// filters (containerd's filter language over digest, size and labels), in
// digest order. An error from fn stops the walk and is returned.
func (s *ContentStore) Walk(
	ctx context.Context,
	ns string,
	fn func(*contentapi.Info) error,
	fs ...string,
) error {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return err
	}
	return s.db.view(func(tx *bolt.Tx) error {
		b := blobsBucket(tx, ns)
		if b == nil {
			return nil
		}
		return b.ForEachBucket(func(k []byte) error {
			info, err := readBlob(b, digest.Digest(k))
			if err != nil {
				return err
			}
			if !filter.Match(contentAdaptor(info)) {
				return nil
			}
			return fn(info)
		})
	})
}

// Update changes the labels of blob info.Digest in namespace ns as the field
// paths say ("labels" or "labels.<key>"; none replaces all labels) and
// returns the updated record. Other paths are an
// [errdefs.ErrInvalidArgument].
func (s *ContentStore) Update(
	ctx context.Context,
	ns string,
	info *contentapi.Info,
	paths []string,
) (*contentapi.Info, error) {
	d, err := ParseDigest(info.GetDigest())
	if err != nil {
		return nil, err
	}
	u, err := parseLabelUpdate(info.GetLabels(), paths)
	if err != nil {
		return nil, fmt.Errorf("update content %s: %w", d, err)
	}

	out := &contentapi.Info{}
	err = s.db.update(ctx, out, func(tx *bolt.Tx) error {
		b := blobsBucket(tx, ns)
		cur, err := readBlob(b, d)
		if err != nil {
			return err
		}
		cur.Labels = u.applyMap(cur.GetLabels())
		cur.UpdatedAt = timestamppb.New(s.db.now())
		if err := writeBlob(b.Bucket([]byte(d)), cur); err != nil {
			return err
		}
		proto.Merge(out, cur)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Delete removes the record of blob dgst from namespace ns, or fails with
// [errdefs.ErrNotFound]. The bytes stay until the collector finds that no
// namespace holds them.
func (s *ContentStore) Delete(ctx context.Context, ns, dgst string) error {
	d, err := ParseDigest(dgst)
	if err != nil {
		return err
	}
	return s.db.update(ctx, &emptypb.Empty{}, func(tx *bolt.Tx) error {
		b := blobsBucket(tx, ns)
		if b == nil || b.Bucket([]byte(d)) == nil {
			return fmt.Errorf("content %s: %w", d, errdefs.ErrNotFound)
		}
		if err := b.DeleteBucket([]byte(d)); err != nil {
			return fmt.Errorf("delete content %s: %w", d, err)
		}
		return nil
	})
}

// Hold reports whether namespace ns holds blob dgst, and if so attaches it
// to lease (when not empty), as a writer that names a blob the namespace
// has expects. A lease that does not exist is an [errdefs.ErrNotFound].
func (s *ContentStore) Hold(
	ctx context.Context,
	ns string,
	dgst digest.Digest,
	lease string,
) (bool, error) {
	var held bool
	check := func(tx *bolt.Tx) error {
		b := blobsBucket(tx, ns)
		held = b != nil && b.Bucket([]byte(dgst)) != nil
		return nil
	}
	// A writer without a lease needs no write transaction.
	if err := s.db.view(check); err != nil || !held || lease == "" {
		return held, err
	}
	err := s.db.bdb.Update(func(tx *bolt.Tx) error {
		if err := check(tx); err != nil || !held {
			return err
		}
		return attach(tx, ns, lease, resourceContent, dgst.String())
	})
	return held, err
}

// Add records blob info (digest, size and labels; the times are set here)
// in namespace ns and attaches it to lease (when not empty). The ingest ref
// that wrote it, if any, is forgotten in the same transaction. A blob the
// namespace holds already is an [errdefs.ErrAlreadyExists].
func (s *ContentStore) Add(
	ctx context.Context,
	ns string,
	info *contentapi.Info,
	lease, ref string,
) (*contentapi.Info, error) {
	d, err := ParseDigest(info.GetDigest())
	if err != nil {
		return nil, err
	}
	if err := plabels.ValidateAll(info.GetLabels()); err != nil {
		return nil, fmt.Errorf("add content %s: %w", d, err)
	}
	now := timestamppb.New(s.db.now())
	rec := &contentapi.Info{
		Digest:    d.String(),
		Size:      info.GetSize(),
		CreatedAt: now,
		UpdatedAt: now,
		Labels:    withoutEmpty(info.GetLabels()),
	}
	// A replayed call answers as the first did (see DB.update).
	err = s.db.update(ctx, rec, func(tx *bolt.Tx) error {
		return addBlob(tx, ns, rec, lease, ref)
	})
	if err != nil {
		return nil, err
	}
	return rec, nil
}

func addBlob(tx *bolt.Tx, ns string, rec *contentapi.Info, lease, ref string) error {
	nb, err := ensureNamespace(tx, ns)
	if err != nil {
		return err
	}
	b, err := createPath(nb, keyContent, keyBlobs)
	if err != nil {
		return err
	}
	if b.Bucket([]byte(rec.Digest)) != nil {
		return fmt.Errorf("content %s: %w", rec.Digest, errdefs.ErrAlreadyExists)
	}
	bb, err := b.CreateBucket([]byte(rec.Digest))
	if err != nil {
		return fmt.Errorf("add content %s: %w", rec.Digest, err)
	}
	if err := writeBlob(bb, rec); err != nil {
		return err
	}
	if err := attach(tx, ns, lease, resourceContent, rec.Digest); err != nil {
		return err
	}
	if ref == "" {
		return nil
	}
	if err := detach(tx, ns, lease, resourceIngests, ref); err != nil {
		return err
	}
	return forgetIngest(tx, ns, ref)
}

// StartIngest records that a writer started on ingest ref in namespace ns,
// expecting the digest expected (may be empty), under lease (may be
// empty). An ingest under a lease lives as long as the lease; any other
// expires [IngestTTL] from now.
func (s *ContentStore) StartIngest(ctx context.Context, ns, ref, expected, lease string) error {
	if ref == "" {
		return fmt.Errorf("ingest ref must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	return s.db.bdb.Update(func(tx *bolt.Tx) error {
		nb, err := ensureNamespace(tx, ns)
		if err != nil {
			return err
		}
		ib, err := createPath(nb, keyContent, keyIngests, []byte(ref))
		if err != nil {
			return err
		}
		if err := putIngest(ib, expected, lease, s.db.now().Add(IngestTTL)); err != nil {
			return fmt.Errorf("record ingest %q: %w", ref, err)
		}
		return attach(tx, ns, lease, resourceIngests, ref)
	})
}

// IngestsExpected returns the digest each ingest of namespace ns expects,
// by ref, as its writer named it; an ingest that expects none is left out.
func (s *ContentStore) IngestsExpected(ctx context.Context, ns string) (map[string]string, error) {
	expected := make(map[string]string)
	err := s.db.bdb.View(func(tx *bolt.Tx) error {
		b := bucket(tx, keyNamespaces, []byte(ns), keyContent, keyIngests)
		if b == nil {
			return nil
		}
		return b.ForEachBucket(func(ref []byte) error {
			if v := b.Bucket(ref).Get(keyExpected); len(v) > 0 {
				expected[string(ref)] = string(v)
			}
			return nil
		})
	})
	return expected, err
}

func putIngest(b *bolt.Bucket, expected, lease string, expireAt time.Time) error {
	for k, v := range map[string]string{
		string(keyExpected): expected,
		string(keyLease):    lease,
		string(keyExpireAt): expireAt.UTC().Format(time.RFC3339Nano),
	} {
		if err := b.Put([]byte(k), []byte(v)); err != nil {
			return err
		}
	}
	return nil
}

// ForgetIngest drops the record of ingest ref in namespace ns, after an
// abort. A ref without a record is not an error.
func (s *ContentStore) ForgetIngest(ctx context.Context, ns, ref string) error {
	return s.db.bdb.Update(func(tx *bolt.Tx) error {
		return forgetIngest(tx, ns, ref)
	})
}

func forgetIngest(tx *bolt.Tx, ns, ref string) error {
	b := bucket(tx, keyNamespaces, []byte(ns), keyContent, keyIngests)
	if b == nil || b.Bucket([]byte(ref)) == nil {
		return nil
	}
	if err := b.DeleteBucket([]byte(ref)); err != nil {
		return fmt.Errorf("forget ingest %q: %w", ref, err)
	}
	return nil
}

// blobsBucket returns content/blobs of namespace ns, or nil.
func blobsBucket(tx *bolt.Tx, ns string) *bolt.Bucket {
	return bucket(tx, keyNamespaces, []byte(ns), keyContent, keyBlobs)
}

// readBlob decodes the record of blob d in the blobs bucket b.
func readBlob(b *bolt.Bucket, d digest.Digest) (*contentapi.Info, error) {
	var bb *bolt.Bucket
	if b != nil {
		bb = b.Bucket([]byte(d))
	}
	if bb == nil {
		return nil, fmt.Errorf("content %s: %w", d, errdefs.ErrNotFound)
	}
	return decodeBlob(bb, d)
}

func decodeBlob(bb *bolt.Bucket, d digest.Digest) (*contentapi.Info, error) {
	raw := bb.Get(keyRecord)
	if raw == nil {
		return nil, fmt.Errorf("content %s: no record: %w", d, errdefs.ErrDataLoss)
	}
	info := &contentapi.Info{}
	if err := proto.Unmarshal(raw, info); err != nil {
		return nil, fmt.Errorf("decode content %s: %v: %w", d, err, errdefs.ErrDataLoss)
	}
	return info, nil
}

// writeBlob stores info as the record in its digest's bucket bb.
func writeBlob(bb *bolt.Bucket, info *contentapi.Info) error {
	raw, err := proto.Marshal(info)
	if err != nil {
		return fmt.Errorf("encode content %s: %w", info.GetDigest(), err)
	}
	if err := bb.Put(keyRecord, raw); err != nil {
		return fmt.Errorf("store content %s: %w", info.GetDigest(), err)
	}
	return nil
}

// createPath creates the buckets along path below b that do not exist yet
// and returns the last.
func createPath(b *bolt.Bucket, path ...[]byte) (*bolt.Bucket, error) {
	var err error
	for _, k := range path {
		if b, err = b.CreateBucketIfNotExists(k); err != nil {
			return nil, fmt.Errorf("create bucket %q: %w", k, err)
		}
	}
	return b, nil
}

// contentAdaptor exposes a record to filters: digest, size and
// labels.<key>.
func contentAdaptor(info *contentapi.Info) filters.Adaptor {
	return filters.AdapterFunc(func(fp []string) (string, bool) {
		switch {
		case len(fp) == 0:
			return "", false
		case fp[0] == "digest":
			return info.GetDigest(), true
		case fp[0] == "size":
			return strconv.FormatInt(info.GetSize(), 10), true
		}
		return labelField(info.GetLabels(), fp)
	})
}

// labelField is the labels.<key> part of an adaptor.
func labelField(labels map[string]string, fp []string) (string, bool) {
	if len(fp) < 2 || fp[0] != "labels" {
		return "", false
	}
	v, ok := labels[strings.Join(fp[1:], ".")]
	return v, ok
}

// applyMap returns labels with the update applied; labels is not changed.
func (u labelUpdate) applyMap(labels map[string]string) map[string]string {
	out := make(map[string]string, len(labels))
	if !u.replace {
		for k, v := range labels {
			out[k] = v
		}
	}
	edits := u.labels
	if !u.replace {
		edits = make(map[string]string, len(u.keys))
		for _, k := range u.keys {
			edits[k] = u.labels[k]
		}
	}
	for k, v := range edits {
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}

// withoutEmpty returns the labels that have a value, as stored.
func withoutEmpty(labels map[string]string) map[string]string {
	out := make(map[string]string, len(labels))
	for k, v := range labels {
		if v != "" {
			out[k] = v
		}
	}
	return out
}
