package metadata

import (
	"context"
	"strings"
	"testing"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	plabels "corral.dev/pluginkit/labels"
)

const (
	testNS    = "default"
	indexType = "application/vnd.oci.image.index.v1+json"
	mfstType  = "application/vnd.oci.image.manifest.v1+json"
)

var (
	dgstA = "sha256:" + strings.Repeat("a", 64)
	dgstB = "sha256:" + strings.Repeat("b", 64)
)

// testImage returns an image named name pointing at an index dgstA, with
// the labels kv (key, value, ...).
func testImage(name string, kv ...string) *imagesapi.Image {
	return &imagesapi.Image{
		Name:   name,
		Labels: pairs(kv...),
		Target: &types.Descriptor{MediaType: indexType, Digest: dgstA, Size: 100},
	}
}

func pairs(kv ...string) map[string]string {
	if len(kv) == 0 {
		return nil
	}
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// stamped returns a copy of img created at c and updated at u.
func stamped(img *imagesapi.Image, c, u time.Time) *imagesapi.Image {
	img.CreatedAt, img.UpdatedAt = timestamppb.New(c), timestamppb.New(u)
	return img
}

// imageTestDB opens a database whose clock stands at t0, creates seed in
// namespace testNS, then moves the clock to t0+1m.
func imageTestDB(t *testing.T, seed ...*imagesapi.Image) (*DB, time.Time) {
	t.Helper()
	clock := newTestClock()
	db := openTestDB(t, WithClock(clock.Now))
	for _, img := range seed {
		if _, err := db.Images().Create(context.Background(), testNS, img); err != nil {
			t.Fatalf("seed image %q: %v", img.GetName(), err)
		}
	}
	t0 := clock.Now()
	clock.Advance(time.Minute)
	return db, t0
}

func listImages(t *testing.T, db *DB) []*imagesapi.Image {
	t.Helper()
	list, err := db.Images().List(context.Background(), testNS)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return list
}

func TestImageStoreCreate(t *testing.T) {
	ctx := context.Background()
	withTarget := func(tg *types.Descriptor) *imagesapi.Image {
		img := testImage("a")
		img.Target = tg
		return img
	}
	tests := []struct {
		name    string
		img     *imagesapi.Image
		ns      string
		wantErr error
		wantMsg string
	}{
		{name: "plain", img: testImage("docker.io/library/busybox:latest", "k", "v")},
		{name: "import name", img: testImage("import-2026-12-03:latest")},
		{name: "digest ref", img: testImage("localhost:5000/x@" + dgstB)},
		{name: "ipv6 registry", img: testImage("[::1]:5000/x:y")},
		{name: "name at limit", img: testImage(strings.Repeat("a", MaxImageNameLength))},
		{
			name:    "existing",
			img:     testImage("seeded"),
			wantErr: errdefs.ErrAlreadyExists,
			wantMsg: `image "seeded": already exists`,
		},
		{name: "no image", wantErr: errdefs.ErrInvalidArgument},
		{name: "empty name", img: testImage(""), wantErr: errdefs.ErrInvalidArgument},
		{name: "name with space", img: testImage("a b"), wantErr: errdefs.ErrInvalidArgument},
		{name: "name with newline", img: testImage("a\nb"), wantErr: errdefs.ErrInvalidArgument},
		{name: "leading dash", img: testImage("-a"), wantErr: errdefs.ErrInvalidArgument},
		{name: "leading slash", img: testImage("/a"), wantErr: errdefs.ErrInvalidArgument},
		{
			name:    "name too long",
			img:     testImage(strings.Repeat("a", MaxImageNameLength+1)),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{name: "no target", img: withTarget(nil), wantErr: errdefs.ErrInvalidArgument},
		{
			name:    "bad digest",
			img:     withTarget(&types.Descriptor{MediaType: indexType, Digest: "sha256:zz", Size: 1}),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name: "traversing digest",
			img: withTarget(&types.Descriptor{
				MediaType: indexType, Digest: "sha256:../../x", Size: 1,
			}),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "no media type",
			img:     withTarget(&types.Descriptor{Digest: dgstA, Size: 1}),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "zero size",
			img:     withTarget(&types.Descriptor{MediaType: indexType, Digest: dgstA}),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name: "label at limit",
			img:  testImage("a", "k", strings.Repeat("v", plabels.MaxSize-1)),
		},
		{
			name:    "label over limit",
			img:     testImage("a", "k", strings.Repeat("v", plabels.MaxSize)),
			wantErr: errdefs.ErrInvalidArgument,
		},
		{name: "empty label key", img: testImage("a", "", "v"), wantErr: errdefs.ErrInvalidArgument},
		{name: "bad namespace", ns: "a/b", img: testImage("a"), wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := imageTestDB(t, testImage("seeded"))
			ns := testNS
			if tt.ns != "" {
				ns = tt.ns
			}
			if tt.img != nil {
				// A client's timestamps are ignored.
				tt.img.CreatedAt = timestamppb.New(time.Time{})
			}

			got, err := db.Images().Create(ctx, ns, tt.img)
			checkErr(t, err, tt.wantErr, tt.wantMsg)
			if err != nil {
				if n := len(listImages(t, db)); n != 1 {
					t.Errorf("images after failed create = %d, want 1", n)
				}
				return
			}
			now := timestamppb.New(newTestClock().Now().Add(time.Minute))
			want := testImage(tt.img.GetName(), "")
			want.Labels, want.CreatedAt, want.UpdatedAt = tt.img.GetLabels(), now, now
			if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Create mismatch (-want +got):\n%s", diff)
			}
			stored, err := db.Images().Get(ctx, ns, tt.img.GetName())
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if diff := cmp.Diff(got, stored, protocmp.Transform()); diff != "" {
				t.Errorf("stored image mismatch (-created +stored):\n%s", diff)
			}
		})
	}
}

