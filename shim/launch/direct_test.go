//go:build linux

package launch_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupv1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	cgroupv2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"corral.dev/pluginkit/testkit"
)

func init() {
	// The type URLs containerd's client gives these JSON payloads.
	const prefix = "types.containerd.io/opencontainers/runtime-spec"
	typeurl.Register(&specs.Process{}, prefix, "1", "Process")
	typeurl.Register(&specs.LinuxResources{}, prefix, "1", "LinuxResources")
}

// topics records the topics forwarded to a test events service.
type topics struct {
	mu   sync.Mutex
	seen []string
}

func (tp *topics) Forward(_ context.Context, r *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	tp.mu.Lock()
	tp.seen = append(tp.seen, r.Envelope.Topic)
	tp.mu.Unlock()
	return &emptypb.Empty{}, nil
}

// direct is a shim started by hand, with no containerd: the test plays
// the daemon on both sockets.
type direct struct {
	t      *testing.T
	dir    string
	bundle string
	task   taskapi.TTRPCTaskService
	events *topics
	shim   int
}

// startDirect makes a busybox bundle running args, serves the events API
// and runs `shim start` in the bundle.
func startDirect(t *testing.T, id string, args ...string) *direct {
	t.Helper()
	return startDirectOpts(t, id, nil, args...)
}

// startDirectOpts is startDirect with runc options on the shim's stdin,
// as containerd passes them.
func startDirectOpts(t *testing.T, id string, opts *options.Options, args ...string) *direct {
	t.Helper()
	testkit.RequiresRoot(t)
	bin := filepath.Join(shimDir(t), "containerd-shim-corral-v2")
	dir, err := os.MkdirTemp("", "cs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &direct{t: t, dir: dir, bundle: filepath.Join(dir, id), events: &topics{}}
	d.writeBundle(id, args)

	// Serve the events API as containerd's ttrpc socket would.
	evSock := filepath.Join(dir, "ev.sock")
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	eventsapi.RegisterTTRPCEventsService(srv, d.events)
	l, err := net.Listen("unix", evSock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(context.Background(), l) }()
	t.Cleanup(func() { srv.Close() })

	cmd := exec.Command(bin, "-namespace", "direct", "-address", filepath.Join(dir, "c.sock"),
		"-publish-binary", "/bin/true", "-id", id, "start")
	cmd.Dir = d.bundle
	cmd.Env = append(os.Environ(), "TTRPC_ADDRESS="+evSock)
	if opts != nil {
		a, err := typeurl.MarshalAnyToProto(opts)
		if err != nil {
			t.Fatal(err)
		}
		data, err := proto.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdin = bytes.NewReader(data)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("shim start: %v\n%s", err, out)
	}
	address := string(out)
	if !strings.HasPrefix(address, "unix:///") {
		t.Fatalf("shim start printed %q, want a unix:// path", address)
	}
	conn, err := net.Dial("unix", strings.TrimPrefix(address, "unix://"))
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	t.Cleanup(func() { client.Close() })
	d.task = taskapi.NewTTRPCTaskClient(client)

	resp, err := d.task.Connect(d.ctx(), &taskapi.ConnectRequest{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	d.shim = int(resp.ShimPid)
	t.Cleanup(func() {
		// Nothing may outlive the test, whatever it left half done.
		_ = syscall.Kill(d.shim, syscall.SIGKILL)
		_ = exec.Command("runc", "--root", "/run/corral-shim/runc/direct", "delete", "--force", id).Run()
		_ = os.Remove("/run/corral-shim/runc/direct")
		removeCgroups("corral-direct")
	})
	return d
}

// writeBundle writes rootfs and config.json for a container running args.
func (d *direct) writeBundle(id string, args []string) {
	rootfs := filepath.Join(d.bundle, "rootfs")
	for _, sub := range []string{"bin", "proc", "dev", "sys", "tmp"} {
		if err := os.MkdirAll(filepath.Join(rootfs, sub), 0o755); err != nil {
			d.t.Fatal(err)
		}
	}
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		d.t.Skip("busybox-static not installed")
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), data, 0o755); err != nil {
		d.t.Fatal(err)
	}
	for _, a := range []string{"sh", "sleep"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", a)); err != nil {
			d.t.Fatal(err)
		}
	}
	spec := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/bin"}},
		Root:    &specs.Root{Path: "rootfs"},
		Mounts:  []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
		Linux: &specs.Linux{
			CgroupsPath: "/corral-direct/" + id,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace},
				{Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
			},
		},
	}
	data, err = json.Marshal(spec)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.bundle, "config.json"), data, 0o600); err != nil {
		d.t.Fatal(err)
	}
}

