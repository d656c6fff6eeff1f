package sidebyside

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
)

// ContainerdPath is where Debian installs containerd 1.6.20.
const ContainerdPath = "/usr/bin/containerd"

// Daemon is a containerd-compatible daemon running on its own temporary
// root, state and sockets. Stop ends it by pid and removes its directory.
type Daemon struct {
	// Name says which daemon this is in reports.
	Name string
	// Address is the public gRPC socket.
	Address string
	// Dir holds the config, log, root, state and sockets.
	Dir string

	cmd  *exec.Cmd
	done chan struct{}
	err  error // from Wait, valid once done is closed
}

// StartOurs starts our supervisor from binary.
func StartOurs(ctx context.Context, binary string) (*Daemon, error) {
	return start(ctx, "corral", binary, func(dir string) string {
		return fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[debug]
  address = %q
[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"),
			filepath.Join(dir, "c.sock"), filepath.Join(dir, "d.sock"))
	})
}

// StartContainerd starts containerd from binary (see [ContainerdPath]) with
// the CRI plugin disabled, as it serves nothing the workloads use.
func StartContainerd(ctx context.Context, binary string) (*Daemon, error) {
	return start(ctx, "containerd", binary, func(dir string) string {
		return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = %q
[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "c.sock"),
			filepath.Join(dir, "c.sock.ttrpc"), filepath.Join(dir, "d.sock"))
	})
}

// start writes the config that config returns for a new directory, starts
// binary on it and waits until the public socket answers Version.
func start(ctx context.Context, name, binary string, config func(dir string) string) (*Daemon, error) {
	// A short directory keeps socket paths under the 108-byte limit.
	dir, err := os.MkdirTemp("", "cb")
	if err != nil {
		return nil, fmt.Errorf("create %s directory: %w", name, err)
	}
	d := &Daemon{Name: name, Address: filepath.Join(dir, "c.sock"), Dir: dir, done: make(chan struct{})}
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config(dir)), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("write %s config: %w", name, err)
	}
	log, err := os.Create(d.logPath())
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("create %s log: %w", name, err)
	}
	defer log.Close()

	// Start the process; Stop owns it from here on.
	d.cmd = exec.Command(binary, "--config", cfg)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	if err := d.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s %s: %w", name, binary, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()

	if err := d.waitReady(ctx, 30*time.Second); err != nil {
		d.Stop()
		return nil, err
	}
	return d, nil
}

// waitReady polls Version on the public socket until it answers.
func (d *Daemon) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := Dial(d.Address)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := versionapi.NewVersionClient(conn)
	for {
		callCtx, callCancel := context.WithTimeout(ctx, time.Second)
		_, err := client.Version(callCtx, &emptypb.Empty{})
		callCancel()
		if err == nil {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("%s exited before serving (%v): %s", d.Name, d.err, d.logTail())
		case <-ctx.Done():
			return fmt.Errorf("wait for %s on %s: %w: %s", d.Name, d.Address, err, d.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Dial opens a gRPC client connection to a unix socket.
func Dial(address string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix://"+address,
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	return conn, nil
}

// Pid is the daemon's process id.
func (d *Daemon) Pid() int {
	return d.cmd.Process.Pid
}

// CPU reads the processor time of the daemon and its descendants.
func (d *Daemon) CPU() (CPU, error) {
	return ReadCPU(d.Pid())
}

// Stop sends SIGTERM to the daemon, then SIGKILL if it has not exited
// within ten seconds, kills any descendant that outlived it, and removes
// its directory. It is safe to call more than once.
func (d *Daemon) Stop() error {
	if d.cmd == nil {
		return nil
	}
	// Note the descendants first: once the daemon exits they are orphans.
	var children []int
	if cpu, err := d.CPU(); err == nil {
		for pid := range cpu.Children {
			children = append(children, pid)
		}
	}

	var errs []error
	select {
	case <-d.done:
	default:
		if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("signal %s pid %d: %w", d.Name, d.Pid(), err))
		}
		select {
		case <-d.done:
		case <-time.After(10 * time.Second):
			errs = append(errs, fmt.Errorf("%s pid %d ignored SIGTERM for 10s", d.Name, d.Pid()))
			_ = d.cmd.Process.Kill()
			<-d.done
		}
	}
	for _, pid := range children {
		killOrphan(pid)
	}
	if err := os.RemoveAll(d.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s directory: %w", d.Name, err))
	}
	d.cmd = nil
	return errors.Join(errs...)
}

// killOrphan waits up to two seconds for pid to go away by itself, then
// sends it SIGKILL.
func killOrphan(pid int) {
	for range 100 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

func (d *Daemon) logPath() string {
	return filepath.Join(d.Dir, "daemon.log")
}

// logTail returns the last lines of the daemon's log for error messages.
func (d *Daemon) logTail() string {
	data, err := os.ReadFile(d.logPath())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "log:\n" + string(bytes.Join(lines, []byte("\n")))
}

// BuildOurs builds the containerd multi-call binary into dir and returns
// its path. It builds ./cmd/containerd of the workspace (go.work) in use,
// or, with the workspace off, of the first parent of the working directory
// that holds one.
func BuildOurs(ctx context.Context, dir string) (string, error) {
	root, err := repoRoot(ctx)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "containerd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./containerd")
	cmd.Dir = filepath.Join(root, "cmd")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build containerd in %s: %w\n%s", cmd.Dir, err, out)
	}
	return bin, nil
}

// repoRoot returns the directory of the workspace that holds the cmd
// module.
func repoRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOWORK").Output()
	if err != nil {
		return "", fmt.Errorf("find the workspace: %w", err)
	}
	if work := strings.TrimSpace(string(out)); work != "" && work != "off" {
		return filepath.Dir(work), nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find the workspace: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "cmd", "containerd", "main.go")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("build containerd: no cmd/containerd above the working directory, pass the binary")
		}
		dir = parent
	}
}
