package metadata

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/pluginkit/identifiers"
)

// keyObjectRecord is the key under which the bucket of an image or a
// container holds its proto-marshalled record.
var keyObjectRecord = []byte("record")

type epochKey struct{}

// WithSourceDateEpoch returns a copy of ctx that makes the image and
// container stores stamp the records they create or update with t instead
// of the current time, as a client asks with source_date_epoch.
func WithSourceDateEpoch(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, epochKey{}, t)
}

// stamp returns the time to record as created_at or updated_at of a write
// made for ctx.
func (db *DB) stamp(ctx context.Context) *timestamppb.Timestamp {
	if t, ok := ctx.Value(epochKey{}).(time.Time); ok {
		return timestamppb.New(t.UTC())
	}
	return timestamppb.New(db.now().UTC())
}

// checkNamespace validates the namespace a record is kept in.
func checkNamespace(ns string) error {
	if err := identifiers.Validate(ns); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	return nil
}

// kindBucket returns the bucket namespaces/<ns>/<kind>, or nil if the
// namespace or the bucket does not exist.
func kindBucket(tx *bolt.Tx, ns string, kind []byte) *bolt.Bucket {
	return bucket(tx, keyNamespaces, []byte(ns), kind)
}

// objectBucket returns the bucket namespaces/<ns>/<kind>/<key> of one
// image or container, or nil if it does not exist.
func objectBucket(tx *bolt.Tx, ns string, kind []byte, key string) *bolt.Bucket {
	return bucket(tx, keyNamespaces, []byte(ns), kind, []byte(key))
}

// createKindBucket returns the bucket namespaces/<ns>/<kind>, creating the
// namespace and the bucket if needed: the first write of a record creates
// its namespace.
func createKindBucket(tx *bolt.Tx, ns string, kind []byte) (*bolt.Bucket, error) {
	nb, err := ensureNamespace(tx, ns)
	if err != nil {
		return nil, err
	}
	b, err := nb.CreateBucketIfNotExists(kind)
	if err != nil {
		return nil, fmt.Errorf("create %s bucket in namespace %q: %w", kind, ns, err)
	}
	return b, nil
}

// putRecord stores m as the record of the object bucket b.
func putRecord(b *bolt.Bucket, m proto.Message) error {
	raw, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("marshal %s: %w", proto.MessageName(m), err)
	}
	if err := b.Put(keyObjectRecord, raw); err != nil {
		return fmt.Errorf("store %s: %w", proto.MessageName(m), err)
	}
	return nil
}

// getRecord reads the record of the object bucket b into m. A missing or
// unreadable record is an [errdefs.ErrDataLoss].
func getRecord(b *bolt.Bucket, m proto.Message) error {
	raw := b.Get(keyObjectRecord)
	if raw == nil {
		return fmt.Errorf("read %s: no record: %w", proto.MessageName(m), errdefs.ErrDataLoss)
	}
	if err := proto.Unmarshal(raw, m); err != nil {
		return fmt.Errorf("decode %s: %v: %w", proto.MessageName(m), err, errdefs.ErrDataLoss)
	}
	return nil
}

// setMapKey sets key in m to src[key], or deletes it when src has no value
// for it (the empty value counts as none), and returns m.
func setMapKey[V comparable](m map[string]V, key string, src map[string]V) map[string]V {
	var zero V
	v, ok := src[key]
	if !ok || v == zero {
		delete(m, key)
		return m
	}
	if m == nil {
		m = map[string]V{}
	}
	m[key] = v
	return m
}

// mapField returns the value of m at the rest of a filter field path, the
// key being the remaining components joined by dots, as containerd does.
func mapField(rest []string, m map[string]string) (string, bool) {
	if len(rest) == 0 {
		return "", false
	}
	v, ok := m[strings.Join(rest, ".")]
	return v, ok
}
