package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// DockerArchive converts the OCI layout tar ociTar (as BusyboxImage makes
// it, with the ref name "latest") into a docker-archive tar with skopeo and
// returns its path. The archive names the image busybox:latest, which ctr
// imports as docker.io/library/busybox:latest. It skips t when skopeo is
// missing.
func DockerArchive(t testing.TB, ociTar string) string {
	t.Helper()
	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		t.Skip("skopeo not installed")
	}
	dir := t.TempDir()
	layout := filepath.Join(dir, "oci")
	if err := os.Mkdir(layout, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("tar", "-C", layout, "-xf", ociTar)
	archive := filepath.Join(dir, "busybox-docker.tar")
	// skopeo wants a policy; the default one may be missing in CI.
	policy := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	run(skopeo, "--policy", policy, "copy", "--quiet",
		"oci:"+layout+":latest", "docker-archive:"+archive+":busybox:latest")
	return archive
}
