package metadata

import (
	"context"
	"fmt"
	"strings"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/errdefs"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/pluginkit/filters"
	"corral.dev/pluginkit/identifiers"
	plabels "corral.dev/pluginkit/labels"
)

// containerMutable are the field paths an update with no paths replaces.
var containerMutable = []string{"labels", "spec", "extensions", "image", "snapshotkey"}

// ContainerStore keeps the containers of every namespace. Get it from
// [DB.Containers].
type ContainerStore struct {
	db *DB
}

// Containers returns the store of containers.
func (db *DB) Containers() *ContainerStore {
	return &ContainerStore{db: db}
}

// Get returns the container id of namespace ns.
func (s *ContainerStore) Get(ctx context.Context, ns, id string) (*containersapi.Container, error) {
	return containerKind.get(s.db, ns, id)
}

// List returns the containers of namespace ns that match any of the
// filters, sorted by id. Filter fields are id, image, runtime.name,
// snapshotter, snapshotkey and labels.<key>.
func (s *ContainerStore) List(
	ctx context.Context,
	ns string,
	fs ...string,
) ([]*containersapi.Container, error) {
	return containerKind.list(s.db, ns, fs, containerAdaptor)
}

// ListEncoded is List with the containers left as stored: it returns the
// wire form of a [containersapi.ListContainersResponse] that holds them.
func (s *ContainerStore) ListEncoded(ctx context.Context, ns string, fs ...string) ([]byte, error) {
	buf, _, err := containerKind.listEncoded(s.db, ns, fs, containerAdaptor, containersList, containerID)
	return buf, err
}

// ListEncodedMessages is List with the containers left as stored: it
// returns the wire form of one [containersapi.ListContainerMessage] for
// each.
func (s *ContainerStore) ListEncodedMessages(ctx context.Context, ns string, fs ...string) ([][]byte, error) {
	buf, ends, err := containerKind.listEncoded(s.db, ns, fs, containerAdaptor, containerMessage, containerID)
	return split(buf, ends), err
}

// The fields of the encoded lists: the response's containers, the stream
// message's container, and a container's id.
var (
	containersList   = fieldNumber(&containersapi.ListContainersResponse{}, "containers")
	containerMessage = fieldNumber(&containersapi.ListContainerMessage{}, "container")
	containerID      = fieldNumber(&containersapi.Container{}, "id")
)

// Create stores c in namespace ns, creating the namespace if needed, with
// created_at and updated_at set to now. It fails with
// [errdefs.ErrAlreadyExists] if a container with that id exists.
func (s *ContainerStore) Create(
	ctx context.Context,
	ns string,
	c *containersapi.Container,
) (*containersapi.Container, error) {
	if err := checkNamespace(ns); err != nil {
		return nil, err
	}
	if err := validateContainer(c); err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	out := &containersapi.Container{}
	if err := containerKind.create(ctx, s.db, ns, c.GetID(), c, out); err != nil {
		return nil, err
	}
	return out, nil
}

