package metadata

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/testing/protocmp"
)

// layout returns the version and the top-level bucket tree of the database
// at path, as "a/b" strings, two levels deep.
func layout(t *testing.T, path string) (uint64, []string) {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	defer bdb.Close()

	var version uint64
	var names []string
	err = bdb.View(func(tx *bolt.Tx) error {
		if version, err = schemaVersion(tx); err != nil {
			return err
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			names = append(names, string(name))
			return b.ForEachBucket(func(k []byte) error {
				names = append(names, string(name)+"/"+string(k))
				return nil
			})
		})
	})
	if err != nil {
		t.Fatalf("read layout: %v", err)
	}
	return version, names
}

// seedRaw prepares a database file with fn before Open sees it.
func seedRaw(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatalf("bolt.Open: %v", err)
	}
	defer bdb.Close()
	if err := bdb.Update(fn); err != nil {
		t.Fatalf("seed: %v", err)
	}
}

var layoutV1 = []string{"calls", "calls/by-id", "calls/by-time", "namespaces", "schema"}

func TestMigrateFreshDB(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	db.Close()

	version, names := layout(t, path)
	if version != SchemaVersion {
		t.Errorf("version = %d, want %d", version, SchemaVersion)
	}
	if diff := cmp.Diff(layoutV1, names); diff != "" {
		t.Errorf("layout mismatch (-want +got):\n%s", diff)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("mode = %v, want 0600", mode)
	}
}

func TestMigrateMigratedDBKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "meta.db")
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	want, err := db.Namespaces().Create(ctx, "a", map[string]string{"k": "v"})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	db.Close()

	db, err = Open(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	got, err := db.Namespaces().Get(ctx, "a")
	db.Close()
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("namespace after reopen (-want +got):\n%s", diff)
	}
	if version, _ := layout(t, path); version != SchemaVersion {
		t.Errorf("version = %d, want %d", version, SchemaVersion)
	}
}

func TestMigrateVersionZeroWithBuckets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	seedRaw(t, path, func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket(keyNamespaces)
		return err
	})
	db, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	db.Close()

	if _, names := layout(t, path); !cmp.Equal(layoutV1, names) {
		t.Errorf("layout = %v, want %v", names, layoutV1)
	}
}

func TestMigrateRefuses(t *testing.T) {
	tests := []struct {
		name    string
		version []byte
		wantErr error
	}{
		{"newer version", putUint64(nil, SchemaVersion+1), errdefs.ErrFailedPrecondition},
		{"damaged version", []byte{1, 2, 3}, errdefs.ErrDataLoss},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "meta.db")
			seedRaw(t, path, func(tx *bolt.Tx) error {
				b, err := tx.CreateBucket(keySchema)
				if err != nil {
					return err
				}
				return b.Put(keyVersion, tt.version)
			})

			db, err := Open(path)
			if err == nil {
				db.Close()
			}
			checkErr(t, err, tt.wantErr, "")
		})
	}
}
