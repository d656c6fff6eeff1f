package metadata

import (
	"encoding/binary"
	"fmt"

	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the version of the bucket layout this build reads and
// writes, the one drawn in the package doc.
const SchemaVersion = 1

// migrations[v] moves the layout from version v to version v+1.
var migrations = []func(tx *bolt.Tx) error{
	createLayoutV1,
}

// migrate brings the layout in tx up to SchemaVersion and stores the new
// version. A database newer than this build is left alone.
func (db *DB) migrate(tx *bolt.Tx) error {
	from, err := schemaVersion(tx)
	if err != nil {
		return err
	}
	if from > SchemaVersion {
		return fmt.Errorf("schema version %d is newer than %d, the latest this build knows: %w",
			from, SchemaVersion, errdefs.ErrFailedPrecondition)
	}
	if from == SchemaVersion {
		return nil
	}

	for v := from; v < SchemaVersion; v++ {
		if err := migrations[v](tx); err != nil {
			return fmt.Errorf("migrate schema from version %d to %d: %w", v, v+1, err)
		}
	}
	if err := setSchemaVersion(tx, SchemaVersion); err != nil {
		return err
	}

	tx.OnCommit(func() {
		db.log.Info().Msgf("migrated metadata db from schema version %d to %d", from, SchemaVersion)
	})
	return nil
}

// schemaVersion returns the stored schema version, 0 for a new database.
func schemaVersion(tx *bolt.Tx) (uint64, error) {
	b := tx.Bucket(keySchema)
	if b == nil {
		return 0, nil
	}
	raw := b.Get(keyVersion)
	if raw == nil {
		return 0, nil
	}
	if len(raw) != 8 {
		return 0, fmt.Errorf("read schema version %x: %w", raw, errdefs.ErrDataLoss)
	}
	return binary.BigEndian.Uint64(raw), nil
}

func setSchemaVersion(tx *bolt.Tx, v uint64) error {
	b, err := tx.CreateBucketIfNotExists(keySchema)
	if err != nil {
		return fmt.Errorf("create schema bucket: %w", err)
	}
	if err := b.Put(keyVersion, putUint64(nil, v)); err != nil {
		return fmt.Errorf("store schema version %d: %w", v, err)
	}
	return nil
}

// createLayoutV1 creates the top-level buckets of schema version 1.
func createLayoutV1(tx *bolt.Tx) error {
	paths := [][][]byte{
		{keySchema},
		{keyNamespaces},
		{keyCalls},
		{keyCalls, keyCallsByID},
		{keyCalls, keyCallsByTime},
	}
	for _, p := range paths {
		if err := createBucketPath(tx, p...); err != nil {
			return err
		}
	}
	return nil
}

// createBucketPath creates the buckets along path that do not exist yet.
func createBucketPath(tx *bolt.Tx, path ...[]byte) error {
	b, err := tx.CreateBucketIfNotExists(path[0])
	for _, k := range path[1:] {
		if err != nil {
			break
		}
		b, err = b.CreateBucketIfNotExists(k)
	}
	if err != nil {
		return fmt.Errorf("create bucket %q: %w", path, err)
	}
	return nil
}
