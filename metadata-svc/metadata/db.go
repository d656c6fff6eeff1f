package metadata

import (
	"fmt"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"
)

// DefaultCallTTL is how long the outcome of a mutating call is kept for a
// replay of that call.
const DefaultCallTTL = 10 * time.Minute

// openTimeout bounds the wait for the file lock of a database that another
// process still holds, such as a plugin process that has not exited yet.
const openTimeout = 10 * time.Second

// DB is the metadata database. Its methods are safe for concurrent use.
type DB struct {
	bdb *bolt.DB
	now func() time.Time
	ttl time.Duration
	log zerolog.Logger
}

// Opt configures a DB opened by [Open].
type Opt func(*DB)

// WithClock makes the DB read the time from now instead of the wall clock.
func WithClock(now func() time.Time) Opt {
	return func(db *DB) { db.now = now }
}

// WithCallTTL sets how long call outcomes are kept for replays.
func WithCallTTL(d time.Duration) Opt {
	return func(db *DB) { db.ttl = d }
}

// WithLogger sets the logger for lifecycle events such as migrations.
func WithLogger(log zerolog.Logger) Opt {
	return func(db *DB) { db.log = log }
}

// Open opens the database at path, creating it with mode 0600 if needed,
// migrates it to [SchemaVersion] and drops call records older than the
// call TTL.
func Open(path string, opts ...Opt) (*DB, error) {
	db := &DB{now: time.Now, ttl: DefaultCallTTL, log: zerolog.Nop()}
	for _, o := range opts {
		o(db)
	}

	bdb, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: openTimeout})
	if err != nil {
		return nil, fmt.Errorf("open metadata db %q: %w", path, err)
	}
	db.bdb = bdb

	if err := bdb.Update(db.migrate); err != nil {
		bdb.Close()
		return nil, fmt.Errorf("migrate metadata db %q: %w", path, err)
	}
	if err := bdb.Update(db.pruneAll); err != nil {
		bdb.Close()
		return nil, fmt.Errorf("prune call records in %q: %w", path, err)
	}
	return db, nil
}

// Close closes the database. Calls after Close fail.
func (db *DB) Close() error {
	if err := db.bdb.Close(); err != nil {
		return fmt.Errorf("close metadata db: %w", err)
	}
	return nil
}

// Namespaces returns the store of namespaces and their labels.
func (db *DB) Namespaces() *NamespaceStore {
	return &NamespaceStore{db: db}
}

// view runs fn in a read-only transaction.
func (db *DB) view(fn func(tx *bolt.Tx) error) error {
	return db.bdb.View(fn)
}
