package metadata

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"corral.dev/pluginkit"
)

// nodeKind is the kind of object a collection node stands for.
type nodeKind uint8

const (
	kindContent  nodeKind = iota // key: digest
	kindSnapshot                 // key: "<snapshotter>/<snapshot key>"
	kindIngest                   // key: ingest ref
)

// node is one object of one namespace in the reference graph.
type node struct {
	kind nodeKind
	ns   string
	key  string
}

// leaseRef names a lease of one namespace.
type leaseRef struct{ ns, id string }

// marker is the mark phase of one collection, inside its transaction.
type marker struct {
	tx      *bolt.Tx
	now     time.Time
	seen    map[node]bool // true once the node's references are queued
	queue   []node
	expired []leaseRef
	next    time.Time
}

func newMarker(tx *bolt.Tx, now time.Time) *marker {
	return &marker{tx: tx, now: now, seen: map[node]bool{}}
}

// mark keeps n; with follow, what n refers to is kept too.
func (m *marker) mark(n node, follow bool) {
	if m.seen[n] || (!follow && m.hasSeen(n)) {
		return
	}
	m.seen[n] = follow
	if follow {
		m.queue = append(m.queue, n)
	}
}

func (m *marker) hasSeen(n node) bool {
	_, ok := m.seen[n]
	return ok
}

func (m *marker) follow(n node) { m.mark(n, true) }

// roots marks the roots of namespace ns, whose bucket is nb.
func (m *marker) roots(ns string, nb *bolt.Bucket) error {
	steps := []func(string, *bolt.Bucket) error{
		m.imageRoots, m.containerRoots, m.leaseRoots, m.blobRoots, m.ingestRoots,
	}
	for _, step := range steps {
		if err := step(ns, nb); err != nil {
			return fmt.Errorf("namespace %q: %w", ns, err)
		}
	}
	return nil
}

// imageRoots keeps every image's target and what its labels name.
func (m *marker) imageRoots(ns string, nb *bolt.Bucket) error {
	return forEachRecord(nb.Bucket(keyImages), "image", func(raw []byte) error {
		img := &imagesapi.Image{}
		if err := proto.Unmarshal(raw, img); err != nil {
			return err
		}
		if d := img.GetTarget().GetDigest(); d != "" {
			m.follow(node{kind: kindContent, ns: ns, key: d})
		}
		refsFromLabels(ns, img.GetLabels(), m.follow)
		return nil
	})
}

// containerRoots keeps every container's snapshot and what its labels
// name.
func (m *marker) containerRoots(ns string, nb *bolt.Bucket) error {
	return forEachRecord(nb.Bucket(keyContainers), "container", func(raw []byte) error {
		c := &containersapi.Container{}
		if err := proto.Unmarshal(raw, c); err != nil {
			return err
		}
		if c.GetSnapshotter() != "" && c.GetSnapshotKey() != "" {
			key := snapshotKey(c.GetSnapshotter(), c.GetSnapshotKey())
			m.follow(node{kind: kindSnapshot, ns: ns, key: key})
		}
		refsFromLabels(ns, c.GetLabels(), m.follow)
		return nil
	})
}

// forEachRecord calls fn with the record of every bucket in b (which may be
// nil). A bucket without a record, or a record fn cannot decode, is an
// [errdefs.ErrDataLoss].
func forEachRecord(b *bolt.Bucket, what string, fn func(raw []byte) error) error {
	if b == nil {
		return nil
	}
	return b.ForEachBucket(func(k []byte) error {
		raw := b.Bucket(k).Get(keyRecord)
		if raw == nil {
			return fmt.Errorf("%s %q has no record: %w", what, k, errdefs.ErrDataLoss)
		}
		if err := fn(raw); err != nil {
			return fmt.Errorf("decode %s %q: %v: %w", what, k, err, errdefs.ErrDataLoss)
		}
		return nil
	})
}

// leaseRoots keeps what unexpired leases hold; a flat lease's resources are
// kept but not followed. Expired leases are noted for the sweep.
func (m *marker) leaseRoots(ns string, nb *bolt.Bucket) error {
	return forEachLease(m.tx, ns, func(l *leasesapi.Lease, b *bolt.Bucket) error {
		if exp, ok := leaseExpiry(l); ok {
			if !m.now.Before(exp) {
				m.expired = append(m.expired, leaseRef{ns: ns, id: l.GetID()})
				return nil
			}
			if m.next.IsZero() || exp.Before(m.next) {
				m.next = exp
			}
		}
		_, flat := l.GetLabels()[LabelFlat]
		return walkResources(b.Bucket(keyResources), func(typ, id string) error {
			m.mark(resourceNode(ns, typ, id), !flat)
			return nil
		})
	})
}

// resourceNode returns the node of a lease resource.
func resourceNode(ns, typ, id string) node {
	switch typ {
	case resourceContent:
		return node{kind: kindContent, ns: ns, key: id}
	case resourceIngests:
		return node{kind: kindIngest, ns: ns, key: id}
	}
	sn := strings.TrimPrefix(typ, resourceSnapshots+"/")
	return node{kind: kindSnapshot, ns: ns, key: snapshotKey(sn, id)}
}

