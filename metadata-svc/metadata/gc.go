package metadata

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"

	"corral.dev/pluginkit"
)

// Labels the collector follows.
const (
	// LabelRoot makes any object a root of the collection.
	LabelRoot = "containerd.io/gc.root"
	// LabelRefContent, alone or followed by "." or "/" and any suffix, names
	// a blob the labelled object holds.
	LabelRefContent = "containerd.io/gc.ref.content"
	// LabelRefSnapshot followed by a snapshotter name names a snapshot key
	// of that snapshotter the labelled object holds.
	LabelRefSnapshot = "containerd.io/gc.ref.snapshot."
)

// TopicContentDelete is the event topic of a blob leaving a namespace.
const TopicContentDelete = "/content/delete"

// Defaults of a GC.
const (
	// DefaultGCDelay is how long a scheduled collection waits for further
	// deletes before it runs.
	DefaultGCDelay = 100 * time.Millisecond
	// gcTimeout bounds one background collection.
	gcTimeout = 5 * time.Minute
	// gcRetryDelay is how long a failed background collection waits before
	// it runs again, as what it could not delete is still there.
	gcRetryDelay = time.Minute
	// expiryMargin is added to a lease's expiry before the timer fires, so
	// that the lease is past it when the collection looks.
	expiryMargin = 10 * time.Millisecond
)

// ContentBackend is what the collector needs from the content plugin,
// which keeps the bytes of every namespace's blobs under one store.
type ContentBackend interface {
	// Blobs returns the digest of every blob in the store.
	Blobs(ctx context.Context) ([]digest.Digest, error)
	// DeleteBlob deletes a blob; one already gone is not an error.
	DeleteBlob(ctx context.Context, d digest.Digest) error
	// AbortIngest aborts the ingest of the raw (namespace-prefixed) ref;
	// one already gone is not an error.
	AbortIngest(ctx context.Context, ref string) error
	// Ingests returns every ingest in the store.
	Ingests(ctx context.Context) ([]RawIngest, error)
}

// RawIngest is an ingest of the content plugin.
type RawIngest struct {
	Ref       string    // "<namespace>/<ref>"
	UpdatedAt time.Time // of its last write
}

// SnapshotRef names a snapshot as a namespace sees it.
type SnapshotRef struct {
	Namespace   string
	Snapshotter string
	Key         string
}

// SnapshotCollector is the snapshot side of a collection. After the mark
// phase the collector hands it every snapshot something still holds; it
// removes the others from the snapshotter plugins and their records.
type SnapshotCollector interface {
	// Collect keeps the snapshots in keep and removes the rest.
	Collect(ctx context.Context, keep map[SnapshotRef]struct{}) error
}

// noSnapshots is the SnapshotCollector while no snapshotter plugin exists.
type noSnapshots struct{ log zerolog.Logger }

func (n noSnapshots) Collect(_ context.Context, keep map[SnapshotRef]struct{}) error {
	n.log.Debug().Int("kept", len(keep)).Msg("no snapshotters, snapshot sweep skipped")
	return nil
}

// GC is the garbage collector of the metadata database: a mark from the
// roots (images, containers, unexpired leases, ingests in use and objects
// labelled [LabelRoot]) along [LabelRefContent] and [LabelRefSnapshot]
// edges, then a sweep of every blob record, ingest and expired lease the
// mark did not reach, and of the bytes no namespace holds any more. The
// bytes an ingest kept by the mark expects are held too: the content plugin
// commits a write's bytes before it has them recorded.
//
// Callers that delete something call [GC.Schedule]; a request that asks for
// a synchronous collection (sync: true) calls [GC.Run]. Writers that make a
// record for bytes already in the content plugin do so under [GC.Hold].
type GC struct {
	db        *DB
	content   ContentBackend
	snapshots SnapshotCollector
	events    pluginkit.Publisher
	log       zerolog.Logger
	delay     time.Duration

	// mu is held for writing by a collection and for reading by writers
	// between checking for bytes and recording them.
	mu sync.RWMutex

	trigger chan struct{}
	rearm   chan struct{}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	started atomic.Bool

	wakeMu sync.Mutex
	wakeAt time.Time // when the expiry timer fires, zero for never
	hint   time.Time // soonest expiry told by ExpireAt since the last mark

	runs     prometheus.Counter
	duration prometheus.Histogram
}

