//go:build linux

package integration

import (
	"slices"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"corral.dev/pluginkit/testkit"
)

// TestListFilters lists images, containers, blobs and leases with
// containerd's filter language through the Go client: equality, presence,
// inequality, regular expressions, quoted label keys, "," for and, several
// filters for or, and bad filters refused as InvalidArgument.
func TestListFilters(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	c := newClient(t, d)
	ctx, _ := withLease(t, c, nsContext(t, uniqueNS("filters")))
	is, ctrs, cs, lm := c.ImageService(), c.ContainerService(), c.ContentStore(), c.LeasesService()

	labels := map[string]map[string]string{
		"a": {"env": "prod", "tier": "web", "dotted.key/x": "yes"},
		"b": {"env": "dev"},
		"c": nil,
	}
	blobs := map[string]string{} // digest by name
	for _, name := range []string{"a", "b", "c"} {
		dgst := writeBlob(t, ctx, cs, 1<<10)
		blobs[name] = dgst.String()
		if labels[name] != nil {
			var paths []string
			for k := range labels[name] {
				paths = append(paths, "labels."+k)
			}
			if _, err := cs.Update(ctx, content.Info{Digest: dgst, Labels: labels[name]}, paths...); err != nil {
				t.Fatalf("label blob %s: %v", name, err)
			}
		}
		img := testImage(name+":latest", dgst)
		img.Labels = labels[name]
		if name == "c" {
			img.Name = "c:other"
		}
		if _, err := is.Create(ctx, img); err != nil {
			t.Fatalf("create image %s: %v", name, err)
		}
		ctr := testContainer("ctr-" + name)
		ctr.Labels = labels[name]
		ctr.Image = img.Name
		if _, err := ctrs.Create(ctx, ctr); err != nil {
			t.Fatalf("create container %s: %v", name, err)
		}
		if _, err := lm.Create(ctx, leases.WithID("lease-"+name), leases.WithLabels(labels[name])); err != nil {
			t.Fatalf("create lease %s: %v", name, err)
		}
	}

	// Each list answers with the names a, b, c of what it found.
	list := map[string]func(filters ...string) ([]string, error){
		"images": func(fs ...string) ([]string, error) {
			imgs, err := is.List(ctx, fs...)
			var names []string
			for _, img := range imgs {
				names = append(names, img.Name[:1])
			}
			return names, err
		},
		"containers": func(fs ...string) ([]string, error) {
			cl, err := ctrs.List(ctx, fs...)
			var names []string
			for _, ctr := range cl {
				names = append(names, ctr.ID[len("ctr-"):])
			}
			return names, err
		},
		"content": func(fs ...string) ([]string, error) {
			var names []string
			err := cs.Walk(ctx, func(info content.Info) error {
				for name, dgst := range blobs {
					if dgst == info.Digest.String() {
						names = append(names, name)
					}
				}
				return nil
			}, fs...)
			return names, err
		},
		"leases": func(fs ...string) ([]string, error) {
			ls, err := lm.List(ctx, fs...)
			var names []string
			for _, l := range ls {
				if len(l.ID) == len("lease-a") && l.ID[:6] == "lease-" {
					names = append(names, l.ID[6:])
				}
			}
			return names, err
		},
	}
	// Filters on fields of one kind only.
	own := map[string][]struct {
		filters []string
		want    []string
	}{
		"images": {
			{[]string{`name==a:latest`}, []string{"a"}},
			{[]string{`name~=^[ab]:`}, []string{"a", "b"}},
			{[]string{`name~=latest`, `name==c:other`}, []string{"a", "b", "c"}},
			{[]string{`target.digest==` + blobs["b"]}, []string{"b"}},
			{[]string{`target.mediatype~=manifest,labels.env==prod`}, []string{"a"}},
		},
		"containers": {
			{[]string{`id==ctr-b`}, []string{"b"}},
			{[]string{`image==c:other`}, []string{"c"}},
			{[]string{`runtime.name==io.containerd.runc.v2,labels.tier`}, []string{"a"}},
		},
		"content": {
			{[]string{`digest==` + blobs["c"]}, []string{"c"}},
		},
		"leases": {
			{[]string{`id==lease-a`, `id==lease-c`}, []string{"a", "c"}},
			{[]string{`id~=^lease-[bc]$`}, []string{"b", "c"}},
		},
	}
	common := []struct {
		filters []string
		want    []string
	}{
		{nil, []string{"a", "b", "c"}},
		{[]string{`labels.env==prod`}, []string{"a"}},
		{[]string{`labels."env"==dev`}, []string{"b"}},
		{[]string{`labels.env`}, []string{"a", "b"}},
		{[]string{`labels.env!=prod`}, []string{"b", "c"}},
		{[]string{`labels.env~=^(prod|dev)$`}, []string{"a", "b"}},
		{[]string{`labels."dotted.key/x"==yes`}, []string{"a"}},
		{[]string{`labels.env==prod,labels.tier==web`}, []string{"a"}},
		{[]string{`labels.env==prod,labels.tier==db`}, nil},
		{[]string{`labels.env==dev`, `labels.tier==web`}, []string{"a", "b"}},
		{[]string{`labels.nothing==x`}, nil},
	}
	bad := []string{`labels.env==`, `labels.env~=(`, `labels."unterminated==x`, `==x`, `labels.env==prod,`}

	for kind, fn := range list {
		t.Run(kind, func(t *testing.T) {
			cases := append(slices.Clone(common), own[kind]...)
			for _, tc := range cases {
				got, err := fn(tc.filters...)
				if err != nil {
					t.Errorf("List(%q): %v", tc.filters, err)
					continue
				}
				if diff := cmp.Diff(tc.want, got, cmpopts.SortSlices(func(a, b string) bool { return a < b }), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("List(%q) (-want +got):\n%s", tc.filters, diff)
				}
			}
			for _, f := range bad {
				if got, err := fn(f); !errdefs.IsInvalidArgument(err) {
					t.Errorf("List(%q) = %q, %v (%s); want InvalidArgument", f, got, err, errClass(err))
				}
			}
		})
	}
}
