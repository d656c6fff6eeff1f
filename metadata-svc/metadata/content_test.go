package metadata

import (
	"context"
	"strings"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	plabels "corral.dev/pluginkit/labels"
)

// blobDigest returns a valid sha256 digest made of the hex digit c.
func blobDigest(c string) string {
	return "sha256:" + strings.Repeat(c, 64)
}

// blobAt returns the record of blob digest c with size and labels kv,
// created and updated at at.
func blobAt(c string, size int64, at time.Time, kv ...string) *contentapi.Info {
	labels := pairs(kv...)
	if labels == nil {
		labels = map[string]string{}
	}
	return &contentapi.Info{
		Digest:    blobDigest(c),
		Size:      size,
		CreatedAt: timestamppb.New(at),
		UpdatedAt: timestamppb.New(at),
		Labels:    labels,
	}
}

// addTestBlob records blob digest c in ns with labels kv, under lease.
func addTestBlob(t *testing.T, db *DB, ns, c, lease string, kv ...string) {
	t.Helper()
	info := &contentapi.Info{Digest: blobDigest(c), Size: 3, Labels: pairs(kv...)}
	if _, err := db.Content().Add(context.Background(), ns, info, lease, ""); err != nil {
		t.Fatalf("Add(%s, %s): %v", ns, c, err)
	}
}

func listBlobs(t *testing.T, db *DB, ns string, fs ...string) []*contentapi.Info {
	t.Helper()
	var list []*contentapi.Info
	err := db.Content().Walk(context.Background(), ns, func(info *contentapi.Info) error {
		list = append(list, info)
		return nil
	}, fs...)
	if err != nil {
		t.Fatalf("Walk: %v", err)
	}
	return list
}

func TestContentAdd(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	t0 := clock.Now()
	tests := []struct {
		name    string
		info    *contentapi.Info
		lease   string
		wantErr error
		want    []*contentapi.Info
	}{
		{
			name: "new",
			info: &contentapi.Info{Digest: blobDigest("a"), Size: 3, Labels: pairs("k", "v", "empty", "")},
			want: []*contentapi.Info{blobAt("a", 3, t0, "k", "v")},
		},
		{
			name:    "existing",
			info:    &contentapi.Info{Digest: blobDigest("0"), Size: 3},
			wantErr: errdefs.ErrAlreadyExists,
		},
		{
			name:    "bad digest",
			info:    &contentapi.Info{Digest: "sha256:../../etc/passwd", Size: 3},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "label too big",
			info:    &contentapi.Info{Digest: blobDigest("a"), Labels: pairs("k", strings.Repeat("v", plabels.MaxSize))},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "missing lease",
			info:    &contentapi.Info{Digest: blobDigest("a"), Size: 3},
			lease:   "nope",
			wantErr: errdefs.ErrNotFound,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTestDB(t, WithClock(clock.Now))
			addTestBlob(t, db, "ns", "0", "")
			_, err := db.Content().Add(ctx, "ns", tt.info, tt.lease, "")
			checkErr(t, err, tt.wantErr, "")

			got := listBlobs(t, db, "ns", "digest!="+blobDigest("0"))
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
		})
	}
}

func TestContentUpdate(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		info    *contentapi.Info
		paths   []string
		wantErr error
		want    map[string]string
	}{
		{
			name:  "set one",
			info:  &contentapi.Info{Digest: blobDigest("a"), Labels: pairs("b", "2")},
			paths: []string{"labels.b"},
			want:  pairs("a", "1", "b", "2"),
		},
		{
			name:  "delete one",
			info:  &contentapi.Info{Digest: blobDigest("a")},
			paths: []string{"labels.a"},
			want:  map[string]string{},
		},
		{
			name:  "replace",
			info:  &contentapi.Info{Digest: blobDigest("a"), Labels: pairs("c", "3")},
			paths: []string{"labels"},
			want:  pairs("c", "3"),
		},
		{
			name: "no paths replace",
			info: &contentapi.Info{Digest: blobDigest("a"), Labels: pairs("c", "3")},
			want: pairs("c", "3"),
		},
		{
			name:    "unknown path",
			info:    &contentapi.Info{Digest: blobDigest("a"), Size: 9},
			paths:   []string{"size"},
			wantErr: errdefs.ErrInvalidArgument,
			want:    pairs("a", "1"),
		},
		{
			name:    "label too big",
			info:    &contentapi.Info{Digest: blobDigest("a"), Labels: pairs("b", strings.Repeat("v", plabels.MaxSize))},
			paths:   []string{"labels.b"},
			wantErr: errdefs.ErrInvalidArgument,
			want:    pairs("a", "1"),
		},
		{
			name:    "missing",
			info:    &contentapi.Info{Digest: blobDigest("b")},
			wantErr: errdefs.ErrNotFound,
			want:    pairs("a", "1"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newTestClock()
			db := openTestDB(t, WithClock(clock.Now))
			addTestBlob(t, db, "ns", "a", "", "a", "1")
			clock.Advance(time.Minute)

			got, err := db.Content().Update(ctx, "ns", tt.info, tt.paths)
			checkErr(t, err, tt.wantErr, "")
			if err == nil && !got.GetUpdatedAt().AsTime().Equal(clock.Now()) {
				t.Errorf("updated_at = %v, want %v", got.GetUpdatedAt().AsTime(), clock.Now())
			}
			info, err := db.Content().Info(ctx, "ns", blobDigest("a"))
			if err != nil {
				t.Fatalf("Info: %v", err)
			}
			if diff := cmp.Diff(tt.want, info.GetLabels(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("labels (-want +got):\n%s", diff)
			}
		})
	}
}

