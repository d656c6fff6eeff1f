package metadata

import (
	"context"
	"strings"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	plabels "corral.dev/pluginkit/labels"
)

const specURL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

func spec(body string) *anypb.Any {
	return &anypb.Any{TypeUrl: specURL, Value: []byte(body)}
}

// testContainer returns a container id of image busybox on runc and
// overlayfs, with the labels kv (key, value, ...).
func testContainer(id string, kv ...string) *containersapi.Container {
	return &containersapi.Container{
		ID:     id,
		Labels: pairs(kv...),
		Image:  "docker.io/library/busybox:latest",
		Runtime: &containersapi.Container_Runtime{
			Name:    "io.containerd.runc.v2",
			Options: &anypb.Any{TypeUrl: "containerd.runc.v1.Options"},
		},
		Spec:        spec(`{"ociVersion":"1.0.2"}`),
		Snapshotter: "overlayfs",
		SnapshotKey: id,
		Extensions:  map[string]*anypb.Any{"ext": {TypeUrl: "x", Value: []byte("1")}},
	}
}

// containerTestDB opens a database whose clock stands at t0, creates seed
// in namespace testNS, then moves the clock to t0+1m.
func containerTestDB(t *testing.T, seed ...*containersapi.Container) (*DB, time.Time) {
	t.Helper()
	clock := newTestClock()
	db := openTestDB(t, WithClock(clock.Now))
	for _, c := range seed {
		if _, err := db.Containers().Create(context.Background(), testNS, c); err != nil {
			t.Fatalf("seed container %q: %v", c.GetID(), err)
		}
	}
	t0 := clock.Now()
	clock.Advance(time.Minute)
	return db, t0
}

func listContainers(t *testing.T, db *DB) []*containersapi.Container {
	t.Helper()
	list, err := db.Containers().List(context.Background(), testNS)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return list
}

// edit returns testContainer(id) changed by fn.
func edit(id string, fn func(c *containersapi.Container)) *containersapi.Container {
	c := testContainer(id)
	fn(c)
	return c
}

func TestContainerStoreCreate(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		c       *containersapi.Container
		wantErr error
		wantMsg string
	}{
		{name: "plain", c: testContainer("web-1", "k", "v")},
		{name: "no snapshot", c: edit("a", func(c *containersapi.Container) {
			c.Snapshotter, c.SnapshotKey = "", ""
		})},
		{
			name:    "existing",
			c:       testContainer("seeded"),
			wantErr: errdefs.ErrAlreadyExists,
			wantMsg: `container "seeded": already exists`,
		},
		{name: "no container", wantErr: errdefs.ErrInvalidArgument},
		{name: "empty id", c: testContainer(""), wantErr: errdefs.ErrInvalidArgument},
		{name: "bad id", c: testContainer("a/b"), wantErr: errdefs.ErrInvalidArgument},
		{name: "id too long", c: testContainer(strings.Repeat("a", 77)), wantErr: errdefs.ErrInvalidArgument},
		{
			name: "no runtime",
			c: edit("a", func(c *containersapi.Container) {
				c.Runtime = nil
			}),
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: `create container: container "a": runtime name must be set: invalid argument`,
		},
		{
			name:    "no spec",
			c:       edit("a", func(c *containersapi.Container) { c.Spec = nil }),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "snapshot key without snapshotter",
			c:       edit("a", func(c *containersapi.Container) { c.Snapshotter = "" }),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name: "empty extension key",
			c: edit("a", func(c *containersapi.Container) {
				c.Extensions[""] = &anypb.Any{}
			}),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{name: "label at limit", c: testContainer("a", "k", strings.Repeat("v", plabels.MaxSize-1))},
		{
			name:    "label over limit",
			c:       testContainer("a", "k", strings.Repeat("v", plabels.MaxSize)),
			wantErr: errdefs.ErrInvalidArgument,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, t0 := containerTestDB(t, testContainer("seeded"))
			if tt.c != nil {
				// A client's timestamps are ignored: ctr 1.6 sends year 1.
				tt.c.CreatedAt = timestamppb.New(time.Time{})
				tt.c.UpdatedAt = timestamppb.New(time.Time{})
			}

			got, err := db.Containers().Create(ctx, testNS, tt.c)
			checkErr(t, err, tt.wantErr, tt.wantMsg)
			if err != nil {
				if n := len(listContainers(t, db)); n != 1 {
					t.Errorf("containers after failed create = %d, want 1", n)
				}
				return
			}
			now := timestamppb.New(t0.Add(time.Minute))
			want := edit(tt.c.GetID(), func(c *containersapi.Container) {
				c.Labels = tt.c.GetLabels()
				c.Snapshotter, c.SnapshotKey = tt.c.GetSnapshotter(), tt.c.GetSnapshotKey()
				c.CreatedAt, c.UpdatedAt = now, now
			})
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Create mismatch (-want +got):\n%s", diff)
			}
			stored, err := db.Containers().Get(ctx, testNS, tt.c.GetID())
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if diff := cmp.Diff(got, stored, protocmp.Transform()); diff != "" {
				t.Errorf("stored container mismatch (-created +stored):\n%s", diff)
			}
		})
	}
}

