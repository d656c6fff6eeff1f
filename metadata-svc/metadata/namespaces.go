package metadata

import (
	"context"
	"fmt"
	"strings"

	"corral.dev/pluginkit/identifiers"
	plabels "corral.dev/pluginkit/labels"
	api "github.com/containerd/containerd/api/services/namespaces/v1"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/types/known/emptypb"
)

// NamespaceStore keeps the namespaces and their labels. Get it from
// [DB.Namespaces].
type NamespaceStore struct {
	db *DB
}

// Get returns the namespace name with its labels. A namespace that does not
// exist is returned with no labels rather than as not found: clients read
// the labels of a namespace before their first write creates it.
func (s *NamespaceStore) Get(ctx context.Context, name string) (*api.Namespace, error) {
	if err := identifiers.Validate(name); err != nil {
		return nil, fmt.Errorf("get namespace: %w", err)
	}
	var ns *api.Namespace
	err := s.db.view(func(tx *bolt.Tx) error {
		var err error
		ns, err = readNamespace(tx, name)
		return err
	})
	return ns, err
}

// List returns every namespace with its labels, sorted by name.
func (s *NamespaceStore) List(ctx context.Context) ([]*api.Namespace, error) {
	var list []*api.Namespace
	err := s.db.view(func(tx *bolt.Tx) error {
		root, err := mustBucket(tx, keyNamespaces)
		if err != nil {
			return err
		}
		return root.ForEachBucket(func(k []byte) error {
			ns, err := readNamespace(tx, string(k))
			list = append(list, ns)
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return list, nil
}

// Create creates the namespace name with labels. It fails with
// [errdefs.ErrAlreadyExists] if the namespace exists.
func (s *NamespaceStore) Create(
	ctx context.Context,
	name string,
	labels map[string]string,
) (*api.Namespace, error) {
	ns := &api.Namespace{}
	err := s.db.update(ctx, ns, func(tx *bolt.Tx) error {
		if err := validateNamespace(name, labels); err != nil {
			return err
		}
		b, err := createNamespace(tx, name)
		if err != nil {
			return err
		}
		if err := putLabels(b.Bucket(keyLabels), labels, false); err != nil {
			return fmt.Errorf("create namespace %q: %w", name, err)
		}
		return fillNamespace(tx, name, ns)
	})
	if err != nil {
		return nil, err
	}
	return ns, nil
}

// Update changes the labels of the namespace name as the field paths say:
// none or "labels" replace all labels with labels, "labels.<key>" sets
// that key from labels or deletes it when labels has no value for it. Any
// other path is an [errdefs.ErrInvalidArgument]. As in containerd, a
// namespace that does not exist is created.
func (s *NamespaceStore) Update(
	ctx context.Context,
	name string,
	labels map[string]string,
	paths []string,
) (*api.Namespace, error) {
	ns := &api.Namespace{}
	err := s.db.update(ctx, ns, func(tx *bolt.Tx) error {
		if err := identifiers.Validate(name); err != nil {
			return fmt.Errorf("update namespace: %w", err)
		}
		u, err := parseLabelUpdate(labels, paths)
		if err != nil {
			return fmt.Errorf("update namespace %q: %w", name, err)
		}
		b, err := ensureNamespace(tx, name)
		if err != nil {
			return err
		}
		lb, err := b.CreateBucketIfNotExists(keyLabels)
		if err == nil {
			err = u.apply(lb)
		}
		if err != nil {
			return fmt.Errorf("update namespace %q: %w", name, err)
		}
		return fillNamespace(tx, name, ns)
	})
	if err != nil {
		return nil, err
	}
	return ns, nil
}

// Delete deletes the namespace name with its labels and leases. It fails
// with [errdefs.ErrNotFound] if there is no such namespace, and with
// [errdefs.ErrFailedPrecondition] while it holds images, containers, blobs
// or snapshots.
func (s *NamespaceStore) Delete(ctx context.Context, name string) error {
	return s.db.update(ctx, &emptypb.Empty{}, func(tx *bolt.Tx) error {
		if err := identifiers.Validate(name); err != nil {
			return fmt.Errorf("delete namespace: %w", err)
		}
		root, err := mustBucket(tx, keyNamespaces)
		if err != nil {
			return err
		}
		b := root.Bucket([]byte(name))
		if b == nil {
			return fmt.Errorf("namespace %q: %w", name, errdefs.ErrNotFound)
		}

		if kinds := resourcesIn(b); len(kinds) > 0 {
			return fmt.Errorf("namespace %q must be empty, but it still has %s: %w",
				name, strings.Join(kinds, ", "), errdefs.ErrFailedPrecondition)
		}
		if err := root.DeleteBucket([]byte(name)); err != nil {
			return fmt.Errorf("delete namespace %q: %w", name, err)
		}
		return nil
	})
}

func validateNamespace(name string, labels map[string]string) error {
	if err := identifiers.Validate(name); err != nil {
		return fmt.Errorf("create namespace: %w", err)
	}
	if err := plabels.ValidateAll(labels); err != nil {
		return fmt.Errorf("create namespace %q: %w", name, err)
	}
	return nil
}

// createNamespace creates the bucket of a new namespace with its labels
// bucket.
func createNamespace(tx *bolt.Tx, name string) (*bolt.Bucket, error) {
	root, err := mustBucket(tx, keyNamespaces)
	if err != nil {
		return nil, err
	}
	if root.Bucket([]byte(name)) != nil {
		return nil, fmt.Errorf("namespace %q: %w", name, errdefs.ErrAlreadyExists)
	}
	b, err := root.CreateBucket([]byte(name))
	if err == nil {
		_, err = b.CreateBucket(keyLabels)
	}
	if err != nil {
		return nil, fmt.Errorf("create namespace %q: %w", name, err)
	}
	return b, nil
}

// ensureNamespace returns the bucket of namespace name, creating the
// namespace if it does not exist. Writes into a namespace go through it.
func ensureNamespace(tx *bolt.Tx, name string) (*bolt.Bucket, error) {
	if b := bucket(tx, keyNamespaces, []byte(name)); b != nil {
		return b, nil
	}
	return createNamespace(tx, name)
}

// readNamespace returns namespace name with its labels, which are empty
// when the namespace does not exist.
func readNamespace(tx *bolt.Tx, name string) (*api.Namespace, error) {
	labels, err := readLabels(bucket(tx, keyNamespaces, []byte(name), keyLabels))
	if err != nil {
		return nil, fmt.Errorf("namespace %q: %w", name, err)
	}
	return &api.Namespace{Name: name, Labels: labels}, nil
}

// fillNamespace sets ns to the stored state of namespace name.
func fillNamespace(tx *bolt.Tx, name string, ns *api.Namespace) error {
	got, err := readNamespace(tx, name)
	if err != nil {
		return err
	}
	ns.Name, ns.Labels = got.Name, got.Labels
	return nil
}

// resourcesIn names the kinds of resources namespace bucket b still holds.
func resourcesIn(b *bolt.Bucket) []string {
	var kinds []string
	if !isEmpty(b.Bucket(keyImages)) {
		kinds = append(kinds, "images")
	}
	if c := b.Bucket(keyContent); c != nil && !isEmpty(c.Bucket(keyBlobs)) {
		kinds = append(kinds, "blobs")
	}
	if !isEmpty(b.Bucket(keyContainers)) {
		kinds = append(kinds, "containers")
	}
	if sn := b.Bucket(keySnapshots); sn != nil {
		_ = sn.ForEachBucket(func(k []byte) error {
			if !isEmpty(sn.Bucket(k)) {
				kinds = append(kinds, fmt.Sprintf("snapshots on %q snapshotter", k))
			}
			return nil
		})
	}
	return kinds
}