// ctx bounds one call to the shim.
func (d *direct) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	d.t.Cleanup(cancel)
	return ctx
}

// status is the task's or an exec's status.
func (d *direct) status(id, execID string) tasktypes.Status {
	d.t.Helper()
	st, err := d.task.State(d.ctx(), &taskapi.StateRequest{ID: id, ExecID: execID})
	if err != nil {
		d.t.Fatalf("State(%s, %q): %v", id, execID, err)
	}
	return st.Status
}

// notFound reports whether err is NotFound once back from the wire.
func notFound(err error) bool {
	return errdefs.IsNotFound(errgrpc.ToNative(err))
}

func TestTaskAPIWithoutDaemon(t *testing.T) {
	const id = "api"
	d := startDirect(t, id, "sleep", "1000")
	task := d.task

	// Wait sent before Start still sees the exit.
	if _, err := task.Create(d.ctx(), &taskapi.CreateTaskRequest{ID: id, Bundle: d.bundle}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	waited := make(chan *taskapi.WaitResponse, 1)
	go func() {
		w, err := task.Wait(d.ctx(), &taskapi.WaitRequest{ID: id})
		if err != nil {
			t.Errorf("Wait: %v", err)
		}
		waited <- w
	}()
	if _, err := task.Start(d.ctx(), &taskapi.StartRequest{ID: id}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if st := d.status(id, ""); st != tasktypes.Status_RUNNING {
		t.Fatalf("status after Start = %s, want RUNNING", st)
	}

	t.Run("update and stats", func(t *testing.T) {
		limit := int64(96 << 20)
		res, err := typeurl.MarshalAnyToProto(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := task.Update(d.ctx(), &taskapi.UpdateTaskRequest{ID: id, Resources: res}); err != nil {
			t.Fatalf("Update: %v", err)
		}
		st, err := task.Stats(d.ctx(), &taskapi.StatsRequest{ID: id})
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		if got := memoryLimit(t, st.Stats); got != uint64(limit) {
			t.Errorf("memory limit after Update = %d, want %d", got, limit)
		}
	})

	t.Run("pause and resume", func(t *testing.T) {
		if _, err := task.Pause(d.ctx(), &taskapi.PauseRequest{ID: id}); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		if st := d.status(id, ""); st != tasktypes.Status_PAUSED {
			t.Errorf("status after Pause = %s, want PAUSED", st)
		}
		if _, err := task.Resume(d.ctx(), &taskapi.ResumeRequest{ID: id}); err != nil {
			t.Fatalf("Resume: %v", err)
		}
	})

	t.Run("exec", func(t *testing.T) {
		spec, err := typeurl.MarshalAnyToProto(&specs.Process{
			Args: []string{"sh", "-c", "exit 7"},
			Cwd:  "/",
			Env:  []string{"PATH=/bin"},
		})
		if err != nil {
			t.Fatal(err)
		}
		req := &taskapi.ExecProcessRequest{ID: id, ExecID: "x", Spec: spec}
		if _, err := task.Exec(d.ctx(), req); err != nil {
			t.Fatalf("Exec: %v", err)
		}
		if _, err := task.Exec(d.ctx(), req); !errdefs.IsAlreadyExists(errgrpc.ToNative(err)) {
			t.Errorf("second Exec = %v, want AlreadyExists", err)
		}
		if _, err := task.Start(d.ctx(), &taskapi.StartRequest{ID: id, ExecID: "x"}); err != nil {
			t.Fatalf("Start exec: %v", err)
		}
		w, err := task.Wait(d.ctx(), &taskapi.WaitRequest{ID: id, ExecID: "x"})
		if err != nil || w.ExitStatus != 7 {
			t.Fatalf("Wait exec = %v, %v; want status 7", w, err)
		}
		if _, err := task.Delete(d.ctx(), &taskapi.DeleteRequest{ID: id, ExecID: "x"}); err != nil {
			t.Fatalf("Delete exec: %v", err)
		}
		if _, err := task.State(d.ctx(), &taskapi.StateRequest{ID: id, ExecID: "x"}); !notFound(err) {
			t.Errorf("State of a deleted exec = %v, want NotFound", err)
		}
	})

	// Kill, then Wait (pending and new), Delete and the calls after it.
	if _, err := task.Delete(d.ctx(), &taskapi.DeleteRequest{ID: id}); err == nil {
		t.Error("Delete of a running task succeeded")
	}
	if _, err := task.Kill(d.ctx(), &taskapi.KillRequest{ID: id, Signal: 9, All: true}); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	select {
	case w := <-waited:
		if w == nil || w.ExitStatus != 137 {
			t.Fatalf("Wait = %v, want status 137", w)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Wait did not return after Kill")
	}
	if w, err := task.Wait(d.ctx(), &taskapi.WaitRequest{ID: id}); err != nil || w.ExitStatus != 137 {
		t.Errorf("Wait after exit = %v, %v; want 137 at once", w, err)
	}
	if _, err := task.Kill(d.ctx(), &taskapi.KillRequest{ID: id, Signal: 9}); !notFound(err) {
		t.Errorf("Kill after exit = %v, want NotFound", err)
	}
	del, err := task.Delete(d.ctx(), &taskapi.DeleteRequest{ID: id})
	if err != nil || del.ExitStatus != 137 {
		t.Fatalf("Delete = %v, %v; want status 137", del, err)
	}
	for name, call := range map[string]func() error{
		"State": func() error { _, err := task.State(d.ctx(), &taskapi.StateRequest{ID: id}); return err },
		"Wait":  func() error { _, err := task.Wait(d.ctx(), &taskapi.WaitRequest{ID: id}); return err },
		"Kill": func() error {
			_, err := task.Kill(d.ctx(), &taskapi.KillRequest{ID: id, Signal: 9, All: true})
			return err
		},
	} {
		if err := call(); !notFound(err) {
			t.Errorf("%s after Delete = %v, want NotFound", name, err)
		}
	}

	// Shutdown ends the shim once its events are out.
	if _, err := task.Shutdown(d.ctx(), &taskapi.ShutdownRequest{ID: id}); err != nil &&
		!errors.Is(err, ttrpc.ErrClosed) {
		t.Fatalf("Shutdown: %v", err)
	}
	if !gone(fmt.Sprint(d.shim), 10*time.Second) {
		t.Fatalf("shim %d still runs after Shutdown", d.shim)
	}
	d.events.mu.Lock()
	seen := strings.Join(d.events.seen, " ")
	d.events.mu.Unlock()
	for _, topic := range []string{"/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed",
		"/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/delete"} {
		if !strings.Contains(seen, topic) {
			t.Errorf("topic %s not forwarded; got %s", topic, seen)
		}
	}
}

// memoryLimit decodes the memory limit from either cgroup version's
// metrics.
func memoryLimit(t *testing.T, a *anypb.Any) uint64 {
	t.Helper()
	v, err := typeurl.UnmarshalAny(a)
	if err != nil {
		t.Fatalf("decode stats %s: %v", a.GetTypeUrl(), err)
	}
	switch m := v.(type) {
	case *cgroupv1.Metrics:
		return m.GetMemory().GetUsage().GetLimit()
	case *cgroupv2.Metrics:
		return m.GetMemory().GetUsageLimit()
	}
	t.Fatalf("stats of type %s", a.GetTypeUrl())
	return 0
}

func TestShimCgroupOption(t *testing.T) {
	testkit.RequiresRoot(t)
	if cgroups.Mode() == cgroups.Unified {
		t.Skip("checks the cgroup v1 layout")
	}
	const path = "/corral-direct/shim"
	cg, err := cgroup1.New(cgroup1.StaticPath(path), &specs.LinuxResources{})
	if err != nil {
		t.Fatal(err)
	}
	d := startDirectOpts(t, "cg", &options.Options{ShimCgroup: path}, "sleep", "1000")
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", d.shim))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), ":memory:"+path+"\n") {
		t.Errorf("shim cgroups:\n%s\nwant memory in %s", data, path)
	}
	if _, err := d.task.Shutdown(d.ctx(), &taskapi.ShutdownRequest{ID: "cg", Now: true}); err != nil &&
		!errors.Is(err, ttrpc.ErrClosed) {
		t.Fatalf("Shutdown: %v", err)
	}
	if !gone(fmt.Sprint(d.shim), 10*time.Second) {
		t.Fatalf("shim %d still runs after Shutdown", d.shim)
	}
	// The exited shim leaves the cgroup once its new parent reaps it.
	deadline := time.Now().Add(5 * time.Second)
	for err := cg.Delete(); err != nil; err = cg.Delete() {
		if time.Now().After(deadline) {
			t.Errorf("delete cgroup: %v", err)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}