func TestImageStoreUpdate(t *testing.T) {
	ctx := context.Background()
	targetB := &types.Descriptor{MediaType: mfstType, Digest: dgstB, Size: 7}
	annotated := func(kv ...string) *imagesapi.Image {
		img := testImage("a", "k", "v", "old", "x")
		img.Target.Annotations = pairs(kv...)
		return img
	}
	tests := []struct {
		name    string
		req     *imagesapi.Image
		paths   []string
		want    *imagesapi.Image // created t0, updated t1 unless the update fails
		wantErr error
		wantMsg string
	}{
		{
			name:  "labels",
			req:   testImage("a", "n", "1"),
			paths: []string{"labels"},
			want:  relabel(annotated("an", "1"), "n", "1"),
		},
		{
			name:  "one label set",
			req:   testImage("a", "n", "1", "k", "ignored"),
			paths: []string{"labels.n"},
			want:  relabel(annotated("an", "1"), "k", "v", "old", "x", "n", "1"),
		},
		{
			name:  "one label deleted",
			req:   testImage("a"),
			paths: []string{"labels.old"},
			want:  relabel(annotated("an", "1"), "k", "v"),
		},
		{
			name:  "target",
			req:   &imagesapi.Image{Name: "a", Target: targetB},
			paths: []string{"target"},
			want:  relabel(&imagesapi.Image{Name: "a", Target: targetB}, "k", "v", "old", "x"),
		},
		{
			name:  "annotations",
			req:   annotated("z", "9"),
			paths: []string{"annotations"},
			want:  annotated("z", "9"),
		},
		{
			name:  "one annotation",
			req:   annotated("z", "9", "an", "ignored"),
			paths: []string{"annotations.z"},
			want:  annotated("an", "1", "z", "9"),
		},
		{
			name:  "one annotation deleted",
			req:   annotated(),
			paths: []string{"annotations.an"},
			want:  annotated(),
		},
		{
			name: "empty mask replaces",
			req:  relabel(&imagesapi.Image{Name: "a", Target: targetB}, "n", "1"),
			want: relabel(&imagesapi.Image{Name: "a", Target: targetB}, "n", "1"),
		},
		{
			name:    "missing image",
			req:     testImage("nope"),
			paths:   []string{"target"},
			wantErr: errdefs.ErrNotFound,
			wantMsg: `image "nope": not found`,
		},
		{
			name:    "unknown path",
			req:     testImage("a"),
			paths:   []string{"name"},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: `update image "a": field "name" cannot be updated: invalid argument`,
		},
		{
			name:    "target removed",
			req:     &imagesapi.Image{Name: "a"},
			paths:   []string{"target"},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "empty mask without target",
			req:     &imagesapi.Image{Name: "a"},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "empty label key",
			req:     testImage("a"),
			paths:   []string{"labels."},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name:    "label over limit",
			req:     testImage("a", "n", strings.Repeat("v", plabels.MaxSize)),
			paths:   []string{"labels.n"},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{name: "no name", req: testImage(""), wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, t0 := imageTestDB(t, annotated("an", "1"))
			got, err := db.Images().Update(ctx, testNS, tt.req, tt.paths)
			checkErr(t, err, tt.wantErr, tt.wantMsg)

			want := stamped(annotated("an", "1"), t0, t0)
			if err == nil {
				want = stamped(tt.want, t0, t0.Add(time.Minute))
				if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
					t.Errorf("Update mismatch (-want +got):\n%s", diff)
				}
			}
			stored := listImages(t, db)
			if diff := cmp.Diff([]*imagesapi.Image{want}, stored, protocmp.Transform()); diff != "" {
				t.Errorf("stored images mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// relabel sets the labels kv of img and returns it.
func relabel(img *imagesapi.Image, kv ...string) *imagesapi.Image {
	img.Labels = pairs(kv...)
	return img
}

func TestImageStoreList(t *testing.T) {
	ctx := context.Background()
	const (
		bb = "docker.io/library/busybox:latest"
		rd = "docker.io/library/redis:7"
		im = "import-2026-12-03:latest"
	)
	withManifest := testImage(rd, "tier", "db", "a.b", "c")
	withManifest.Target = &types.Descriptor{MediaType: mfstType, Digest: dgstB, Size: 5}
	db, _ := imageTestDB(t, testImage(bb, "tier", "web"), withManifest, testImage(im))
	tests := []struct {
		filters []string
		want    []string
		wantErr error
	}{
		{want: []string{bb, rd, im}},
		{filters: []string{"name==" + im}, want: []string{im}},
		{filters: []string{`name~=^docker\.io/`}, want: []string{bb, rd}},
		{filters: []string{"target.digest==" + dgstB}, want: []string{rd}},
		{filters: []string{`target.mediatype=="` + indexType + `"`}, want: []string{bb, im}},
		{filters: []string{"labels.tier==web"}, want: []string{bb}},
		{filters: []string{"labels.tier"}, want: []string{bb, rd}},
		{filters: []string{`labels."a.b"==c`}, want: []string{rd}},
		{filters: []string{"labels.tier!=web"}, want: []string{rd, im}},
		{filters: []string{"labels.tier==web", "labels.tier==db"}, want: []string{bb, rd}},
		{filters: []string{`name~=^docker\.io/,labels.tier==db`}, want: []string{rd}},
		{filters: []string{"name==nope"}},
		{filters: []string{"name=="}, wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.filters, " or "), func(t *testing.T) {
			list, err := db.Images().List(ctx, testNS, tt.filters...)
			checkErr(t, err, tt.wantErr, "")
			var names []string
			for _, img := range list {
				names = append(names, img.GetName())
			}
			if diff := cmp.Diff(tt.want, names); diff != "" {
				t.Errorf("List(%q) mismatch (-want +got):\n%s", tt.filters, diff)
			}

			// The encoded list decodes to the same images.
			raw, err := db.Images().ListEncoded(ctx, testNS, tt.filters...)
			checkErr(t, err, tt.wantErr, "")
			var resp imagesapi.ListImagesResponse
			if err := proto.Unmarshal(raw, &resp); err != nil {
				t.Fatalf("decode ListEncoded(%q): %v", tt.filters, err)
			}
			if diff := cmp.Diff(list, resp.GetImages(), protocmp.Transform()); diff != "" {
				t.Errorf("ListEncoded(%q) mismatch (-List +ListEncoded):\n%s", tt.filters, diff)
			}
		})
	}

	if list, err := db.Images().List(ctx, "other"); err != nil || len(list) != 0 {
		t.Errorf("List in an unknown namespace = %v, %v; want none", list, err)
	}
}

func TestImageStoreGetDelete(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		image   string
		target  digest.Digest
		wantErr error
		wantMsg string
		left    int
	}{
		{name: "delete", image: "a"},
		{name: "matching target", image: "a", target: digest.Digest(dgstA)},
		{
			name:    "other target",
			image:   "a",
			target:  digest.Digest(dgstB),
			wantErr: errdefs.ErrNotFound,
			wantMsg: `image "a" has target ` + dgstA + `, not ` + dgstB + `: not found`,
			left:    1,
		},
		{name: "missing", image: "b", wantErr: errdefs.ErrNotFound, wantMsg: `image "b": not found`, left: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, _ := imageTestDB(t, testImage("a"))
			err := db.Images().Delete(ctx, testNS, tt.image, tt.target)
			checkErr(t, err, tt.wantErr, tt.wantMsg)
			if n := len(listImages(t, db)); n != tt.left {
				t.Errorf("images left = %d, want %d", n, tt.left)
			}
		})
	}

	db, _ := imageTestDB(t)
	_, err := db.Images().Get(ctx, testNS, "a")
	checkErr(t, err, errdefs.ErrNotFound, `image "a": not found`)
	err = db.Images().Delete(ctx, "nope", "a", "")
	checkErr(t, err, errdefs.ErrNotFound, "")
}

// TestImageStoreNamespace: the first image creates its namespace, which
// then cannot be deleted while it holds the image.
func TestImageStoreNamespace(t *testing.T) {
	ctx := context.Background()
	db, _ := imageTestDB(t)
	if _, err := db.Images().Create(ctx, "fresh", testImage("a")); err != nil {
		t.Fatalf("Create: %v", err)
	}
	list, err := db.Namespaces().List(ctx)
	if err != nil || len(list) != 1 || list[0].GetName() != "fresh" {
		t.Fatalf("namespaces = %v, %v; want fresh", list, err)
	}
	err = db.Namespaces().Delete(ctx, "fresh")
	checkErr(t, err, errdefs.ErrFailedPrecondition, "")

	if err := db.Images().Delete(ctx, "fresh", "a", ""); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := db.Namespaces().Delete(ctx, "fresh"); err != nil {
		t.Errorf("delete emptied namespace: %v", err)
	}
}

func TestImageStoreSourceDateEpoch(t *testing.T) {
	db, _ := imageTestDB(t)
	epoch := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	ctx := WithSourceDateEpoch(context.Background(), epoch)
	got, err := db.Images().Create(ctx, testNS, testImage("a"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if !got.GetCreatedAt().AsTime().Equal(epoch) || !got.GetUpdatedAt().AsTime().Equal(epoch) {
		t.Errorf("times = %v, %v; want %v", got.GetCreatedAt(), got.GetUpdatedAt(), epoch)
	}
}

// TestImageStoreReplay: a call replayed with its call id answers as the
// first attempt did, once, whatever happened in between.
func TestImageStoreReplay(t *testing.T) {
	db, _ := imageTestDB(t)
	s := db.Images()

	first, err := s.Create(call("c1"), testNS, testImage("a", "v", "1"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	again, err := s.Create(call("c1"), testNS, testImage("a", "v", "1"))
	if err != nil {
		t.Fatalf("replayed Create: %v", err)
	}
	if diff := cmp.Diff(first, again, protocmp.Transform()); diff != "" {
		t.Errorf("replayed Create mismatch (-first +replay):\n%s", diff)
	}
	_, err = s.Create(call("c2"), testNS, testImage("a"))
	checkErr(t, err, errdefs.ErrAlreadyExists, "")
	_, err = s.Create(call("c2"), testNS, testImage("a"))
	checkErr(t, err, errdefs.ErrAlreadyExists, "")

	// An update replayed after a later one keeps the later state.
	u1, err := s.Update(call("u1"), testNS, testImage("a", "v", "2"), []string{"labels"})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	if _, err := s.Update(call("u2"), testNS, testImage("a", "v", "3"), []string{"labels"}); err != nil {
		t.Fatalf("Update: %v", err)
	}
	replayed, err := s.Update(call("u1"), testNS, testImage("a", "v", "2"), []string{"labels"})
	if err != nil {
		t.Fatalf("replayed Update: %v", err)
	}
	if diff := cmp.Diff(u1, replayed, protocmp.Transform()); diff != "" {
		t.Errorf("replayed Update mismatch (-first +replay):\n%s", diff)
	}
	if got := listImages(t, db)[0].GetLabels()["v"]; got != "3" {
		t.Errorf("label after replay = %q, want 3", got)
	}

	// A replayed delete succeeds again instead of finding nothing.
	for range 2 {
		if err := s.Delete(call("d1"), testNS, "a", ""); err != nil {
			t.Fatalf("Delete: %v", err)
		}
	}
	if n := len(listImages(t, db)); n != 0 {
		t.Errorf("images = %d, want 0", n)
	}
}

// TestRecordLayout pins the layout the collector and later migrations
// read: namespaces/<ns>/{images/<name>,containers/<id>}/record holding
// the marshalled API message.
// TestListEncodedRecords lists records as stored: the key gives the name
// as it does when a record is read, and a record that is not well framed
// is data loss, not bytes passed on.
func TestListEncodedRecords(t *testing.T) {
	ctx := context.Background()
	const name = "docker.io/library/busybox:latest"
	db, _ := imageTestDB(t, testImage(name))
	if _, err := db.Containers().Create(ctx, testNS, testContainer("web")); err != nil {
		t.Fatalf("Create container: %v", err)
	}
	setRecord := func(kind, key string, raw []byte) {
		t.Helper()
		err := db.bdb.Update(func(tx *bolt.Tx) error {
			return objectBucket(tx, testNS, []byte(kind), key).Put(keyObjectRecord, raw)
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	// A record without its name, or with another, lists under its key.
	img := testImage("other")
	raw, _ := proto.Marshal(img)
	setRecord("images", name, raw)
	raw, err := db.Images().ListEncoded(ctx, testNS)
	var images imagesapi.ListImagesResponse
	if err != nil || proto.Unmarshal(raw, &images) != nil {
		t.Fatalf("ListEncoded = %v; decoding %x", err, raw)
	}
	if got := images.GetImages(); len(got) != 1 || got[0].GetName() != name {
		t.Errorf("listed %v, want one image named %q", got, name)
	}
	raw, err = db.Containers().ListEncoded(ctx, testNS)
	var containers containersapi.ListContainersResponse
	if err != nil || proto.Unmarshal(raw, &containers) != nil {
		t.Fatalf("ListEncoded of containers = %v; decoding %x", err, raw)
	}
	if got := containers.GetContainers(); len(got) != 1 || got[0].GetID() != "web" || got[0].GetSnapshotKey() != "web" {
		t.Errorf("listed containers %v, want web", got)
	}

	// A length past the record's end would swallow what follows it.
	setRecord("images", name, []byte{0x12, 0x7f, 0x01})
	for _, fs := range [][]string{nil, {"name==" + name}} {
		_, err := db.Images().ListEncoded(ctx, testNS, fs...)
		checkErr(t, err, errdefs.ErrDataLoss, "")
	}
}

func TestRecordLayout(t *testing.T) {
	ctx := context.Background()
	db, _ := imageTestDB(t, testImage("docker.io/library/busybox:latest"))
	if _, err := db.Containers().Create(ctx, testNS, testContainer("web")); err != nil {
		t.Fatalf("Create container: %v", err)
	}

	err := db.view(func(tx *bolt.Tx) error {
		nb := tx.Bucket([]byte("namespaces")).Bucket([]byte(testNS))
		ib := nb.Bucket([]byte("images")).Bucket([]byte("docker.io/library/busybox:latest"))
		raw := ib.Get([]byte("record"))
		img := &imagesapi.Image{}
		if err := proto.Unmarshal(raw, img); err != nil || img.GetTarget().GetDigest() != dgstA {
			t.Errorf("image record = %v, %v", img, err)
		}
		raw = nb.Bucket([]byte("containers")).Bucket([]byte("web")).Get([]byte("record"))
		c := &containersapi.Container{}
		if err := proto.Unmarshal(raw, c); err != nil || c.GetSnapshotKey() != "web" {
			t.Errorf("container record = %v, %v", c, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// FuzzValidateImageName: an accepted name is short enough, has no space,
// control character or path traversal at its start, and every rejection
// is an invalid argument.
func FuzzValidateImageName(f *testing.F) {
	for _, s := range []string{"docker.io/library/busybox:latest", "[::1]:5000/x", "a b", "", "../x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateImageName(name)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("ValidateImageName(%q) = %v, not an invalid argument", name, err)
			}
			return
		}
		if len(name) > MaxImageNameLength || strings.ContainsFunc(name, func(r rune) bool {
			return r <= ' ' || r >= 0x7f
		}) || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "/") {
			t.Fatalf("ValidateImageName(%q) accepted it", name)
		}
	})
}
