//go:build linux

package integration

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"

	"corral.dev/pluginkit/testkit"
)

// imageRow is one row of `ctr images ls`.
type imageRow struct {
	Type   string
	Digest digest.Digest
	Labels string
}

// ctrImages returns the rows of `ctr images ls` by name.
func ctrImages(t *testing.T, c ctrTool, d *daemon, ns string) map[string]imageRow {
	t.Helper()
	out := c.ns(t, d, ns, "images", "ls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "REF") {
		t.Fatalf("%s images ls: no header in %q", c.name, out)
	}
	rows := make(map[string]imageRow)
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("%s images ls: short row %q", c.name, line)
		}
		rows[f[0]] = imageRow{Type: f[1], Digest: digest.Digest(f[2]), Labels: f[len(f)-1]}
	}
	return rows
}

// local is the flag that makes ctr 2.x run an images command in the
// client, as 1.6 does, instead of through the Transfer service.
func (c ctrTool) local() []string {
	if c.version == "1.6.20" {
		return nil
	}
	return []string{"--local"}
}

// images runs `ctr images CMD [--local] ARGS...` in ns.
func (c ctrTool) images(t *testing.T, d *daemon, ns, cmd string, args ...string) string {
	t.Helper()
	return c.ns(t, d, ns, append(append([]string{"images", cmd}, c.local()...), args...)...)
}

// ociIndex is the part of an OCI index the tests read.
type ociIndex struct {
	Manifests []struct {
		MediaType   string            `json:"mediaType"`
		Digest      digest.Digest     `json:"digest"`
		Annotations map[string]string `json:"annotations"`
	} `json:"manifests"`
}

// tarIndex reads index.json and the names of the blobs from an OCI layout
// tar.
func tarIndex(t *testing.T, path string) (ociIndex, []digest.Digest) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		index ociIndex
		blobs []digest.Digest
		found bool
	)
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		switch {
		case name == "index.json":
			if err := json.NewDecoder(tr).Decode(&index); err != nil {
				t.Fatalf("%s: index.json: %v", path, err)
			}
			found = true
		case strings.HasPrefix(name, "blobs/sha256/") && h.Typeflag == tar.TypeReg:
			blobs = append(blobs, digest.Digest("sha256:"+strings.TrimPrefix(name, "blobs/sha256/")))
		}
	}
	if !found {
		t.Fatalf("%s has no index.json", path)
	}
	slices.Sort(blobs)
	return index, blobs
}