// GCOpt configures a GC made by [NewGC].
type GCOpt func(*GC)

// WithSnapshotCollector sets the snapshot side of the collection.
func WithSnapshotCollector(sc SnapshotCollector) GCOpt {
	return func(g *GC) { g.snapshots = sc }
}

// WithGCEvents makes the collector publish [TopicContentDelete] for each
// blob record it removes.
func WithGCEvents(p pluginkit.Publisher) GCOpt {
	return func(g *GC) { g.events = p }
}

// WithGCLogger sets the collector's logger.
func WithGCLogger(log zerolog.Logger) GCOpt {
	return func(g *GC) { g.log = log }
}

// WithGCDelay sets how long a scheduled collection waits; see
// [DefaultGCDelay].
func WithGCDelay(d time.Duration) GCOpt {
	return func(g *GC) { g.delay = d }
}

// NewGC returns a collector of db whose bytes live in content. It runs
// only when called until [GC.Start].
func NewGC(db *DB, content ContentBackend, opts ...GCOpt) *GC {
	g := &GC{
		db:      db,
		content: content,
		log:     zerolog.Nop(),
		delay:   DefaultGCDelay,
		trigger: make(chan struct{}, 1),
		rearm:   make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		runs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "corral_metadata_gc_runs_total",
			Help: "Garbage collections of the metadata database, failed ones included.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "corral_metadata_gc_duration_seconds",
			Help:    "Duration of garbage collections of the metadata database.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
	}
	for _, o := range opts {
		o(g)
	}
	if g.snapshots == nil {
		g.snapshots = noSnapshots{log: g.log}
	}
	return g
}

// Register registers the collector's metrics on reg.
func (g *GC) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{g.runs, g.duration} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register gc metrics: %w", err)
		}
	}
	return nil
}

// Hold keeps collections from deleting bytes until the returned function
// is called. A writer holds it from checking that bytes exist in the
// content plugin (or committing them) until their record is made.
func (g *GC) Hold() (release func()) {
	g.mu.RLock()
	return g.mu.RUnlock
}

// Run collects garbage now and returns when done. It fails without
// deleting anything if it finds a record it cannot read; failures to
// delete bytes are returned after the rest of the collection is done.
func (g *GC) Run(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	start := time.Now()
	defer func() {
		g.runs.Inc()
		g.duration.Observe(time.Since(start).Seconds())
	}()

	// Mark and sweep the records in one transaction, which sees every
	// lease told about so far.
	g.takeHint()
	var res sweepResult
	err := g.db.bdb.Update(func(tx *bolt.Tx) error {
		var err error
		res, err = collect(tx, g.db.now())
		return err
	})
	if err != nil {
		return fmt.Errorf("collect garbage: %w", err)
	}
	g.setWake(res.nextExpiry)
	g.publishDeletes(ctx, res.deleted)

	// Remove what no record holds from the plugins.
	errs := []error{
		g.deleteBlobs(ctx, res.held),
		g.abortIngests(ctx, res.aborted),
		g.abortOrphanIngests(ctx),
		g.snapshots.Collect(ctx, res.snapshots),
	}
	g.log.Debug().Int("blobs", len(res.deleted)).Int("ingests", len(res.aborted)).
		Int("leases", res.expired).Dur("took", time.Since(start)).Msg("garbage collected")
	return errors.Join(errs...)
}

func (g *GC) publishDeletes(ctx context.Context, deleted []blobRef) {
	if g.events == nil {
		return
	}
	for _, b := range deleted {
		ev := &eventsapi.ContentDelete{Digest: b.digest}
		if err := g.events.Publish(ctx, b.ns, TopicContentDelete, ev); err != nil {
			g.log.Warn().Err(err).Str("namespace", b.ns).Str("digest", b.digest).
				Msg("publish content delete")
		}
	}
}

