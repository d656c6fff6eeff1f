//go:build linux

package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"corral.dev/pluginkit/testkit"
)

// errClass names the errdefs class of an error, for messages.
func errClass(err error) string {
	for _, c := range []struct {
		name string
		is   func(error) bool
	}{
		{"InvalidArgument", errdefs.IsInvalidArgument},
		{"NotFound", errdefs.IsNotFound},
		{"AlreadyExists", errdefs.IsAlreadyExists},
		{"FailedPrecondition", errdefs.IsFailedPrecondition},
		{"OutOfRange", errdefs.IsOutOfRange},
		{"Unavailable", errdefs.IsUnavailable},
		{"NotImplemented", errdefs.IsNotImplemented},
	} {
		if c.is(err) {
			return c.name
		}
	}
	if err == nil {
		return "no error"
	}
	return "unknown"
}

// testSpec is a container spec as the Go client sends it.
func testSpec() *anypb.Any {
	return &anypb.Any{
		TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec",
		Value:   []byte(`{"ociVersion":"1.2.0","process":{"args":["sh"],"cwd":"/"}}`),
	}
}

// testContainer is a complete container record named id.
func testContainer(id string) containers.Container {
	return containers.Container{
		ID:      id,
		Labels:  map[string]string{"k": "v"},
		Image:   "busybox:latest",
		Runtime: containers.RuntimeInfo{Name: "io.containerd.runc.v2"},
		Spec:    testSpec(),
	}
}

// testImage is a complete image record named name.
func testImage(name string, target digest.Digest) images.Image {
	return images.Image{
		Name:   name,
		Labels: map[string]string{"k": "v"},
		Target: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: target, Size: 349},
	}
}

// rawContent is the Content API client on c's connection, with errors
// turned into errdefs classes.
func rawContent(c *client.Client) contentapi.ContentClient {
	return contentapi.NewContentClient(c.Conn().(grpc.ClientConnInterface))
}

// rawRead reads with the Content API's Read and returns the bytes and the
// error of the stream, as an errdefs error.
func rawRead(ctx context.Context, c *client.Client, req *contentapi.ReadContentRequest) ([]byte, error) {
	stream, err := rawContent(c).Read(ctx, req)
	if err != nil {
		return nil, errgrpc.ToNative(err)
	}
	var data []byte
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return data, nil
		}
		if err != nil {
			return data, errgrpc.ToNative(err)
		}
		data = append(data, resp.Data...)
	}
}

// rawWrite sends msgs on one Content API Write stream, reading a reply to
// each, and returns the first error, as an errdefs error.
func rawWrite(ctx context.Context, c *client.Client, msgs ...*contentapi.WriteContentRequest) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := rawContent(c).Write(ctx)
	if err != nil {
		return errgrpc.ToNative(err)
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			_, err = stream.Recv()
			return errgrpc.ToNative(err)
		}
		if _, err := stream.Recv(); err != nil {
			return errgrpc.ToNative(err)
		}
	}
	stream.CloseSend()
	return nil
}