// blobRoots keeps the blobs labelled as roots. Every record is decoded, so
// that a damaged one stops the collection before anything is swept.
func (m *marker) blobRoots(ns string, nb *bolt.Bucket) error {
	b := blobsBucket(m.tx, ns)
	if b == nil {
		return nil
	}
	return b.ForEachBucket(func(k []byte) error {
		info, err := decodeBlob(b.Bucket(k), digest.Digest(k))
		if err != nil {
			return err
		}
		if _, ok := info.GetLabels()[LabelRoot]; ok {
			m.follow(node{kind: kindContent, ns: ns, key: string(k)})
		}
		return nil
	})
}

// ingestRoots keeps the ingests that no lease holds until they expire; the
// others live as long as their lease.
func (m *marker) ingestRoots(ns string, nb *bolt.Bucket) error {
	b := bucket(m.tx, keyNamespaces, []byte(ns), keyContent, keyIngests)
	if b == nil {
		return nil
	}
	return b.ForEachBucket(func(ref []byte) error {
		ib := b.Bucket(ref)
		if len(ib.Get(keyLease)) > 0 {
			return nil
		}
		exp, err := time.Parse(time.RFC3339Nano, string(ib.Get(keyExpireAt)))
		if err != nil {
			return fmt.Errorf("ingest %q: expiry %q: %w",
				ref, ib.Get(keyExpireAt), errdefs.ErrDataLoss)
		}
		if m.now.Before(exp) {
			m.mark(node{kind: kindIngest, ns: ns, key: string(ref)}, false)
		}
		return nil
	})
}

// walk follows the references of every queued node.
func (m *marker) walk() error {
	for len(m.queue) > 0 {
		n := m.queue[len(m.queue)-1]
		m.queue = m.queue[:len(m.queue)-1]
		if n.kind != kindContent {
			// TODO(snapshots): follow a snapshot's parent and labels once
			// snapshot records exist (issue 2, snapshot side).
			continue
		}
		b := blobsBucket(m.tx, n.ns)
		if b == nil || b.Bucket([]byte(n.key)) == nil {
			continue // an edge to a blob the namespace does not hold
		}
		info, err := decodeBlob(b.Bucket([]byte(n.key)), digest.Digest(n.key))
		if err != nil {
			return err
		}
		refsFromLabels(n.ns, info.GetLabels(), m.follow)
	}
	return nil
}

// sweep removes from every namespace in root what the mark did not reach.
func (m *marker) sweep(root *bolt.Bucket) (sweepResult, error) {
	res := sweepResult{
		held:       map[digest.Digest]struct{}{},
		snapshots:  map[SnapshotRef]struct{}{},
		nextExpiry: m.next,
	}
	for _, l := range m.expired {
		lb := root.Bucket([]byte(l.ns)).Bucket(keyLeases)
		if err := lb.DeleteBucket([]byte(l.id)); err != nil {
			return res, fmt.Errorf("delete expired lease %q: %w", l.id, err)
		}
		res.expired++
	}
	err := root.ForEachBucket(func(ns []byte) error {
		if err := m.sweepBlobs(string(ns), &res); err != nil {
			return err
		}
		return m.sweepIngests(string(ns), &res)
	})
	if err != nil {
		return res, err
	}
	m.keptSnapshots(res.snapshots)
	return res, nil
}

func (m *marker) sweepBlobs(ns string, res *sweepResult) error {
	b := blobsBucket(m.tx, ns)
	for _, k := range bucketKeys(b) {
		if m.hasSeen(node{kind: kindContent, ns: ns, key: string(k)}) {
			res.held[digest.Digest(k)] = struct{}{}
			continue
		}
		if err := b.DeleteBucket(k); err != nil {
			return fmt.Errorf("delete content %s of namespace %q: %w", k, ns, err)
		}
		res.deleted = append(res.deleted, blobRef{ns: ns, digest: string(k)})
	}
	return nil
}

func (m *marker) sweepIngests(ns string, res *sweepResult) error {
	b := bucket(m.tx, keyNamespaces, []byte(ns), keyContent, keyIngests)
	for _, k := range bucketKeys(b) {
		if m.hasSeen(node{kind: kindIngest, ns: ns, key: string(k)}) {
			// A writer that named its blob may have committed the bytes
			// and not yet recorded them: they stay while the ingest does.
			if d := b.Bucket(k).Get(keyExpected); len(d) > 0 {
				res.held[digest.Digest(d)] = struct{}{}
			}
			continue
		}
		if err := b.DeleteBucket(k); err != nil {
			return fmt.Errorf("delete ingest %q of namespace %q: %w", k, ns, err)
		}
		res.aborted = append(res.aborted, pluginkit.IngestRef(ns, string(k)))
	}
	return nil
}

// keptSnapshots adds every marked snapshot to keep.
func (m *marker) keptSnapshots(keep map[SnapshotRef]struct{}) {
	for n := range m.seen {
		if n.kind != kindSnapshot {
			continue
		}
		sn, key, _ := strings.Cut(n.key, "/")
		keep[SnapshotRef{Namespace: n.ns, Snapshotter: sn, Key: key}] = struct{}{}
	}
}

// bucketKeys returns the names of the buckets in b (which may be nil).
func bucketKeys(b *bolt.Bucket) [][]byte {
	if b == nil {
		return nil
	}
	var keys [][]byte
	_ = b.ForEachBucket(func(k []byte) error {
		keys = append(keys, bytes.Clone(k))
		return nil
	})
	return keys
}
