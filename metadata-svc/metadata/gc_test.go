package metadata

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

// fakeBlobs is a ContentBackend that keeps digests only.
type fakeBlobs struct {
	mu      sync.Mutex
	blobs   map[digest.Digest]bool
	ingests map[string]fakeIngest // by raw ref
	deleted []string
	aborted []string
}

type fakeIngest struct {
	updated time.Time
	locked  bool // a writer holds it: Abort answers Unavailable
}

func newFakeBlobs(cs ...string) *fakeBlobs {
	f := &fakeBlobs{blobs: map[digest.Digest]bool{}}
	for _, c := range cs {
		f.blobs[digest.Digest(blobDigest(c))] = true
	}
	return f
}

func (f *fakeBlobs) Blobs(context.Context) ([]digest.Digest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var all []digest.Digest
	for d := range f.blobs {
		all = append(all, d)
	}
	return all, nil
}

func (f *fakeBlobs) DeleteBlob(_ context.Context, d digest.Digest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.blobs[d] {
		return errdefs.ErrNotFound
	}
	delete(f.blobs, d)
	f.deleted = append(f.deleted, d.String())
	return nil
}

func (f *fakeBlobs) AbortIngest(_ context.Context, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ingests[ref].locked {
		return fmt.Errorf("ref %s locked: %w", ref, errdefs.ErrUnavailable)
	}
	f.aborted = append(f.aborted, ref)
	delete(f.ingests, ref)
	return nil
}

func (f *fakeBlobs) Ingests(context.Context) ([]RawIngest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var all []RawIngest
	for ref, in := range f.ingests {
		all = append(all, RawIngest{Ref: ref, UpdatedAt: in.updated})
	}
	return all, nil
}

func (f *fakeBlobs) taken() (deleted, aborted []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	deleted, aborted = f.deleted, f.aborted
	f.deleted, f.aborted = nil, nil
	sort.Strings(deleted)
	return deleted, aborted
}

