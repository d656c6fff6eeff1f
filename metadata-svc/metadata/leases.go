package metadata

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/pluginkit/filters"
	plabels "corral.dev/pluginkit/labels"
)

// Labels of a lease that the collector reads.
const (
	// LabelExpire holds the RFC 3339 time after which the lease no longer
	// holds anything.
	LabelExpire = "containerd.io/gc.expire"
	// LabelFlat makes a lease keep only what is attached to it, not what
	// that refers to.
	LabelFlat = "containerd.io/gc.flat"
)

// Resource types a lease can hold.
const (
	resourceContent   = "content"
	resourceIngests   = "ingests"
	resourceSnapshots = "snapshots"
)

var (
	keyLeases    = []byte("leases")
	keyResources = []byte("resources")
)

// LeaseStore keeps the leases of each namespace and the resources attached
// to them. Get it from [DB.Leases].
type LeaseStore struct {
	db *DB
}

// Leases returns the store of leases.
func (db *DB) Leases() *LeaseStore {
	return &LeaseStore{db: db}
}

// Create creates lease id in namespace ns with labels, creating the
// namespace if needed. An empty id makes the store pick one of the form
// "<nanoseconds>-<4 random characters>". An existing id is an
// [errdefs.ErrAlreadyExists].
func (s *LeaseStore) Create(
	ctx context.Context,
	ns, id string,
	labels map[string]string,
) (*leasesapi.Lease, error) {
	if err := plabels.ValidateAll(labels); err != nil {
		return nil, fmt.Errorf("create lease %q: %w", id, err)
	}
	out := &leasesapi.Lease{}
	err := s.db.update(ctx, out, func(tx *bolt.Tx) error {
		l := &leasesapi.Lease{
			ID:        id,
			CreatedAt: timestamppb.New(s.db.now()),
			Labels:    withoutEmpty(labels),
		}
		if l.ID == "" {
			l.ID = newLeaseID(s.db.now())
		}
		if err := createLease(tx, ns, l); err != nil {
			return err
		}
		proto.Merge(out, l)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func createLease(tx *bolt.Tx, ns string, l *leasesapi.Lease) error {
	if err := validateLeaseID(l.ID); err != nil {
		return fmt.Errorf("create lease: %w", err)
	}
	nb, err := ensureNamespace(tx, ns)
	if err != nil {
		return err
	}
	lb, err := createPath(nb, keyLeases)
	if err != nil {
		return err
	}
	if lb.Bucket([]byte(l.ID)) != nil {
		return fmt.Errorf("lease %q: %w", l.ID, errdefs.ErrAlreadyExists)
	}
	b, err := lb.CreateBucket([]byte(l.ID))
	if err != nil {
		return fmt.Errorf("create lease %q: %w", l.ID, err)
	}
	raw, err := proto.Marshal(l)
	if err == nil {
		err = b.Put(keyRecord, raw)
	}
	if err != nil {
		return fmt.Errorf("store lease %q: %w", l.ID, err)
	}
	return nil
}

// idChars are the characters of the random part of a generated lease id:
// base64url without "-" and "_", so that every id is a valid identifier.
const idChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// newLeaseID returns an id in the form containerd's clients make them.
func newLeaseID(now time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	for i := range b {
		b[i] = idChars[int(b[i])%len(idChars)]
	}
	return fmt.Sprintf("%d-%s", now.Nanosecond(), b[:])
}

// Delete deletes lease id of namespace ns and what it records. The
// resources it held stay until the collector finds nothing else holds
// them. A missing lease is an [errdefs.ErrNotFound].
func (s *LeaseStore) Delete(ctx context.Context, ns, id string) error {
	return s.db.update(ctx, &emptypb.Empty{}, func(tx *bolt.Tx) error {
		lb := bucket(tx, keyNamespaces, []byte(ns), keyLeases)
		if lb == nil || lb.Bucket([]byte(id)) == nil {
			return fmt.Errorf("lease %q: %w", id, errdefs.ErrNotFound)
		}
		if err := lb.DeleteBucket([]byte(id)); err != nil {
			return fmt.Errorf("delete lease %q: %w", id, err)
		}
		return nil
	})
}

// List returns the leases of namespace ns that match one of the filters
// (over id and labels.<key>), sorted by id.
func (s *LeaseStore) List(
	ctx context.Context,
	ns string,
	fs ...string,
) ([]*leasesapi.Lease, error) {
	filter, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, err
	}
	var list []*leasesapi.Lease
	err = s.db.view(func(tx *bolt.Tx) error {
		return forEachLease(tx, ns, func(l *leasesapi.Lease, _ *bolt.Bucket) error {
			if filter.Match(leaseAdaptor(l)) {
				list = append(list, l)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return list, nil
}

// forEachLease calls fn with every lease of namespace ns and its bucket.
func forEachLease(tx *bolt.Tx, ns string, fn func(*leasesapi.Lease, *bolt.Bucket) error) error {
	lb := bucket(tx, keyNamespaces, []byte(ns), keyLeases)
	if lb == nil {
		return nil
	}
	return lb.ForEachBucket(func(k []byte) error {
		b := lb.Bucket(k)
		l, err := decodeLease(b, string(k))
		if err != nil {
			return err
		}
		return fn(l, b)
	})
}

func decodeLease(b *bolt.Bucket, id string) (*leasesapi.Lease, error) {
	raw := b.Get(keyRecord)
	if raw == nil {
		return nil, fmt.Errorf("lease %q: no record: %w", id, errdefs.ErrDataLoss)
	}
	l := &leasesapi.Lease{}
	if err := proto.Unmarshal(raw, l); err != nil {
		return nil, fmt.Errorf("decode lease %q: %v: %w", id, err, errdefs.ErrDataLoss)
	}
	return l, nil
}

// AddResource attaches r to lease id of namespace ns. Resource types are
// "content" (id: a digest), "ingests" (id: an ingest ref) and
// "snapshots/<snapshotter>" (id: a snapshot key).
func (s *LeaseStore) AddResource(ctx context.Context, ns, id string, r *leasesapi.Resource) error {
	typ, rid, err := parseResource(r)
	if err != nil {
		return err
	}
	return s.db.update(ctx, &emptypb.Empty{}, func(tx *bolt.Tx) error {
		return attach(tx, ns, id, typ, rid)
	})
}

// DeleteResource detaches r from lease id of namespace ns. A resource the
// lease does not hold is not an error.
func (s *LeaseStore) DeleteResource(
	ctx context.Context,
	ns,
	id string,
	r *leasesapi.Resource,
) error {
	typ, rid, err := parseResource(r)
	if err != nil {
		return err
	}
	return s.db.update(ctx, &emptypb.Empty{}, func(tx *bolt.Tx) error {
		if _, err := leaseBucket(tx, ns, id); err != nil {
			return err
		}
		return detach(tx, ns, id, typ, rid)
	})
}

// ListResources returns the resources attached to lease id of namespace ns.
func (s *LeaseStore) ListResources(
	ctx context.Context,
	ns,
	id string,
) ([]*leasesapi.Resource, error) {
	var list []*leasesapi.Resource
	err := s.db.view(func(tx *bolt.Tx) error {
		b, err := leaseBucket(tx, ns, id)
		if err != nil {
			return err
		}
		return walkResources(b.Bucket(keyResources), func(typ, rid string) error {
			list = append(list, &leasesapi.Resource{ID: rid, Type: typ})
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return list, nil
}

// walkResources calls fn with the type and id of every resource in the
// resources bucket rb (which may be nil).
func walkResources(rb *bolt.Bucket, fn func(typ, id string) error) error {
	if rb == nil {
		return nil
	}
	for _, typ := range []string{resourceContent, resourceIngests} {
		if err := walkKeys(rb.Bucket([]byte(typ)), typ, fn); err != nil {
			return err
		}
	}
	sb := rb.Bucket([]byte(resourceSnapshots))
	if sb == nil {
		return nil
	}
	return sb.ForEachBucket(func(sn []byte) error {
		return walkKeys(sb.Bucket(sn), resourceSnapshots+"/"+string(sn), fn)
	})
}

func walkKeys(b *bolt.Bucket, typ string, fn func(typ, id string) error) error {
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, _ []byte) error {
		if b.Bucket(k) != nil {
			return nil
		}
		return fn(typ, string(k))
	})
}

// leaseBucket returns the bucket of lease id in namespace ns, or an
// [errdefs.ErrNotFound].
func leaseBucket(tx *bolt.Tx, ns, id string) (*bolt.Bucket, error) {
	b := bucket(tx, keyNamespaces, []byte(ns), keyLeases, []byte(id))
	if b == nil {
		return nil, fmt.Errorf("lease %q: %w", id, errdefs.ErrNotFound)
	}
	return b, nil
}

// attach records resource typ/id in lease of namespace ns. An empty lease
// attaches nothing; a lease that does not exist is an
// [errdefs.ErrNotFound].
func attach(tx *bolt.Tx, ns, lease, typ, id string) error {
	if lease == "" {
		return nil
	}
	b, err := leaseBucket(tx, ns, lease)
	if err != nil {
		return err
	}
	path := [][]byte{keyResources}
	for _, k := range strings.Split(typ, "/") {
		path = append(path, []byte(k))
	}
	rb, err := createPath(b, path...)
	if err != nil {
		return err
	}
	if err := rb.Put([]byte(id), []byte{}); err != nil {
		return fmt.Errorf("attach %s %q to lease %q: %w", typ, id, lease, err)
	}
	return nil
}

// detach removes resource typ/id from lease of namespace ns, if the lease
// exists and holds it.
func detach(tx *bolt.Tx, ns, lease, typ, id string) error {
	rb := bucket(tx, keyNamespaces, []byte(ns), keyLeases, []byte(lease), keyResources)
	for _, k := range strings.Split(typ, "/") {
		if rb == nil {
			return nil
		}
		rb = rb.Bucket([]byte(k))
	}
	if rb == nil || lease == "" {
		return nil
	}
	if err := rb.Delete([]byte(id)); err != nil {
		return fmt.Errorf("detach %s %q from lease %q: %w", typ, id, lease, err)
	}
	return nil
}

// parseResource validates r and returns its type and id as stored.
func parseResource(r *leasesapi.Resource) (typ, id string, err error) {
	typ, id = r.GetType(), r.GetID()
	if id == "" {
		return "", "", fmt.Errorf("lease resource of type %q has no id: %w",
			typ, errdefs.ErrInvalidArgument)
	}
	parts := strings.Split(typ, "/")
	switch {
	case typ == resourceContent:
		d, err := ParseDigest(id)
		return typ, d.String(), err
	case typ == resourceIngests:
		return typ, id, nil
	case parts[0] == resourceSnapshots && len(parts) == 2 && parts[1] != "":
		return typ, id, nil
	case parts[0] == resourceSnapshots:
		return "", "", fmt.Errorf("lease resource type %q: %w", typ, errdefs.ErrInvalidArgument)
	}
	return "", "", fmt.Errorf("lease resource type %q: %w", typ, errdefs.ErrNotImplemented)
}

// leaseAdaptor exposes a lease to filters: id and labels.<key>.
func leaseAdaptor(l *leasesapi.Lease) filters.Adaptor {
	return filters.AdapterFunc(func(fp []string) (string, bool) {
		if len(fp) == 1 && fp[0] == "id" {
			return l.GetID(), true
		}
		return labelField(l.GetLabels(), fp)
	})
}

// leaseExpiry returns when lease l expires, or false if it does not. A
// value that does not parse is ignored, as containerd does, so that the
// lease keeps what it holds.
func leaseExpiry(l *leasesapi.Lease) (time.Time, bool) {
	v, ok := l.GetLabels()[LabelExpire]
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

// LeaseExpiry returns when the lease with labels expires, or false if it
// does not.
func LeaseExpiry(labels map[string]string) (time.Time, bool) {
	return leaseExpiry(&leasesapi.Lease{Labels: labels})
}

// maxLeaseIDLength bounds lease ids; containerd's clients make ids of about
// fifteen characters.
const maxLeaseIDLength = 256

// validateLeaseID accepts the ids containerd's clients make. They are not
// identifiers: the Go client's random ids ("<nanos>-<base64url>") may hold
// "_" and "-" side by side, so only emptiness, length and control
// characters are refused.
func validateLeaseID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("lease id must not be empty: %w", errdefs.ErrInvalidArgument)
	case len(id) > maxLeaseIDLength:
		return fmt.Errorf("lease id %.32q... is longer than %d bytes: %w", id, maxLeaseIDLength, errdefs.ErrInvalidArgument)
	case !utf8.ValidString(id) || strings.IndexFunc(id, unicode.IsControl) >= 0:
		return fmt.Errorf("lease id %q must be printable text: %w", id, errdefs.ErrInvalidArgument)
	}
	return nil
}
