package launch

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"corral.dev/shim/task"
)

// addressFile is where containerd reads a running shim's address from
// when it restarts.
const addressFile = "address"

// pidFile records the long-lived shim's pid in the bundle.
const pidFile = "shim.pid"

// start launches the long-lived shim in its own session, prints its
// address and returns. A shim already serving this task is reused.
func start(f *flags) error {
	path := socketPath(f.ttrpcAddress, f.namespace, f.id)
	address := addressOf(path)
	if inUse(path) {
		return announce(f.bundle, address)
	}
	_ = os.Remove(path)

	// Bind the socket here so it accepts as soon as start returns.
	l, err := listen(path)
	if err != nil {
		return err
	}
	defer l.Close()
	sock, err := l.File()
	if err != nil {
		return fmt.Errorf("socket file: %w", err)
	}
	defer sock.Close()

	// Forward the runtime options from our stdin to the shim's.
	opts, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	if err != nil {
		opts = nil
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	cmd := exec.Command(self, f.args(serveAction)...)
	cmd.Dir = f.bundle
	cmd.ExtraFiles = []*os.File{sock}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("shim stdin: %w", err)
	}
	if err := cmd.Start(); err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("start shim: %w", err)
	}
	_, _ = stdin.Write(opts)
	stdin.Close()

	// Containers must die before their shim under memory pressure. The
	// daemon reads our output as the address, so a failure is not printed;
	// the shim keeps the score it inherited.
	_ = adjustOOMScore(cmd.Process.Pid, os.Getppid())
	if o, err := readOptions(bytes.NewReader(opts)); err == nil && o != nil && o.ShimCgroup != "" {
		if err := task.MoveToCgroup(cmd.Process.Pid, o.ShimCgroup); err != nil {
			_ = cmd.Process.Kill()
			_ = os.Remove(path)
			return fmt.Errorf("move shim to cgroup %s: %w", o.ShimCgroup, err)
		}
	}
	pid := strconv.Itoa(cmd.Process.Pid)
	_ = cmd.Process.Release()
	if err := os.WriteFile(filepath.Join(f.bundle, pidFile), []byte(pid), 0o600); err != nil {
		return fmt.Errorf("write shim pid: %w", err)
	}
	return announce(f.bundle, address)
}

// announce records the address in the bundle and prints it for containerd.
func announce(bundle, address string) error {
	if err := os.WriteFile(filepath.Join(bundle, addressFile), []byte(address), 0o600); err != nil {
		return fmt.Errorf("write address: %w", err)
	}
	_, err := fmt.Fprint(os.Stdout, address)
	return err
}

// maxOOMScoreAdj is the kernel's upper bound for oom_score_adj.
const maxOOMScoreAdj = 1000

// adjustOOMScore gives pid the oom_score_adj of parent plus one. A host
// that forbids lowering the score leaves the inherited one in place.
func adjustOOMScore(pid, parent int) error {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", parent))
	if err != nil {
		return fmt.Errorf("read daemon oom score: %w", err)
	}
	score, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return fmt.Errorf("parse daemon oom score: %w", err)
	}
	score = min(score+1, maxOOMScoreAdj)
	err = os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), []byte(strconv.Itoa(score)), 0)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("set shim oom score: %w", err)
	}
	return nil
}