// seedRecord stores raw as the record of namespaces/<ns>/<kind>/<name>.
func seedRecord(t *testing.T, db *DB, ns string, kind []byte, name string, raw []byte) {
	t.Helper()
	err := db.bdb.Update(func(tx *bolt.Tx) error {
		b, err := createKindBucket(tx, ns, kind)
		if err == nil {
			b, err = b.CreateBucketIfNotExists([]byte(name))
		}
		if err != nil {
			return err
		}
		return b.Put(keyObjectRecord, raw)
	})
	if err != nil {
		t.Fatalf("seed %s %q: %v", kind, name, err)
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	raw, err := proto.Marshal(m)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return raw
}

func seedImage(name, target string, kv ...string) func(t *testing.T, db *DB) {
	return func(t *testing.T, db *DB) {
		img := &imagesapi.Image{
			Name:   name,
			Labels: pairs(kv...),
			Target: &types.Descriptor{Digest: blobDigest(target), Size: 3},
		}
		seedRecord(t, db, "ns", keyImages, name, mustMarshal(t, img))
	}
}

func seedBlob(ns, c string, kv ...string) func(t *testing.T, db *DB) {
	return func(t *testing.T, db *DB) { addTestBlob(t, db, ns, c, "", kv...) }
}

func seedLeasedBlob(lease, c string, kv ...string) func(t *testing.T, db *DB) {
	return func(t *testing.T, db *DB) { addTestBlob(t, db, "ns", c, lease, kv...) }
}

func seedLease(id string, kv ...string) func(t *testing.T, db *DB) {
	return func(t *testing.T, db *DB) {
		if _, err := db.Leases().Create(context.Background(), "ns", id, pairs(kv...)); err != nil {
			t.Fatalf("Create lease %q: %v", id, err)
		}
	}
}

func seedIngest(ref, lease string) func(t *testing.T, db *DB) {
	return func(t *testing.T, db *DB) {
		if err := db.Content().StartIngest(context.Background(), "ns", ref, "", lease); err != nil {
			t.Fatalf("StartIngest %q: %v", ref, err)
		}
	}
}

// refs returns the gc.ref.content labels naming the blobs cs.
func refs(cs ...string) []string {
	var kv []string
	for i, c := range cs {
		kv = append(kv, LabelRefContent+".l."+string(rune('0'+i)), blobDigest(c))
	}
	return kv
}

// remaining returns the hex letters of the blobs namespace ns holds.
func remaining(t *testing.T, db *DB, ns string) []string {
	t.Helper()
	var cs []string
	for _, info := range listBlobs(t, db, ns) {
		cs = append(cs, info.GetDigest()[len("sha256:"):][:1])
	}
	return cs
}

func TestGCRun(t *testing.T) {
	expire := newTestClock().Now().Add(time.Hour).Format(time.RFC3339)
	tests := []struct {
		name     string
		seed     func(t *testing.T, db *DB)
		advance  time.Duration // clock move before the run
		keep     []string      // blobs left in "ns"
		keepB    []string      // blobs left in "other"
		deleted  []string      // blobs deleted from the content plugin
		aborted  []string
		snapKeep []SnapshotRef
	}{
		{
			name:    "unreferenced blobs go",
			seed:    seeds(seedBlob("ns", "a"), seedBlob("ns", "b")),
			deleted: []string{"a", "b", "f"},
		},
		{
			name: "image chain kept",
			seed: seeds(
				seedImage("img", "a"),
				seedBlob("ns", "a", refs("b")...),
				seedBlob("ns", "b", append(refs("c", "d"), LabelRefSnapshot+"overlayfs", "chain")...),
				seedBlob("ns", "c"), seedBlob("ns", "d"), seedBlob("ns", "e"),
			),
			keep:     []string{"a", "b", "c", "d"},
			deleted:  []string{"e", "f"},
			snapKeep: []SnapshotRef{{Namespace: "ns", Snapshotter: "overlayfs", Key: "chain"}},
		},
		{
			name: "gc.ref.content exact and slash forms",
			seed: seeds(
				seedImage("img", "a", LabelRefContent, blobDigest("b")),
				seedBlob("ns", "a", LabelRefContent+"/x", blobDigest("c")),
				seedBlob("ns", "b"), seedBlob("ns", "c"), seedBlob("ns", "d"),
			),
			keep:    []string{"a", "b", "c"},
			deleted: []string{"d", "f"},
		},
		{
			name: "gc.root kept",
			seed: seeds(
				seedBlob("ns", "a", append(refs("b"), LabelRoot, "2026-01-01T00:00:00Z")...),
				seedBlob("ns", "b"),
			),
			keep:    []string{"a", "b"},
			deleted: []string{"f"},
		},
		{
			name: "lease holds and follows",
			seed: seeds(
				seedLease("l", LabelExpire, expire),
				seedLeasedBlob("l", "a", refs("b")...), seedBlob("ns", "b"), seedBlob("ns", "c"),
			),
			keep:    []string{"a", "b"},
			deleted: []string{"c", "f"},
		},
		{
			name: "expired lease lets go",
			seed: seeds(
				seedLease("l", LabelExpire, expire),
				seedLeasedBlob("l", "a", refs("b")...), seedBlob("ns", "b"),
			),
			advance: 2 * time.Hour,
			deleted: []string{"a", "b", "f"},
		},
		{
			name: "unparsable expiry keeps lease",
			seed: seeds(
				seedLease("l", LabelExpire, "tomorrow"),
				seedLeasedBlob("l", "a"),
			),
			advance: 2 * time.Hour,
			keep:    []string{"a"},
			deleted: []string{"f"},
		},
		{
			name: "flat lease keeps only its own",
			seed: seeds(
				seedLease("l", LabelFlat, "x"),
				seedLeasedBlob("l", "a", refs("b")...), seedBlob("ns", "b"),
			),
			keep:    []string{"a"},
			deleted: []string{"b", "f"},
		},
		{
			name: "flat and followed",
			seed: seeds(
				seedLease("l", LabelFlat, "x"),
				seedLeasedBlob("l", "a", refs("b")...), seedBlob("ns", "b"),
				seedImage("img", "a"),
			),
			keep:    []string{"a", "b"},
			deleted: []string{"f"},
		},
		{
			name: "container labels and snapshot",
			seed: seeds(
				seedContainer("c1", "overlayfs", "c1-snap", refs("a")...),
				seedBlob("ns", "a"), seedBlob("ns", "b"),
			),
			keep:     []string{"a"},
			deleted:  []string{"b", "f"},
			snapKeep: []SnapshotRef{{Namespace: "ns", Snapshotter: "overlayfs", Key: "c1-snap"}},
		},
		{
			name: "bytes stay while another namespace holds them",
			seed: seeds(
				seedImage("img", "a"),
				seedBlob("ns", "a"), seedBlob("other", "a"), seedBlob("other", "b", LabelRoot, "x"),
			),
			keep:    []string{"a"},
			keepB:   []string{"b"},
			deleted: []string{"f"},
		},
		{
			name: "ingests",
			seed: seeds(
				seedLease("l", LabelExpire, expire),
				seedLease("gone", LabelExpire, expire),
				seedIngest("fresh", ""), seedIngest("leased", "l"),
				func(t *testing.T, db *DB) {
					seedIngest("orphan", "gone")(t, db)
					if err := db.Leases().Delete(context.Background(), "ns", "gone"); err != nil {
						t.Fatal(err)
					}
				},
			),
			deleted: []string{"f"},
			aborted: []string{"ns/orphan"},
		},
		{
			name:    "stale ingest aborted",
			seed:    seeds(seedIngest("stale", "")),
			advance: IngestTTL + time.Minute,
			deleted: []string{"f"},
			aborted: []string{"ns/stale"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newTestClock()
			db := openTestDB(t, WithClock(clock.Now))
			tt.seed(t, db)
			// The content plugin has the bytes of every record, and f,
			// which no namespace ever recorded.
			blobs := newFakeBlobs(append(remaining(t, db, "ns"), "f")...)
			for _, c := range remaining(t, db, "other") {
				blobs.blobs[digest.Digest(blobDigest(c))] = true
			}
			snaps := &recordingSnapshots{}
			gc := NewGC(db, blobs, WithSnapshotCollector(snaps))
			clock.Advance(tt.advance)

			if err := gc.Run(context.Background()); err != nil {
				t.Fatalf("Run: %v", err)
			}

			deleted, aborted := blobs.taken()
			var wantDeleted []string
			for _, c := range tt.deleted {
				wantDeleted = append(wantDeleted, blobDigest(c))
			}
			empty := cmpopts.EquateEmpty()
			for _, c := range []struct {
				what      string
				want, got any
			}{
				{"blobs of ns", tt.keep, remaining(t, db, "ns")},
				{"blobs of other", tt.keepB, remaining(t, db, "other")},
				{"deleted blobs", wantDeleted, deleted},
				{"aborted ingests", tt.aborted, aborted},
				{"kept snapshots", tt.snapKeep, snaps.keys()},
			} {
				if diff := cmp.Diff(c.want, c.got, empty); diff != "" {
					t.Errorf("%s (-want +got):\n%s", c.what, diff)
				}
			}
		})
	}
}

func seedContainer(id, snapshotter, key string, kv ...string) func(t *testing.T, db *DB) {
	return func(t *testing.T, db *DB) {
		c := &containersapi.Container{ID: id, Labels: pairs(kv...), Snapshotter: snapshotter, SnapshotKey: key}
		seedRecord(t, db, "ns", keyContainers, id, mustMarshal(t, c))
	}
}

// recordingSnapshots is a SnapshotCollector that records what it keeps.
type recordingSnapshots struct {
	mu   sync.Mutex
	keep map[SnapshotRef]struct{}
}

func (r *recordingSnapshots) Collect(_ context.Context, keep map[SnapshotRef]struct{}) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keep = keep
	return nil
}