func TestContainerStoreUpdate(t *testing.T) {
	ctx := context.Background()
	seed := func() *containersapi.Container { return testContainer("a", "k", "v", "old", "x") }
	changed := func(fn func(c *containersapi.Container)) *containersapi.Container {
		c := seed()
		fn(c)
		return c
	}
	newExt := &anypb.Any{TypeUrl: "y", Value: []byte("2")}
	tests := []struct {
		name    string
		req     *containersapi.Container
		paths   []string
		want    *containersapi.Container
		wantErr error
		wantMsg string
	}{
		{
			name:  "labels",
			req:   testContainer("a", "n", "1"),
			paths: []string{"labels"},
			want:  changed(func(c *containersapi.Container) { c.Labels = pairs("n", "1") }),
		},
		{
			name:  "one label set",
			req:   testContainer("a", "n", "1", "k", "ignored"),
			paths: []string{"labels.n"},
			want:  changed(func(c *containersapi.Container) { c.Labels["n"] = "1" }),
		},
		{
			name:  "one label deleted",
			req:   testContainer("a"),
			paths: []string{"labels.old"},
			want:  changed(func(c *containersapi.Container) { delete(c.Labels, "old") }),
		},
		{
			name:  "spec",
			req:   edit("a", func(c *containersapi.Container) { c.Spec = spec("{}") }),
			paths: []string{"spec"},
			want:  changed(func(c *containersapi.Container) { c.Spec = spec("{}") }),
		},
		{
			name: "extensions",
			req: edit("a", func(c *containersapi.Container) {
				c.Extensions = map[string]*anypb.Any{"new": newExt}
			}),
			paths: []string{"extensions"},
			want: changed(func(c *containersapi.Container) {
				c.Extensions = map[string]*anypb.Any{"new": newExt}
			}),
		},
		{
			name:  "one extension set",
			req:   edit("a", func(c *containersapi.Container) { c.Extensions["new"] = newExt }),
			paths: []string{"extensions.new"},
			want:  changed(func(c *containersapi.Container) { c.Extensions["new"] = newExt }),
		},
		{
			name:  "one extension deleted",
			req:   edit("a", func(c *containersapi.Container) { c.Extensions = nil }),
			paths: []string{"extensions.ext"},
			want:  changed(func(c *containersapi.Container) { c.Extensions = nil }),
		},
		{
			name:  "image",
			req:   edit("a", func(c *containersapi.Container) { c.Image = "redis" }),
			paths: []string{"image"},
			want:  changed(func(c *containersapi.Container) { c.Image = "redis" }),
		},
		{
			name:  "snapshot key",
			req:   edit("a", func(c *containersapi.Container) { c.SnapshotKey = "k2" }),
			paths: []string{"snapshotkey"},
			want:  changed(func(c *containersapi.Container) { c.SnapshotKey = "k2" }),
		},
		{
			name: "empty mask replaces mutable fields",
			req: edit("a", func(c *containersapi.Container) {
				c.Labels, c.Image, c.Spec, c.Extensions = pairs("n", "1"), "redis", spec("{}"), nil
				c.Runtime.Options = nil // the runtime is kept whole
			}),
			want: changed(func(c *containersapi.Container) {
				c.Labels, c.Image, c.Spec, c.Extensions = pairs("n", "1"), "redis", spec("{}"), nil
			}),
		},
		{
			name: "empty mask with other runtime",
			req: edit("a", func(c *containersapi.Container) {
				c.Runtime.Name = "io.containerd.kata.v2"
			}),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "empty mask with other snapshotter",
			req:     edit("a", func(c *containersapi.Container) { c.Snapshotter = "btrfs" }),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "runtime path",
			req:     testContainer("a"),
			paths:   []string{"runtime"},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: `update container "a": field "runtime" is immutable: invalid argument`,
		},
		{
			name:    "snapshotter path",
			req:     testContainer("a"),
			paths:   []string{"snapshotter"},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "unknown path",
			req:     testContainer("a"),
			paths:   []string{"id"},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "spec removed",
			req:     edit("a", func(c *containersapi.Container) { c.Spec = nil }),
			paths:   []string{"spec"},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "label over limit",
			req:     testContainer("a", "n", strings.Repeat("v", plabels.MaxSize)),
			paths:   []string{"labels.n"},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "empty extension key",
			req:     testContainer("a"),
			paths:   []string{"extensions."},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "missing",
			req:     testContainer("b"),
			paths:   []string{"labels"},
			wantErr: errdefs.ErrNotFound,
			wantMsg: `container "b": not found`,
		},
		{name: "bad id", req: testContainer("a/b"), wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, t0 := containerTestDB(t, seed())
			got, err := db.Containers().Update(ctx, testNS, tt.req, tt.paths)
			checkErr(t, err, tt.wantErr, tt.wantMsg)

			want := seed()
			want.CreatedAt, want.UpdatedAt = timestamppb.New(t0), timestamppb.New(t0)
			if err == nil {
				want = tt.want
				want.CreatedAt = timestamppb.New(t0)
				want.UpdatedAt = timestamppb.New(t0.Add(time.Minute))
				if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
					t.Errorf("Update mismatch (-want +got):\n%s", diff)
				}
			}
			stored := listContainers(t, db)
			if diff := cmp.Diff([]*containersapi.Container{want}, stored, protocmp.Transform()); diff != "" {
				t.Errorf("stored containers mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestContainerStoreList(t *testing.T) {
	ctx := context.Background()
	db, _ := containerTestDB(t,
		testContainer("web", "tier", "web"),
		edit("db", func(c *containersapi.Container) {
			c.Image, c.Labels = "redis", pairs("tier", "db", "a.b", "c")
			c.Runtime.Name, c.Snapshotter = "io.containerd.kata.v2", "btrfs"
		}),
		testContainer("tmp"),
	)
	tests := []struct {
		filters []string
		want    []string
		wantErr error
	}{
		{want: []string{"db", "tmp", "web"}},
		{filters: []string{"id==web"}, want: []string{"web"}},
		{filters: []string{"image==redis"}, want: []string{"db"}},
		{filters: []string{"runtime.name==io.containerd.runc.v2"}, want: []string{"tmp", "web"}},
		{filters: []string{"snapshotter==btrfs"}, want: []string{"db"}},
		{filters: []string{"snapshotkey==tmp"}, want: []string{"tmp"}},
		{filters: []string{"labels.tier"}, want: []string{"db", "web"}},
		{filters: []string{`labels."a.b"==c`}, want: []string{"db"}},
		{filters: []string{"id~=^(web|tmp)$,labels.tier==web", "image==redis"}, want: []string{"db", "web"}},
		{filters: []string{"runtime==x"}},
		{filters: []string{"id=="}, wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.filters, " or "), func(t *testing.T) {
			list, err := db.Containers().List(ctx, testNS, tt.filters...)
			checkErr(t, err, tt.wantErr, "")
			var ids []string
			for _, c := range list {
				ids = append(ids, c.GetID())
			}
			if diff := cmp.Diff(tt.want, ids); diff != "" {
				t.Errorf("List(%q) mismatch (-want +got):\n%s", tt.filters, diff)
			}
		})
	}
}

func TestContainerStoreGetDelete(t *testing.T) {
	ctx := context.Background()
	db, _ := containerTestDB(t, testContainer("a"))
	s := db.Containers()

	_, err := s.Get(ctx, testNS, "b")
	checkErr(t, err, errdefs.ErrNotFound, `container "b": not found`)
	_, err = s.Get(ctx, "nope", "a")
	checkErr(t, err, errdefs.ErrNotFound, "")
	_, err = s.Get(ctx, "a/b", "a")
	checkErr(t, err, errdefs.ErrInvalidArgument, "")

	checkErr(t, s.Delete(ctx, testNS, "b"), errdefs.ErrNotFound, `container "b": not found`)
	checkErr(t, s.Delete(ctx, testNS, "a"), nil, "")
	checkErr(t, s.Delete(ctx, testNS, "a"), errdefs.ErrNotFound, "")
	if n := len(listContainers(t, db)); n != 0 {
		t.Errorf("containers = %d, want 0", n)
	}
	// The emptied namespace, created by the first container, can go.
	checkErr(t, db.Namespaces().Delete(ctx, testNS), nil, "")
}

func TestContainerStoreReplay(t *testing.T) {
	db, _ := containerTestDB(t)
	s := db.Containers()

	first, err := s.Create(call("c1"), testNS, testContainer("a"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	again, err := s.Create(call("c1"), testNS, testContainer("a"))
	if err != nil {
		t.Fatalf("replayed Create: %v", err)
	}
	if diff := cmp.Diff(first, again, protocmp.Transform()); diff != "" {
		t.Errorf("replayed Create mismatch (-first +replay):\n%s", diff)
	}

	// A failed call replays as the same failure, even once it would pass.
	bad := edit("b", func(c *containersapi.Container) { c.Runtime = nil })
	_, err = s.Update(call("u1"), testNS, bad, nil)
	checkErr(t, err, errdefs.ErrNotFound, "")
	if _, err := s.Create(context.Background(), testNS, testContainer("b")); err != nil {
		t.Fatalf("Create: %v", err)
	}
	_, err = s.Update(call("u1"), testNS, bad, nil)
	checkErr(t, err, errdefs.ErrNotFound, "")

	for range 2 {
		checkErr(t, s.Delete(call("d1"), testNS, "a"), nil, "")
	}
	if n := len(listContainers(t, db)); n != 1 {
		t.Errorf("containers = %d, want 1", n)
	}
}
