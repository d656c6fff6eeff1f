package metadata

import (
	"encoding/binary"
	"fmt"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

// Bucket and key names of the layout drawn in the package doc.
var (
	keySchema      = []byte("schema")
	keyVersion     = []byte("version")
	keyNamespaces  = []byte("namespaces")
	keyLabels      = []byte("labels")
	keyImages      = []byte("images")
	keyContainers  = []byte("containers")
	keyContent     = []byte("content")
	keyBlobs       = []byte("blobs")
	keySnapshots   = []byte("snapshots")
	keyCalls       = []byte("calls")
	keyCallsByID   = []byte("by-id")
	keyCallsByTime = []byte("by-time")
)

// bucket returns the bucket at path below the root, or nil if any bucket on
// the way is missing.
func bucket(tx *bolt.Tx, path ...[]byte) *bolt.Bucket {
	b := tx.Bucket(path[0])
	for _, k := range path[1:] {
		if b == nil {
			return nil
		}
		b = b.Bucket(k)
	}
	return b
}

// mustBucket is bucket for the buckets the migrations create: their absence
// means the database is damaged.
func mustBucket(tx *bolt.Tx, path ...[]byte) (*bolt.Bucket, error) {
	b := bucket(tx, path...)
	if b == nil {
		return nil, fmt.Errorf("find bucket %q: %w", path, errdefs.ErrDataLoss)
	}
	return b, nil
}

// isEmpty reports whether b is missing or holds no keys and no buckets.
func isEmpty(b *bolt.Bucket) bool {
	if b == nil {
		return true
	}
	k, _ := b.Cursor().First()
	return k == nil
}

func putUint64(b []byte, v uint64) []byte {
	return binary.BigEndian.AppendUint64(b, v)
}