func (r *recordingSnapshots) keys() []SnapshotRef {
	r.mu.Lock()
	defer r.mu.Unlock()
	var list []SnapshotRef
	for k := range r.keep {
		list = append(list, k)
	}
	slices.SortFunc(list, func(a, b SnapshotRef) int { return strings.Compare(a.Key, b.Key) })
	return list
}

func TestGCLeaseLifecycle(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t)
	blobs := newFakeBlobs("a")
	gc := NewGC(db, blobs)
	seeds(seedLease("l"), seedLeasedBlob("l", "a"))(t, db)

	if err := gc.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := remaining(t, db, "ns"); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("blobs while leased = %v, want [a]", got)
	}

	if err := db.Leases().Delete(ctx, "ns", "l"); err != nil {
		t.Fatalf("Delete lease: %v", err)
	}
	if err := gc.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := remaining(t, db, "ns"); len(got) != 0 {
		t.Errorf("blobs after the lease = %v, want none", got)
	}
	if deleted, _ := blobs.taken(); !slices.Equal(deleted, []string{blobDigest("a")}) {
		t.Errorf("deleted = %v, want [%s]", deleted, blobDigest("a"))
	}
}

func TestGCAbortsOnUnreadableRecord(t *testing.T) {
	tests := []struct {
		name string
		seed func(t *testing.T, db *DB)
	}{
		{"blob", func(t *testing.T, db *DB) { seedBlobRecord(t, db, "ns", blobDigest("b"), []byte{0xff}) }},
		{"blob without record", func(t *testing.T, db *DB) { seedEmptyBucket(t, db, "ns", "content", "blobs", blobDigest("b")) }},
		{"image", func(t *testing.T, db *DB) { seedRecord(t, db, "ns", keyImages, "img", []byte{0xff}) }},
		{"image without record", func(t *testing.T, db *DB) { seedEmptyBucket(t, db, "ns", "images", "img") }},
		{"container", func(t *testing.T, db *DB) { seedRecord(t, db, "ns", keyContainers, "c", []byte{0xff}) }},
		{"lease", func(t *testing.T, db *DB) { seedRecord(t, db, "ns", keyLeases, "l", []byte{0xff}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTestDB(t)
			blobs := newFakeBlobs("a", "f")
			seedBlob("ns", "a")(t, db)
			tt.seed(t, db)

			err := NewGC(db, blobs).Run(context.Background())
			checkErr(t, err, errdefs.ErrDataLoss, "")
			if _, err := db.Content().Info(context.Background(), "ns", blobDigest("a")); err != nil {
				t.Errorf("unreferenced blob after an aborted run: %v, want it kept", err)
			}
			if deleted, _ := blobs.taken(); len(deleted) != 0 {
				t.Errorf("deleted = %v, want none", deleted)
			}
		})
	}
}

// seedBlobRecord stores raw as the record of blob d in ns.
func seedBlobRecord(t *testing.T, db *DB, ns, d string, raw []byte) {
	t.Helper()
	err := db.bdb.Update(func(tx *bolt.Tx) error {
		nb, err := ensureNamespace(tx, ns)
		if err != nil {
			return err
		}
		b, err := createPath(nb, keyContent, keyBlobs, []byte(d))
		if err != nil {
			return err
		}
		return b.Put(keyRecord, raw)
	})
	if err != nil {
		t.Fatalf("seed blob record: %v", err)
	}
}

// publishedEvent is one event a recordingPublisher received.
type publishedEvent struct {
	NS    string
	Topic string
	Event proto.Message
}

type recordingPublisher struct {
	mu     sync.Mutex
	events []publishedEvent
}

func (p *recordingPublisher) Publish(_ context.Context, ns, topic string, ev proto.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, publishedEvent{NS: ns, Topic: topic, Event: ev})
	return nil
}

