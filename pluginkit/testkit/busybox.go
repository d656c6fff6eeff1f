package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// busyboxApplets are linked next to /bin/busybox in the test image.
var busyboxApplets = []string{
	"sh", "ls", "echo", "cat", "sleep", "true", "false", "head", "dd",
	"tail", "ps", "kill", "env", "id", "tty", "stty", "yes", "wc", "test",
}

// BusyboxImage builds an OCI image layout from the host's static busybox
// with umoci and returns the path of a tar of it, ready for
// `ctr images import --base-name NAME`; the image's ref name is "latest".
// It skips t when umoci or /bin/busybox is missing.
func BusyboxImage(t testing.TB) string {
	t.Helper()
	umoci, err := exec.LookPath("umoci")
	if err != nil {
		t.Skip("umoci not installed")
	}
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Skip("busybox-static not installed")
	}
	dir := t.TempDir()
	layout := filepath.Join(dir, "oci")
	bundle := filepath.Join(dir, "bundle")
	run := func(name string, args ...string) {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}

	// Make an empty image, unpack it, add busybox and repack.
	run(umoci, "init", "--layout", layout)
	run(umoci, "new", "--image", layout+":latest")
	run(umoci, "unpack", "--rootless", "--image", layout+":latest", bundle)
	bin := filepath.Join(bundle, "rootfs", "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range busyboxApplets {
		if err := os.Symlink("busybox", filepath.Join(bin, a)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"tmp", "proc", "sys", "dev", "etc", "run"} {
		if err := os.MkdirAll(filepath.Join(bundle, "rootfs", d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run(umoci, "repack", "--image", layout+":latest", bundle)
	run(umoci, "config", "--image", layout+":latest", "--config.cmd=sh", "--config.env=PATH=/bin")
	run(umoci, "gc", "--layout", layout)

	// Tar the layout itself, not the directory holding it.
	tarPath := filepath.Join(dir, "busybox.tar")
	run("tar", "-C", layout, "-cf", tarPath, ".")
	return tarPath
}
