package metadata

import (
	"context"
	"regexp"
	"strings"
	"testing"

	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	plabels "corral.dev/pluginkit/labels"
)

func TestLeaseCreate(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		id      string
		labels  map[string]string
		wantErr error
		wantMsg string
	}{
		{name: "with id", id: "l2", labels: pairs("a", "1")},
		{name: "generated id"},
		{name: "existing", id: "l1", wantErr: errdefs.ErrAlreadyExists, wantMsg: `lease "l1": already exists`},
		{name: "go client random id", id: "318456861-_q5E"},
		{name: "control character", id: "a\x00b", wantErr: errdefs.ErrInvalidArgument},
		{name: "too long", id: strings.Repeat("l", maxLeaseIDLength+1), wantErr: errdefs.ErrInvalidArgument},
		{
			name:    "label too big",
			id:      "l3",
			labels:  pairs("k", strings.Repeat("v", plabels.MaxSize)),
			wantErr: errdefs.ErrInvalidArgument,
		},
	}
	generated := regexp.MustCompile(`^[0-9]+-[A-Za-z0-9]{4}$`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newTestClock()
			db := openTestDB(t, WithClock(clock.Now))
			if _, err := db.Leases().Create(ctx, "ns", "l1", nil); err != nil {
				t.Fatalf("Create l1: %v", err)
			}

			l, err := db.Leases().Create(ctx, "ns", tt.id, tt.labels)
			checkErr(t, err, tt.wantErr, tt.wantMsg)
			if err != nil {
				return
			}
			if tt.id == "" && !generated.MatchString(l.GetID()) {
				t.Errorf("generated id %q does not match %v", l.GetID(), generated)
			}
			want := &leasesapi.Lease{ID: l.GetID(), CreatedAt: timestamppb.New(clock.Now()), Labels: tt.labels}
			if diff := cmp.Diff(want, l, protocmp.Transform()); diff != "" {
				t.Errorf("lease (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLeaseCreateReplayKeepsGeneratedID(t *testing.T) {
	db := openTestDB(t)
	first, err := db.Leases().Create(call("c1"), "ns", "", nil)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	again, err := db.Leases().Create(call("c1"), "ns", "", nil)
	if err != nil {
		t.Fatalf("replayed Create: %v", err)
	}
	if again.GetID() != first.GetID() {
		t.Errorf("replayed id = %q, want %q", again.GetID(), first.GetID())
	}
	list, err := db.Leases().List(context.Background(), "ns")
	if err != nil || len(list) != 1 {
		t.Errorf("List = %d leases, %v; want 1", len(list), err)
	}
}

func TestLeaseDeleteAndList(t *testing.T) {
	ctx := context.Background()
	db := openTestDB(t)
	for id, labels := range map[string]map[string]string{
		"a": pairs("parity", "odd"),
		"b": nil,
		"c": pairs("parity", "odd"),
	} {
		if _, err := db.Leases().Create(ctx, "ns", id, labels); err != nil {
			t.Fatalf("Create %s: %v", id, err)
		}
	}
	if err := db.Leases().Delete(ctx, "ns", "c"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	checkErr(t, db.Leases().Delete(ctx, "ns", "c"), errdefs.ErrNotFound, `lease "c": not found`)
	checkErr(t, db.Leases().Delete(ctx, "other", "a"), errdefs.ErrNotFound, "")

	tests := []struct {
		filters []string
		want    []string
	}{
		{nil, []string{"a", "b"}},
		{[]string{"id==b"}, []string{"b"}},
		{[]string{"labels.parity==odd"}, []string{"a"}},
		{[]string{"labels.parity"}, []string{"a"}},
		{[]string{"id==a", "id==b"}, []string{"a", "b"}},
	}
	for _, tt := range tests {
		list, err := db.Leases().List(ctx, "ns", tt.filters...)
		if err != nil {
			t.Fatalf("List(%q): %v", tt.filters, err)
		}
		var got []string
		for _, l := range list {
			got = append(got, l.GetID())
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("List(%q) (-want +got):\n%s", tt.filters, diff)
		}
	}
}

func TestLeaseResources(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		lease   string
		r       *leasesapi.Resource
		wantErr error
	}{
		{name: "content", lease: "l", r: &leasesapi.Resource{ID: blobDigest("a"), Type: "content"}},
		{name: "ingest", lease: "l", r: &leasesapi.Resource{ID: "tar-index.json", Type: "ingests"}},
		{name: "snapshot", lease: "l", r: &leasesapi.Resource{ID: "extract-1 sha256:x", Type: "snapshots/overlayfs"}},
		{
			name:    "bad digest",
			lease:   "l",
			r:       &leasesapi.Resource{ID: "sha256:zz", Type: "content"},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "snapshot without snapshotter",
			lease:   "l",
			r:       &leasesapi.Resource{ID: "k", Type: "snapshots"},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "unknown type",
			lease:   "l",
			r:       &leasesapi.Resource{ID: "k", Type: "images"},
			wantErr: errdefs.ErrNotImplemented,
		},
		{
			name:    "no id",
			lease:   "l",
			r:       &leasesapi.Resource{Type: "ingests"},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "missing lease",
			lease:   "nope",
			r:       &leasesapi.Resource{ID: "k", Type: "ingests"},
			wantErr: errdefs.ErrNotFound,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTestDB(t)
			if _, err := db.Leases().Create(ctx, "ns", "l", nil); err != nil {
				t.Fatalf("Create: %v", err)
			}

			err := db.Leases().AddResource(ctx, "ns", tt.lease, tt.r)
			checkErr(t, err, tt.wantErr, "")
			got, lerr := db.Leases().ListResources(ctx, "ns", "l")
			if lerr != nil {
				t.Fatalf("ListResources: %v", lerr)
			}
			var want []*leasesapi.Resource
			if err == nil {
				want = append(want, tt.r)
			}
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("resources (-want +got):\n%s", diff)
			}
			if err != nil {
				return
			}

			if err := db.Leases().DeleteResource(ctx, "ns", "l", tt.r); err != nil {
				t.Fatalf("DeleteResource: %v", err)
			}
			if got, _ := db.Leases().ListResources(ctx, "ns", "l"); len(got) != 0 {
				t.Errorf("resources after DeleteResource = %v, want none", got)
			}
		})
	}
}

func TestLeaseListResourcesMissing(t *testing.T) {
	_, err := openTestDB(t).Leases().ListResources(context.Background(), "ns", "nope")
	checkErr(t, err, errdefs.ErrNotFound, `lease "nope": not found`)
}