func TestGCEventsAndMetrics(t *testing.T) {
	db := openTestDB(t)
	pub := &recordingPublisher{}
	gc := NewGC(db, newFakeBlobs("a"), WithGCEvents(pub))
	reg := prometheus.NewRegistry()
	if err := gc.Register(reg); err != nil {
		t.Fatalf("Register: %v", err)
	}
	seedBlob("ns", "a")(t, db)

	if err := gc.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := []publishedEvent{{"ns", TopicContentDelete, &eventsapi.ContentDelete{Digest: blobDigest("a")}}}
	if diff := cmp.Diff(want, pub.events, protocmp.Transform()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if got := testutil.ToFloat64(gc.runs); got != 1 {
		t.Errorf("runs = %v, want 1", got)
	}
	if n, err := testutil.GatherAndCount(reg, "corral_metadata_gc_duration_seconds"); err != nil || n != 1 {
		t.Errorf("duration histogram count = %d, %v; want 1 series", n, err)
	}
}

func TestGCBackground(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t)
	blobs := newFakeBlobs("a", "b")
	gc := NewGC(db, blobs, WithGCDelay(time.Millisecond))
	// The lease expires at the next whole second, the resolution of
	// gc.expire.
	exp := time.Now().Add(time.Second).Truncate(time.Second)
	seeds(
		seedLease("l", LabelExpire, exp.Format(time.RFC3339)),
		seedLeasedBlob("l", "a"),
		seedImage("img", "b"), seedBlob("ns", "b"),
	)(t, db)
	if err := gc.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { gc.Close() })

	// A delete and a Schedule collect the image's blob.
	err := db.bdb.Update(func(tx *bolt.Tx) error {
		return bucket(tx, keyNamespaces, []byte("ns"), keyImages).DeleteBucket([]byte("img"))
	})
	if err != nil {
		t.Fatal(err)
	}
	gc.Schedule()
	waitFor(t, func() bool { return !slices.Contains(remaining(t, db, "ns"), "b") })
	if got := remaining(t, db, "ns"); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("blobs before the lease expired = %v, want [a]", got)
	}

	// The lease's expiry collects the leased blob without a Schedule.
	waitFor(t, func() bool { return len(remaining(t, db, "ns")) == 0 })
	if list, _ := db.Leases().List(ctx, "ns"); len(list) != 0 {
		t.Errorf("leases after expiry = %v, want none", list)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestGCExpireAtWakes(t *testing.T) {
	db := openTestDB(t)
	gc := NewGC(db, newFakeBlobs("a"))
	if err := gc.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { gc.Close() })

	// A lease made after Start is collected at its expiry once told.
	exp := time.Now().Add(time.Second).Truncate(time.Second)
	seeds(seedLease("l", LabelExpire, exp.Format(time.RFC3339)), seedLeasedBlob("l", "a"))(t, db)
	gc.ExpireAt(exp)
	waitFor(t, func() bool { return len(remaining(t, db, "ns")) == 0 })
}