// digests returns the sorted keys of a content listing.
func digests(rows map[digest.Digest]string) []digest.Digest {
	var ds []digest.Digest
	for d := range rows {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	return ds
}

// imageDigests maps image names to their target digests.
func imageDigests(rows map[string]imageRow) map[string]digest.Digest {
	m := make(map[string]digest.Digest)
	for name, r := range rows {
		m[name] = r.Digest
	}
	return m
}

// TestImagesCtr imports busybox with both ctr versions (2.4 with --local)
// from an OCI layout tar and from a docker-archive tar, without unpacking,
// then lists, checks, tags, labels, exports, re-imports and removes the
// images.
func TestImagesCtr(t *testing.T) {
	testkit.RequiresRoot(t)
	ociTar := testkit.BusyboxImage(t)
	dockerTar := testkit.DockerArchive(t, ociTar)
	index, ociBlobs := tarIndex(t, ociTar)
	if len(index.Manifests) != 1 {
		t.Fatalf("busybox layout has %d manifests, want 1", len(index.Manifests))
	}
	manifest := index.Manifests[0].Digest
	d := startDaemon(t, settings{})

	const (
		ociName    = "busybox:latest"
		dockerName = "docker.io/library/busybox:latest"
		tagName    = "busybox:tagged"
	)
	for _, c := range ctrTools(t) {
		t.Run(c.name, func(t *testing.T) {
			ns := uniqueNS(strings.ReplaceAll(c.name, ".", ""))

			c.images(t, d, ns, "import", "--no-unpack", "--base-name", "busybox", ociTar)
			images := ctrImages(t, c, d, ns)
			want := imageRow{Type: "application/vnd.oci.image.manifest.v1+json", Digest: manifest, Labels: "-"}
			if diff := cmp.Diff(map[string]imageRow{ociName: want}, images); diff != "" {
				t.Errorf("images ls after the OCI import (-want +got):\n%s", diff)
			}
			// The import stores every tar entry; the collector removes
			// those nothing refers to (index.json) once the import's lease
			// is gone.
			waitContent(t, c, d, ns, ociBlobs, "after the OCI import")

			c.images(t, d, ns, "import", "--no-unpack", dockerTar)
			images = ctrImages(t, c, d, ns)
			if got := images[dockerName].Type; got != "application/vnd.docker.distribution.manifest.v2+json" {
				t.Errorf("images ls after the docker-archive import: %s type %q, want a docker manifest; images %v",
					dockerName, got, images)
			}
			// Both imports hold the same config and layer.
			blobs := ctrContent(t, c, d, ns)
			for _, b := range ociBlobs {
				if _, ok := blobs[b]; !ok {
					t.Errorf("content ls after both imports lacks %s", b)
				}
			}

			t.Run("check", func(t *testing.T) {
				if c.version != "1.6.20" {
					t.Skip("TODO(integration): ctr 2.4.2 images check has no --local and needs the Snapshots service " +
						"(\"unable to check unpack ... unknown service containerd.services.snapshots.v1.Snapshots\"), " +
						"which comes with the snapshot issue")
				}
				// ctr 1.6 checks the content, prints its rows, and then
				// fails on the unpack check, which needs the Snapshots
				// service of the snapshot issue.
				r := c.try(t, d, ns, "images", "check")
				if r.Err != nil && !strings.Contains(r.Stderr, "unknown service containerd.services.snapshots.v1.Snapshots") {
					t.Errorf("images check: %v\n%s", r.Err, r.Stderr)
				}
				for _, name := range []string{ociName, dockerName} {
					if !hasRow(r.Stdout, name, "complete (2/2)") {
						t.Errorf("images check: no complete (2/2) row for %s:\n%s", name, r.Stdout)
					}
				}
			})

			c.images(t, d, ns, "tag", ociName, tagName)
			if r := c.try(t, d, ns, append(append([]string{"images", "tag"}, c.local()...), ociName, tagName)...); r.Err == nil ||
				!strings.Contains(r.Stderr, "already exists") {
				t.Errorf("images tag onto an existing name: err %v, stderr %q; want already exists", r.Err, r.Stderr)
			}
			c.images(t, d, ns, "tag", "--force", dockerName, tagName)
			if got := ctrImages(t, c, d, ns)[tagName].Digest; got != ctrImages(t, c, d, ns)[dockerName].Digest {
				t.Errorf("images tag --force onto %s: digest %s, want %s's", tagName, got, dockerName)
			}
			c.images(t, d, ns, "tag", "--force", ociName, tagName)
			c.ns(t, d, ns, "images", "label", tagName, "k=v", "gone=soon")
			c.ns(t, d, ns, "images", "label", tagName, "gone=")
			images = ctrImages(t, c, d, ns)
			if got, want := images[tagName], (imageRow{Type: want.Type, Digest: manifest, Labels: "k=v"}); got != want {
				t.Errorf("images ls: %s = %+v, want %+v", tagName, got, want)
			}

			out := filepath.Join(t.TempDir(), "export.tar")
			c.images(t, d, ns, "export", out, ociName, dockerName)
			exported, exportedBlobs := tarIndex(t, out)
			var exportedDigests []digest.Digest
			for _, m := range exported.Manifests {
				exportedDigests = append(exportedDigests, m.Digest)
			}
			wantDigests := []digest.Digest{images[ociName].Digest, images[dockerName].Digest}
			if diff := cmp.Diff(wantDigests, exportedDigests); diff != "" {
				t.Errorf("export: index.json manifests (-images +export):\n%s", diff)
			}
			for _, b := range ociBlobs {
				if !slices.Contains(exportedBlobs, b) {
					t.Errorf("export lacks blob %s", b)
				}
			}

			// Re-import into a fresh namespace: same names, same digests,
			// same blobs.
			re := ns + "-re"
			c.images(t, d, re, "import", "--no-unpack", out)
			wantImages := imageDigests(images)
			delete(wantImages, tagName)
			if diff := cmp.Diff(wantImages, imageDigests(ctrImages(t, c, d, re))); diff != "" {
				t.Errorf("images ls after re-import (-first import +re-import):\n%s", diff)
			}
			waitContent(t, c, d, ns, exportedBlobs, "in the first namespace")
			waitContent(t, c, d, re, exportedBlobs, "after re-import")

			// A missing image is a warning, not a failure.
			if r := c.try(t, d, ns, "images", "rm", "missing:latest"); r.Err != nil || !strings.Contains(r.Stderr, "not found") {
				t.Errorf("images rm of a missing image: %v, stderr %q; want success with a not found warning", r.Err, r.Stderr)
			}
			c.ns(t, d, ns, "images", "rm", "--sync", ociName, tagName, dockerName)
			if got := ctrImages(t, c, d, ns); len(got) != 0 {
				t.Errorf("images ls after rm = %v, want none", got)
			}
			if got := ctrContent(t, c, d, ns); len(got) != 0 {
				t.Errorf("content ls after images rm --sync = %v, want none", digests(got))
			}
			c.ns(t, d, re, "images", "rm", "--sync", ociName, dockerName)
		})
	}
}

// waitContent waits up to 5 s for `ctr content ls` in ns to list exactly
// want, and fails t if it does not.
func waitContent(t *testing.T, c ctrTool, d *daemon, ns string, want []digest.Digest, when string) {
	t.Helper()
	var got []digest.Digest
	if !waitFor(5*time.Second, func() bool {
		got = digests(ctrContent(t, c, d, ns))
		return cmp.Equal(want, got)
	}) {
		t.Errorf("content ls %s, 5 s on: (-want +got):\n%s", when, cmp.Diff(want, got))
	}
}

// hasRow reports whether a line of out starts with name and holds word.
func hasRow(out, name, word string) bool {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name && strings.Contains(line, word) {
			return true
		}
	}
	return false
}