func TestContentWalkFilters(t *testing.T) {
	db := openTestDB(t)
	addTestBlob(t, db, "ns", "a", "", "tier", "db")
	addTestBlob(t, db, "ns", "b", "", "tier", "web", "containerd.io/gc.root", "x")
	addTestBlob(t, db, "other", "c", "")

	tests := []struct {
		filters []string
		want    []string
	}{
		{nil, []string{blobDigest("a"), blobDigest("b")}},
		{[]string{`labels.tier==db`}, []string{blobDigest("a")}},
		{[]string{`labels."containerd.io/gc.root"`}, []string{blobDigest("b")}},
		{[]string{"digest==" + blobDigest("b")}, []string{blobDigest("b")}},
		{[]string{"size==3,labels.tier~=^w"}, []string{blobDigest("b")}},
		{[]string{"labels.tier==db", "labels.tier==web"}, []string{blobDigest("a"), blobDigest("b")}},
		{[]string{"size==4"}, nil},
	}
	for _, tt := range tests {
		var got []string
		for _, info := range listBlobs(t, db, "ns", tt.filters...) {
			got = append(got, info.GetDigest())
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("Walk(%q) (-want +got):\n%s", tt.filters, diff)
		}
	}

	err := db.Content().Walk(context.Background(), "ns", nil, "labels.=")
	checkErr(t, err, errdefs.ErrInvalidArgument, "")
}

func TestContentDeleteAndReplay(t *testing.T) {
	db := openTestDB(t)
	addTestBlob(t, db, "ns", "a", "")

	if err := db.Content().Delete(call("c1"), "ns", blobDigest("a")); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	// The replay answers as the first call did.
	if err := db.Content().Delete(call("c1"), "ns", blobDigest("a")); err != nil {
		t.Errorf("replayed Delete: %v", err)
	}
	err := db.Content().Delete(call("c2"), "ns", blobDigest("a"))
	checkErr(t, err, errdefs.ErrNotFound, "content "+blobDigest("a")+": not found")
	_, err = db.Content().Info(context.Background(), "ns", blobDigest("a"))
	checkErr(t, err, errdefs.ErrNotFound, "")
}

func TestContentHoldAttachesLease(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t)
	addTestBlob(t, db, "ns", "a", "")
	if _, err := db.Leases().Create(ctx, "ns", "l1", nil); err != nil {
		t.Fatalf("Create lease: %v", err)
	}

	held, err := db.Content().Hold(ctx, "ns", digest.Digest(blobDigest("a")), "l1")
	if err != nil || !held {
		t.Fatalf("Hold = %v, %v; want true, nil", held, err)
	}
	held, err = db.Content().Hold(ctx, "ns", digest.Digest(blobDigest("b")), "l1")
	if err != nil || held {
		t.Fatalf("Hold of a missing blob = %v, %v; want false, nil", held, err)
	}
	_, err = db.Content().Hold(ctx, "ns", digest.Digest(blobDigest("a")), "nope")
	checkErr(t, err, errdefs.ErrNotFound, "")

	got, err := db.Leases().ListResources(ctx, "ns", "l1")
	if err != nil {
		t.Fatalf("ListResources: %v", err)
	}
	want := []*leasesapi.Resource{{ID: blobDigest("a"), Type: "content"}}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("resources (-want +got):\n%s", diff)
	}
}
