package launch

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"corral.dev/shim/task"
)

// deleteBundle cleans up after a shim that is gone and reports the task as
// killed, which is what containerd publishes as its exit.
func deleteBundle(f *flags) error {
	ctx, cancel := withTimeout(30 * time.Second)
	defer cancel()
	killShim(f.bundle)
	if err := task.Cleanup(ctx, f.bundle, f.namespace, f.id); err != nil {
		fmt.Fprintf(os.Stderr, "warning: %v\n", err)
	}
	_ = os.Remove(socketPath(f.ttrpcAddress, f.namespace, f.id))

	data, err := proto.Marshal(&taskapi.DeleteResponse{
		ExitStatus: 128 + uint32(unix.SIGKILL),
		ExitedAt:   timestamppb.Now(),
	})
	if err != nil {
		return fmt.Errorf("marshal delete response: %w", err)
	}
	_, err = os.Stdout.Write(data)
	return err
}

// killShim kills the bundle's shim if it still runs: containerd deletes a
// bundle when it could not use its shim, which may yet be alive.
func killShim(bundle string) {
	data, err := os.ReadFile(filepath.Join(bundle, pidFile))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return
	}
	self, err := os.Executable()
	if err != nil {
		return
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil || exe != self {
		return
	}
	_ = unix.Kill(pid, unix.SIGKILL)
}