func TestEarliest(t *testing.T) {
	t1 := time.Unix(1, 0)
	t2 := time.Unix(2, 0)
	var never time.Time
	tests := []struct{ a, b, want time.Time }{
		{never, never, never},
		{never, t1, t1},
		{t1, never, t1},
		{t1, t2, t1},
		{t2, t1, t1},
	}
	for _, tt := range tests {
		if got := earliest(tt.a, tt.b); !got.Equal(tt.want) {
			t.Errorf("earliest(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

// TestGCAbortsOrphanIngests: an ingest of the content plugin that no record
// names and nobody wrote to for IngestTTL is aborted; one with a record, a
// recent one, one a writer holds and one outside any namespace stay, and
// the collection succeeds.
func TestGCAbortsOrphanIngests(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t)
	blobs := newFakeBlobs()
	old := time.Now().Add(-IngestTTL - time.Hour)
	blobs.ingests = map[string]fakeIngest{
		"a/live":   {updated: old},
		"a/orphan": {updated: old},
		"b/gone":   {updated: old},
		"b/recent": {updated: time.Now()},
		"b/held":   {updated: old, locked: true},
		"bare":     {updated: old},
	}
	if err := db.Content().StartIngest(ctx, "a", "live", "", ""); err != nil {
		t.Fatalf("StartIngest: %v", err)
	}
	if err := NewGC(db, blobs).Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	_, aborted := blobs.taken()
	sort.Strings(aborted)
	if !slices.Equal(aborted, []string{"a/orphan", "b/gone"}) {
		t.Errorf("aborted %v, want [a/orphan b/gone]", aborted)
	}
	var left []string
	for ref := range blobs.ingests {
		left = append(left, ref)
	}
	sort.Strings(left)
	if want := []string{"a/live", "b/held", "b/recent", "bare"}; !slices.Equal(left, want) {
		t.Errorf("ingests left %v, want %v", left, want)
	}
}

// TestGCKeepsBytesAnIngestExpects keeps the bytes a kept ingest expects,
// which its writer may have committed and not yet recorded, and deletes
// them once the ingest is gone.
func TestGCKeepsBytesAnIngestExpects(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t)
	blobs := newFakeBlobs("committed", "stray")
	d := blobDigest("committed")
	if err := db.Content().StartIngest(ctx, "ns", "r", d, ""); err != nil {
		t.Fatalf("StartIngest: %v", err)
	}
	gc := NewGC(db, blobs)
	if err := gc.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if deleted, _ := blobs.taken(); !slices.Equal(deleted, []string{blobDigest("stray")}) {
		t.Errorf("deleted %v, want only the stray blob", deleted)
	}

	if err := db.Content().ForgetIngest(ctx, "ns", "r"); err != nil {
		t.Fatalf("ForgetIngest: %v", err)
	}
	if err := gc.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if deleted, _ := blobs.taken(); !slices.Equal(deleted, []string{d}) {
		t.Errorf("deleted %v after the ingest went, want %s", deleted, d)
	}
}
