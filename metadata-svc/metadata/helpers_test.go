package metadata

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// testClock is a settable clock for call-record expiry.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newTestClock() *testClock {
	return &testClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// openTestDB opens a new database in a temporary directory and closes it
// when the test ends.
func openTestDB(t *testing.T, opts ...Opt) *DB {
	t.Helper()
	db, err := Open(filepath.Join(t.TempDir(), "meta.db"), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// seedResource puts one key into the bucket at path below namespace ns,
// creating the namespace and the buckets, as a later service would.
func seedResource(t *testing.T, db *DB, ns string, path ...string) {
	t.Helper()
	err := db.bdb.Update(func(tx *bolt.Tx) error {
		b, err := ensureNamespace(tx, ns)
		for _, p := range path {
			if err != nil {
				return err
			}
			b, err = b.CreateBucketIfNotExists([]byte(p))
		}
		if err != nil {
			return err
		}
		return b.Put([]byte("x"), []byte("y"))
	})
	if err != nil {
		t.Fatalf("seed %s/%v: %v", ns, path, err)
	}
}

// seedEmptyBucket creates the bucket at path below namespace ns and leaves
// it empty.
func seedEmptyBucket(t *testing.T, db *DB, ns string, path ...string) {
	t.Helper()
	err := db.bdb.Update(func(tx *bolt.Tx) error {
		b, err := ensureNamespace(tx, ns)
		for _, p := range path {
			if err != nil {
				return err
			}
			b, err = b.CreateBucketIfNotExists([]byte(p))
		}
		return err
	})
	if err != nil {
		t.Fatalf("seed %s/%v: %v", ns, path, err)
	}
}

// countCalls returns the number of call records and of their time index
// entries.
func countCalls(t *testing.T, db *DB) (byID, byTime int) {
	t.Helper()
	err := db.view(func(tx *bolt.Tx) error {
		byID = tx.Bucket(keyCalls).Bucket(keyCallsByID).Stats().KeyN
		byTime = tx.Bucket(keyCalls).Bucket(keyCallsByTime).Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatalf("count calls: %v", err)
	}
	return byID, byTime
}

func call(id string) context.Context {
	return WithCallID(context.Background(), id)
}