// deleteBlobs deletes from the content plugin every blob not in held.
func (g *GC) deleteBlobs(ctx context.Context, held map[digest.Digest]struct{}) error {
	all, err := g.content.Blobs(ctx)
	if err != nil {
		return fmt.Errorf("list blobs for collection: %w", err)
	}
	var errs []error
	for _, d := range all {
		if _, ok := held[d]; ok {
			continue
		}
		if err := g.content.DeleteBlob(ctx, d); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete blob %s: %w", d, err))
			continue
		}
		g.log.Debug().Str("digest", d.String()).Msg("blob deleted")
	}
	return errors.Join(errs...)
}

func (g *GC) abortIngests(ctx context.Context, refs []string) error {
	var errs []error
	for _, ref := range refs {
		if err := g.content.AbortIngest(ctx, ref); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("abort ingest %q: %w", ref, err))
		}
	}
	return errors.Join(errs...)
}

// abortOrphanIngests aborts the content plugin's ingests that no record
// names and nobody wrote to for [IngestTTL], such as one whose abort failed
// in an earlier collection. A recent one may still have a writer: two
// writers of one ref share one record, which the first commit forgets. An
// ingest a writer holds is skipped (the content plugin answers Unavailable),
// and the next collection looks again.
func (g *GC) abortOrphanIngests(ctx context.Context) error {
	ingests, err := g.content.Ingests(ctx)
	if err != nil {
		return fmt.Errorf("list ingests for collection: %w", err)
	}
	idleSince := g.db.now().Add(-IngestTTL)
	var orphans []string
	err = g.db.bdb.View(func(tx *bolt.Tx) error {
		for _, in := range ingests {
			ns, ref, ok := strings.Cut(in.Ref, "/")
			if ok && in.UpdatedAt.Before(idleSince) &&
				bucket(tx, keyNamespaces, []byte(ns), keyContent, keyIngests, []byte(ref)) == nil {
				orphans = append(orphans, in.Ref)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read ingest records: %w", err)
	}
	var errs []error
	for _, ref := range orphans {
		err := g.content.AbortIngest(ctx, ref)
		switch {
		case err == nil:
			g.log.Debug().Str("ref", ref).Msg("aborted an ingest no record names")
		case !errdefs.IsNotFound(err) && !errdefs.IsUnavailable(err):
			errs = append(errs, fmt.Errorf("abort ingest %q: %w", ref, err))
		}
	}
	return errors.Join(errs...)
}

// Schedule asks for a collection soon: after the GC's delay, folding in
// every Schedule until then. Without [GC.Start] it does nothing.
func (g *GC) Schedule() {
	select {
	case g.trigger <- struct{}{}:
	default:
	}
}

// ExpireAt tells the collector that a lease expires at t, so that it
// collects then.
func (g *GC) ExpireAt(t time.Time) {
	g.wakeMu.Lock()
	defer g.wakeMu.Unlock()
	g.hint = earliest(g.hint, t)
	if w := earliest(g.wakeAt, t); !w.Equal(g.wakeAt) {
		g.wakeAt = w
		g.signalRearm()
	}
}

// takeHint forgets the expiries told so far, before a mark that reads them.
func (g *GC) takeHint() {
	g.wakeMu.Lock()
	g.hint = time.Time{}
	g.wakeMu.Unlock()
}

// setWake sets the expiry timer to t (zero for none) or to an expiry told
// since the last mark began, whichever comes first.
func (g *GC) setWake(t time.Time) {
	g.wakeMu.Lock()
	defer g.wakeMu.Unlock()
	g.wakeAt = earliest(t, g.hint)
	g.signalRearm()
}

func (g *GC) signalRearm() {
	select {
	case g.rearm <- struct{}{}:
	default:
	}
}

// earliest returns the earlier of a and b, a zero time counting as never.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// Start runs the background collector: a collection after each burst of
// [GC.Schedule] calls and at each lease expiry, until [GC.Close].
func (g *GC) Start() error {
	next, err := g.nextExpiry()
	if err != nil {
		return fmt.Errorf("start garbage collector: %w", err)
	}
	g.started.Store(true)
	g.setWake(next)
	go g.loop()
	return nil
}

// nextExpiry returns the soonest expiry of a lease, zero if none expires.
func (g *GC) nextExpiry() (time.Time, error) {
	var next time.Time
	err := g.db.view(func(tx *bolt.Tx) error {
		root, err := mustBucket(tx, keyNamespaces)
		if err != nil {
			return err
		}
		return root.ForEachBucket(func(ns []byte) error {
			return forEachLease(tx, string(ns), func(l *leasesapi.Lease, _ *bolt.Bucket) error {
				if exp, ok := leaseExpiry(l); ok && (next.IsZero() || exp.Before(next)) {
					next = exp
				}
				return nil
			})
		})
	})
	return next, err
}

// Collect runs a collection now when sync is set, and schedules one
// otherwise.
func (g *GC) Collect(ctx context.Context, sync bool) error {
	if sync {
		return g.Run(ctx)
	}
	g.Schedule()
	return nil
}

// Close stops the background collector and waits for a running collection.
func (g *GC) Close() error {
	g.once.Do(func() { close(g.stop) })
	if g.started.Load() {
		<-g.done
	}
	return nil
}

func (g *GC) loop() {
	defer close(g.done)
	debounce := stoppedTimer()
	expiry := stoppedTimer()
	var pending bool // debounce is running
	for {
		select {
		case <-g.stop:
			return
		case <-g.trigger:
			if !pending {
				pending = true
				debounce.Reset(g.delay)
			}
		case <-g.rearm:
			g.armExpiry(expiry)
		case <-debounce.C:
			pending = false
			g.runBackground()
		case <-expiry.C:
			g.runBackground()
		}
	}
}

func (g *GC) armExpiry(t *time.Timer) {
	g.wakeMu.Lock()
	at := g.wakeAt
	g.wakeMu.Unlock()
	t.Stop()
	if !at.IsZero() {
		t.Reset(max(time.Until(at), 0) + expiryMargin)
	}
}

func (g *GC) runBackground() {
	ctx, cancel := context.WithTimeout(context.Background(), gcTimeout)
	defer cancel()
	go func() {
		select {
		case <-g.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := g.Run(ctx); err != nil {
		g.log.Error().Err(err).Msg("garbage collection")
		time.AfterFunc(gcRetryDelay, g.Schedule)
	}
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// blobRef is a blob record of one namespace.
type blobRef struct{ ns, digest string }

// sweepResult is what the transaction of a collection found and removed.
type sweepResult struct {
	deleted    []blobRef                  // blob records removed
	aborted    []string                   // raw refs of ingests to abort
	expired    int                        // expired leases removed
	held       map[digest.Digest]struct{} // blobs some namespace still holds
	snapshots  map[SnapshotRef]struct{}   // snapshots to keep
	nextExpiry time.Time                  // of the soonest unexpired lease
}

// collect marks from the roots and sweeps the records in tx.
func collect(tx *bolt.Tx, now time.Time) (sweepResult, error) {
	m := newMarker(tx, now)
	root, err := mustBucket(tx, keyNamespaces)
	if err != nil {
		return sweepResult{}, err
	}
	err = root.ForEachBucket(func(ns []byte) error {
		return m.roots(string(ns), root.Bucket(ns))
	})
	if err == nil {
		err = m.walk()
	}
	if err != nil {
		return sweepResult{}, err
	}
	return m.sweep(root)
}

// snapshotKey joins a snapshotter and a key into a node key.
func snapshotKey(snapshotter, key string) string {
	return snapshotter + "/" + key
}

// refsFromLabels calls fn for each node the labels of an object in ns name.
func refsFromLabels(ns string, labels map[string]string, fn func(node)) {
	for k, v := range labels {
		if v == "" {
			continue
		}
		if sn, ok := strings.CutPrefix(k, LabelRefSnapshot); ok && sn != "" {
			fn(node{kind: kindSnapshot, ns: ns, key: snapshotKey(sn, v)})
			continue
		}
		rest, ok := strings.CutPrefix(k, LabelRefContent)
		if ok && (rest == "" || rest[0] == '.' || rest[0] == '/') {
			fn(node{kind: kindContent, ns: ns, key: v})
		}
	}
}