// Update changes the container c.ID of namespace ns as the field paths
// say: "labels", "spec", "extensions", "image" and "snapshotkey" replace
// that field with c's, "labels.<key>" and "extensions.<key>" set one key or
// delete it when c has no value for it, and no paths replace all of these
// fields. The runtime and the snapshotter cannot change: naming them, or
// sending other values with no paths, is an [errdefs.ErrInvalidArgument],
// as is any other path. A container that does not exist is an
// [errdefs.ErrNotFound].
func (s *ContainerStore) Update(
	ctx context.Context,
	ns string,
	c *containersapi.Container,
	paths []string,
) (*containersapi.Container, error) {
	if err := checkNamespace(ns); err != nil {
		return nil, err
	}
	id := c.GetID()
	if err := identifiers.Validate(id); err != nil {
		return nil, fmt.Errorf("update container: %w", err)
	}

	out := &containersapi.Container{}
	err := containerKind.update(ctx, s.db, ns, id, out, func(cur *containersapi.Container) (*containersapi.Container, error) {
		return updatedContainer(cur, c, paths)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Delete deletes the container id of namespace ns. The snapshot it used
// stays until the next garbage collection.
func (s *ContainerStore) Delete(ctx context.Context, ns, id string) error {
	if err := checkNamespace(ns); err != nil {
		return err
	}
	return containerKind.remove(ctx, s.db, ns, id, nil)
}

// containerKind is where and how container records are kept.
var containerKind = recordKind[*containersapi.Container]{
	noun:   "container",
	bucket: keyContainers,
	read:   readContainer,
	stamp: func(c *containersapi.Container, created, updated *timestamppb.Timestamp) {
		c.CreatedAt, c.UpdatedAt = created, updated
	},
}

// readContainer reads the record of the container bucket b; id, the
// bucket's key, is authoritative for the container id.
func readContainer(b *bolt.Bucket, id string) (*containersapi.Container, error) {
	c := &containersapi.Container{}
	if err := getRecord(b, c); err != nil {
		return nil, fmt.Errorf("container %q: %w", id, err)
	}
	c.ID = id
	return c, nil
}

// updatedContainer returns cur changed by the fields of req that paths
// name.
func updatedContainer(
	cur, req *containersapi.Container,
	paths []string,
) (*containersapi.Container, error) {
	req = proto.CloneOf(req)
	if len(paths) == 0 {
		if err := checkImmutable(cur, req); err != nil {
			return nil, err
		}
		paths = containerMutable
	}

	next := proto.CloneOf(cur)
	for _, p := range paths {
		if err := applyContainerPath(next, req, p); err != nil {
			return nil, err
		}
	}
	if err := validateContainer(next); err != nil {
		return nil, err
	}
	return next, nil
}

// checkImmutable fails unless req keeps the runtime name and snapshotter
// of cur.
func checkImmutable(cur, req *containersapi.Container) error {
	if req.GetRuntime().GetName() != cur.GetRuntime().GetName() {
		return fmt.Errorf("runtime name %q cannot change to %q: %w",
			cur.GetRuntime().GetName(), req.GetRuntime().GetName(), errdefs.ErrInvalidArgument)
	}
	if req.GetSnapshotter() != cur.GetSnapshotter() {
		return fmt.Errorf("snapshotter %q cannot change to %q: %w",
			cur.GetSnapshotter(), req.GetSnapshotter(), errdefs.ErrInvalidArgument)
	}
	return nil
}

// applyContainerPath copies the field at path p from req to next.
func applyContainerPath(next, req *containersapi.Container, p string) error {
	if key, ok := strings.CutPrefix(p, "labels."); ok {
		next.Labels = setMapKey(next.Labels, key, req.GetLabels())
		return plabels.Validate(key, next.Labels[key])
	}
	if key, ok := strings.CutPrefix(p, "extensions."); ok {
		next.Extensions = setMapKey(next.Extensions, key, req.GetExtensions())
		return validateExtensionKey(key)
	}

	switch p {
	case "labels":
		next.Labels = req.GetLabels()
	case "spec":
		next.Spec = req.GetSpec()
	case "extensions":
		next.Extensions = req.GetExtensions()
	case "image":
		next.Image = req.GetImage()
	case "snapshotkey":
		next.SnapshotKey = req.GetSnapshotKey()
	case "runtime", "snapshotter":
		return fmt.Errorf("field %q is immutable: %w", p, errdefs.ErrInvalidArgument)
	default:
		return fmt.Errorf("field %q cannot be updated: %w", p, errdefs.ErrInvalidArgument)
	}
	return nil
}

// validateContainer checks what containerd requires of a container: a
// valid id, labels within the limits, a runtime name, a spec, named
// extensions and a snapshotter for a snapshot key.
func validateContainer(c *containersapi.Container) error {
	if err := identifiers.Validate(c.GetID()); err != nil {
		return fmt.Errorf("container id: %w", err)
	}
	if err := plabels.ValidateAll(c.GetLabels()); err != nil {
		return fmt.Errorf("container %q: %w", c.GetID(), err)
	}
	for k := range c.GetExtensions() {
		if err := validateExtensionKey(k); err != nil {
			return fmt.Errorf("container %q: %w", c.GetID(), err)
		}
	}

	var missing string
	switch {
	case c.GetRuntime().GetName() == "":
		missing = "runtime name"
	case c.GetSpec() == nil:
		missing = "spec"
	case c.GetSnapshotKey() != "" && c.GetSnapshotter() == "":
		missing = "snapshotter (for its snapshot key)"
	default:
		return nil
	}
	return fmt.Errorf("container %q: %s must be set: %w",
		c.GetID(), missing, errdefs.ErrInvalidArgument)
}

func validateExtensionKey(k string) error {
	if k == "" {
		return fmt.Errorf("extension key must not be empty: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// containerAdaptor exposes the filter fields of c.
func containerAdaptor(c *containersapi.Container) filters.Adaptor {
	return filters.AdapterFunc(func(path []string) (string, bool) {
		if len(path) == 0 {
			return "", false
		}
		var v string
		switch path[0] {
		case "labels":
			return mapField(path[1:], c.GetLabels())
		case "runtime":
			if len(path) != 2 || path[1] != "name" {
				return "", false
			}
			v = c.GetRuntime().GetName()
		case "id":
			v = c.GetID()
		case "image":
			v = c.GetImage()
		case "snapshotter":
			v = c.GetSnapshotter()
		case "snapshotkey":
			v = c.GetSnapshotKey()
		default:
			return "", false
		}
		return v, v != ""
	})
}
