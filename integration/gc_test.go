//go:build linux

package integration

import (
	"strings"
	"testing"

	"corral.dev/pluginkit/testkit"
)

// TestImagesRmSyncCollects imports busybox from an OCI layout and from a
// docker archive with each ctr version, removes the images with --sync,
// and checks that nothing is left: `ctr content ls` is empty and no blob
// file is left on disk.
func TestImagesRmSyncCollects(t *testing.T) {
	testkit.RequiresRoot(t)
	ociTar := testkit.BusyboxImage(t)
	dockerTar := testkit.DockerArchive(t, ociTar)
	d := startDaemon(t, settings{})
	for _, c := range ctrTools(t) {
		t.Run(c.name, func(t *testing.T) {
			ns := uniqueNS(strings.ReplaceAll(c.name, ".", ""))
			c.images(t, d, ns, "import", "--no-unpack", "--base-name", "busybox", ociTar)
			c.images(t, d, ns, "import", "--no-unpack", dockerTar)
			c.images(t, d, ns, "tag", "busybox:latest", "busybox:second")
			if len(ctrContent(t, c, d, ns)) == 0 || len(blobFiles(t, d)) == 0 {
				t.Fatalf("no content after the imports")
			}

			// Removing one of two names of an image keeps its blobs.
			c.ns(t, d, ns, "images", "rm", "--sync", "busybox:latest")
			if got := len(ctrContent(t, c, d, ns)); got == 0 {
				t.Fatalf("content ls empty while busybox:second still names the image")
			}

			c.ns(t, d, ns, "images", "rm", "--sync", "busybox:second", "docker.io/library/busybox:latest")
			if got := ctrContent(t, c, d, ns); len(got) != 0 {
				t.Errorf("content ls after images rm --sync of the last image = %v, want none", digests(got))
			}
			if files := blobFiles(t, d); len(files) != 0 {
				t.Errorf("blob files left after images rm --sync of the last image: %q", files)
			}
		})
	}
}