// TestBadInput sends requests that must be refused with a clear error of
// the class containerd's clients expect, and checks that nothing of them
// was committed: digest and size mismatches, a write without a ref,
// digests built to traverse paths, labels over the size limit, invalid
// image names and container ids, updates of unknown or immutable fields,
// and reads past the end.
func TestBadInput(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	c := newClient(t, d)
	ctx, lease := withLease(t, c, nsContext(t, uniqueNS("bad")))
	cs, is, ctrs := c.ContentStore(), c.ImageService(), c.ContainerService()

	// A blob, an image and a container that the bad calls must leave alone.
	data, dgst := randomBlob(t, 100<<10)
	desc := ocispec.Descriptor{Digest: dgst, Size: int64(len(data)), MediaType: ocispec.MediaTypeImageManifest}
	if err := content.WriteBlob(ctx, cs, "good", strings.NewReader(string(data)), desc,
		content.WithLabels(map[string]string{"k": "v"})); err != nil {
		t.Fatalf("write the good blob: %v", err)
	}
	goodImage := testImage("good:latest", dgst)
	goodImage.Target.Size = desc.Size
	if _, err := is.Create(ctx, goodImage); err != nil {
		t.Fatalf("create the good image: %v", err)
	}
	if _, err := ctrs.Create(ctx, testContainer("good")); err != nil {
		t.Fatalf("create the good container: %v", err)
	}

	other, otherDigest := randomBlob(t, 10<<10)
	bigValue := strings.Repeat("v", 4096) // with key "k": 4097 bytes
	traversals := []digest.Digest{
		"sha256:../../etc",
		"sha256:../../../../../../etc/passwd",
		"sha256/../../etc/passwd",
		"../../etc/passwd",
		"sha256:" + digest.Digest(strings.Repeat("../", 21)+"etc"),
	}

	type check struct {
		name string
		call func() error
		is   func(error) bool
		// absent lists what must not exist afterwards.
		absentBlobs      []digest.Digest
		absentImages     []string
		absentContainers []string
		absentLeases     []string
	}
	writeCommit := func(ref string, b []byte, size int64, expected digest.Digest, opts ...content.Opt) func() error {
		return func() error {
			w, err := cs.Writer(ctx, content.WithRef(ref))
			if err != nil {
				return err
			}
			defer w.Close()
			if _, err := w.Write(b); err != nil {
				return err
			}
			return w.Commit(ctx, size, expected, opts...)
		}
	}
	checks := []check{
		{
			name:        "commit digest mismatch",
			call:        writeCommit("mismatch-digest", other, int64(len(other)), digest.FromString("something else")),
			is:          errdefs.IsFailedPrecondition,
			absentBlobs: []digest.Digest{otherDigest, digest.FromString("something else")},
		},
		{
			name:        "commit size mismatch",
			call:        writeCommit("mismatch-size", other, int64(len(other))+1, otherDigest),
			is:          errdefs.IsFailedPrecondition,
			absentBlobs: []digest.Digest{otherDigest},
		},
		{
			name:        "commit short size",
			call:        writeCommit("mismatch-short", other, int64(len(other))-1, otherDigest),
			is:          errdefs.IsFailedPrecondition,
			absentBlobs: []digest.Digest{otherDigest},
		},
		{
			name: "write without ref",
			call: func() error {
				return rawWrite(ctx, c, &contentapi.WriteContentRequest{Action: contentapi.WriteAction_STAT, Total: 10})
			},
			is: errdefs.IsInvalidArgument,
		},
		{
			name: "write data without ref",
			call: func() error {
				return rawWrite(ctx, c, &contentapi.WriteContentRequest{Action: contentapi.WriteAction_WRITE, Data: other})
			},
			is:          errdefs.IsInvalidArgument,
			absentBlobs: []digest.Digest{otherDigest},
		},
		{
			name:        "commit with labels over the limit",
			call:        writeCommit("big-labels", other, int64(len(other)), otherDigest, content.WithLabels(map[string]string{"k": bigValue})),
			is:          errdefs.IsInvalidArgument,
			absentBlobs: []digest.Digest{otherDigest},
		},
		{
			name: "content update with labels over the limit",
			call: func() error {
				_, err := cs.Update(ctx, content.Info{Digest: dgst, Labels: map[string]string{"k": bigValue}}, "labels.k")
				return err
			},
			is: errdefs.IsInvalidArgument,
		},
		{
			name: "content update of an unknown field",
			call: func() error {
				_, err := cs.Update(ctx, content.Info{Digest: dgst, Size: 1}, "size")
				return err
			},
			is: errdefs.IsInvalidArgument,
		},
		{
			name: "image with labels over the limit",
			call: func() error {
				img := testImage("big-labels:latest", dgst)
				img.Labels = map[string]string{"k": bigValue}
				_, err := is.Create(ctx, img)
				return err
			},
			is:           errdefs.IsInvalidArgument,
			absentImages: []string{"big-labels:latest"},
		},
		{
			name: "image with a key over the limit",
			call: func() error {
				img := testImage("big-key:latest", dgst)
				img.Labels = map[string]string{strings.Repeat("k", 4097): ""}
				_, err := is.Create(ctx, img)
				return err
			},
			is:           errdefs.IsInvalidArgument,
			absentImages: []string{"big-key:latest"},
		},
		{
			name: "image update with labels over the limit",
			call: func() error {
				img := goodImage
				img.Labels = map[string]string{"k": bigValue}
				_, err := is.Update(ctx, img, "labels.k")
				return err
			},
			is: errdefs.IsInvalidArgument,
		},
		{
			name: "container with labels over the limit",
			call: func() error {
				ctr := testContainer("big-labels")
				ctr.Labels = map[string]string{"k": bigValue}
				_, err := ctrs.Create(ctx, ctr)
				return err
			},
			is:               errdefs.IsInvalidArgument,
			absentContainers: []string{"big-labels"},
		},
		{
			name: "lease with labels over the limit",
			call: func() error {
				_, err := c.LeasesService().Create(ctx, leases.WithID("big-labels"), leases.WithLabels(map[string]string{"k": bigValue}))
				return err
			},
			is:           errdefs.IsInvalidArgument,
			absentLeases: []string{"big-labels"},
		},
		{
			name: "image without a name",
			call: func() error {
				_, err := is.Create(ctx, testImage("", dgst))
				return err
			},
			is:           errdefs.IsInvalidArgument,
			absentImages: []string{""},
		},
		{
			name: "image with a traversing target digest",
			call: func() error {
				_, err := is.Create(ctx, testImage("traversal:latest", "sha256:../../etc"))
				return err
			},
			is:           errdefs.IsInvalidArgument,
			absentImages: []string{"traversal:latest"},
		},
		{
			name: "image update of an unknown field",
			call: func() error {
				_, err := is.Update(ctx, goodImage, "bogus")
				return err
			},
			is: errdefs.IsInvalidArgument,
		},
		{
			name: "image update of a missing image",
			call: func() error {
				_, err := is.Update(ctx, testImage("missing:latest", dgst), "target")
				return err
			},
			is:           errdefs.IsNotFound,
			absentImages: []string{"missing:latest"},
		},
		{
			name: "container update of an unknown field",
			call: func() error {
				_, err := ctrs.Update(ctx, testContainer("good"), "bogus")
				return err
			},
			is: errdefs.IsInvalidArgument,
		},
		{
			name: "container update of the runtime",
			call: func() error {
				ctr := testContainer("good")
				ctr.Runtime.Name = "io.containerd.other.v1"
				_, err := ctrs.Update(ctx, ctr, "runtime")
				return err
			},
			is: errdefs.IsInvalidArgument,
		},
		{
			name: "container update of the snapshotter",
			call: func() error {
				ctr := testContainer("good")
				ctr.Snapshotter = "native"
				_, err := ctrs.Update(ctx, ctr, "snapshotter")
				return err
			},
			is: errdefs.IsInvalidArgument,
		},
		{
			name: "read past the end",
			call: func() error {
				_, err := rawRead(ctx, c, &contentapi.ReadContentRequest{Digest: dgst.String(), Offset: desc.Size + 1})
				return err
			},
			is: errdefs.IsOutOfRange,
		},
		{
			name: "read far past the end",
			call: func() error {
				_, err := rawRead(ctx, c, &contentapi.ReadContentRequest{Digest: dgst.String(), Offset: 1 << 40, Size: 10})
				return err
			},
			is: errdefs.IsOutOfRange,
		},
		{
			name: "write at a gap",
			call: func() error {
				return rawWrite(ctx, c,
					&contentapi.WriteContentRequest{Action: contentapi.WriteAction_STAT, Ref: "gap", Total: 100},
					&contentapi.WriteContentRequest{Action: contentapi.WriteAction_WRITE, Ref: "gap", Offset: 10, Data: []byte("x")})
			},
			is: errdefs.IsOutOfRange,
		},
	}
	for _, id := range []string{"", "bad id", "-lead", "trail-", "a/b", "../x", "a..b", strings.Repeat("a", 77)} {
		checks = append(checks, check{
			name: "container id " + idName(id),
			call: func() error {
				_, err := ctrs.Create(ctx, testContainer(id))
				return err
			},
			is:               errdefs.IsInvalidArgument,
			absentContainers: []string{id},
		})
	}
	for i, td := range traversals {
		checks = append(checks,
			check{
				name: "info " + string(td),
				call: func() error { _, err := cs.Info(ctx, td); return err },
				is:   errdefs.IsInvalidArgument,
			},
			check{
				name: "read " + string(td),
				call: func() error {
					_, err := rawRead(ctx, c, &contentapi.ReadContentRequest{Digest: string(td)})
					return err
				},
				is: errdefs.IsInvalidArgument,
			},
			check{
				name: "delete " + string(td),
				call: func() error { return cs.Delete(ctx, td) },
				is:   errdefs.IsInvalidArgument,
			},
			check{
				name: "label " + string(td),
				call: func() error {
					_, err := cs.Update(ctx, content.Info{Digest: td, Labels: map[string]string{"k": "v"}}, "labels.k")
					return err
				},
				is: errdefs.IsInvalidArgument,
			},
			check{
				name: "writer expecting " + string(td),
				call: func() error {
					w, err := cs.Writer(ctx, content.WithRef(fmt.Sprintf("expect-%d", i)),
						content.WithDescriptor(ocispec.Descriptor{Digest: td, Size: int64(len(other))}))
					if err == nil {
						w.Close()
					}
					return err
				},
				is: errdefs.IsInvalidArgument,
			},
			check{
				name: "lease resource " + string(td),
				call: func() error {
					return c.LeasesService().AddResource(ctx, lease, leases.Resource{ID: string(td), Type: "content"})
				},
				is: errdefs.IsInvalidArgument,
			},
		)
	}
	for i, td := range traversals[:2] {
		checks = append(checks, check{
			// containerd answers FailedPrecondition (the digest differs);
			// refusing the digest itself is as good.
			name: "commit expecting " + string(td),
			call: writeCommit(fmt.Sprintf("commit-%d", i), other, int64(len(other)), td),
			is: func(err error) bool {
				return errdefs.IsInvalidArgument(err) || errdefs.IsFailedPrecondition(err)
			},
			absentBlobs: []digest.Digest{otherDigest},
		})
	}

	for _, tc := range checks {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !tc.is(err) {
				t.Fatalf("error %v (%s), want another class", err, errClass(err))
			}
			t.Logf("%s: %v", errClass(err), err)
			for _, b := range tc.absentBlobs {
				if _, err := cs.Info(ctx, b); !errdefs.IsNotFound(err) {
					t.Errorf("after the refused call: Info(%s) = %v, want NotFound", b, err)
				}
			}
			for _, name := range tc.absentImages {
				if _, err := is.Get(ctx, name); !errdefs.IsNotFound(err) && !(name == "" && errdefs.IsInvalidArgument(err)) {
					t.Errorf("after the refused call: Images.Get(%q) = %v, want NotFound", name, err)
				}
			}
			for _, id := range tc.absentContainers {
				if _, err := ctrs.Get(ctx, id); !errdefs.IsNotFound(err) && !errdefs.IsInvalidArgument(err) {
					t.Errorf("after the refused call: Containers.Get(%q) = %v, want NotFound", id, err)
				}
			}
			if len(tc.absentLeases) > 0 {
				ls, err := c.LeasesService().List(ctx)
				if err != nil {
					t.Fatalf("Leases.List: %v", err)
				}
				for _, l := range ls {
					if slices.Contains(tc.absentLeases, l.ID) {
						t.Errorf("after the refused call: lease %q exists", l.ID)
					}
				}
			}
		})
	}

	// A label of exactly the limit is taken.
	edge := map[string]string{"edge": strings.Repeat("v", 4096-len("edge"))}
	if _, err := cs.Update(ctx, content.Info{Digest: dgst, Labels: edge}, "labels.edge"); err != nil {
		t.Errorf("content update with a label of 4096 bytes: %v, want it taken", err)
	}
	if _, err := cs.Update(ctx, content.Info{Digest: dgst}, "labels.edge"); err != nil {
		t.Errorf("content update removing the label: %v", err)
	}

	// Everything listed is what the test made on purpose, unchanged.
	var blobs []digest.Digest
	if err := cs.Walk(ctx, func(info content.Info) error {
		blobs = append(blobs, info.Digest)
		return nil
	}); err != nil {
		t.Fatalf("Content.List: %v", err)
	}
	if !slices.Equal(blobs, []digest.Digest{dgst}) {
		t.Errorf("content listed after the refused calls: %v, want only %s", blobs, dgst)
	}
	info, err := cs.Info(ctx, dgst)
	if err != nil || len(info.Labels) != 1 || info.Labels["k"] != "v" || info.Size != desc.Size {
		t.Errorf("good blob after the refused calls: %+v, %v; want size %d and labels k=v", info, err, desc.Size)
	}
	if got := readBlob(t, ctx, cs, dgst); string(got) != string(data) {
		t.Errorf("good blob's bytes changed")
	}
	imgs, err := is.List(ctx)
	if err != nil {
		t.Fatalf("Images.List: %v", err)
	}
	if len(imgs) != 1 || imgs[0].Name != goodImage.Name || imgs[0].Target.Digest != dgst ||
		len(imgs[0].Labels) != 1 || imgs[0].Labels["k"] != "v" {
		t.Errorf("images after the refused calls: %+v, want only the unchanged %s", imgs, goodImage.Name)
	}
	cl, err := ctrs.List(ctx)
	if err != nil {
		t.Fatalf("Containers.List: %v", err)
	}
	if len(cl) != 1 || cl[0].ID != "good" || cl[0].Runtime.Name != "io.containerd.runc.v2" || cl[0].Snapshotter != "" {
		t.Errorf("containers after the refused calls: %+v, want only the unchanged good", cl)
	}

	// Nothing was made outside the daemon's directories.
	filepath.WalkDir(d.Dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && (e.Name() == "etc" || e.Name() == "passwd") {
			t.Errorf("a traversing digest made %s", p)
		}
		return nil
	})
}

// idName shortens s for a subtest name.
func idName(s string) string {
	if s == "" {
		return "empty"
	}
	if len(s) > 20 {
		return s[:10] + "..." + s[len(s)-5:]
	}
	return s
}
