package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin/runner"
)

// procRunner starts a plugin process for go-plugin and tells the host the
// moment it exits, without taking the exit status from go-plugin.
type procRunner struct {
	cmd    *exec.Cmd
	stdout io.ReadCloser
	stderr io.ReadCloser
	exited chan struct{}
	err    error // the exit status; read after exited is closed
}

var _ runner.Runner = (*procRunner)(nil)

// newRunner returns a go-plugin RunnerFunc that runs path with go-plugin's
// environment plus env, and hands the runner to started.
func newRunner(path string, env []string, started func(*procRunner)) func(hclog.Logger, *exec.Cmd, string) (runner.Runner, error) {
	return func(_ hclog.Logger, spec *exec.Cmd, _ string) (runner.Runner, error) {
		cmd := exec.Command(path)
		cmd.Env = append(spec.Env, env...)
		// A plugin dies with the supervisor, and ^C in a terminal reaches the
		// supervisor alone, which then stops the plugins in order.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
		r := &procRunner{cmd: cmd, exited: make(chan struct{})}
		var err error
		if r.stdout, cmd.Stdout, err = os.Pipe(); err != nil {
			return nil, err
		}
		if r.stderr, cmd.Stderr, err = os.Pipe(); err != nil {
			return nil, err
		}
		started(r)
		return r, nil
	}
}

func (r *procRunner) Start(context.Context) error {
	err := r.cmd.Start()
	// The child holds the write ends now; the reads end at its exit.
	r.cmd.Stdout.(*os.File).Close()
	r.cmd.Stderr.(*os.File).Close()
	if err != nil {
		r.err = err
		close(r.exited)
		return fmt.Errorf("start plugin %s: %w", r.cmd.Path, err)
	}
	go func() {
		r.err = r.cmd.Wait()
		close(r.exited)
	}()
	return nil
}

func (r *procRunner) Wait(ctx context.Context) error {
	select {
	case <-r.exited:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *procRunner) Kill(context.Context) error {
	if r.cmd.Process == nil {
		return nil
	}
	if err := r.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-r.exited
	return nil
}

func (r *procRunner) Pid() int {
	if r.cmd.Process == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

func (r *procRunner) Stdout() io.ReadCloser           { return r.stdout }
func (r *procRunner) Stderr() io.ReadCloser           { return r.stderr }
func (r *procRunner) Name() string                    { return r.cmd.Path }
func (r *procRunner) ID() string                      { return strconv.Itoa(r.Pid()) }
func (r *procRunner) Diagnose(context.Context) string { return "" }

func (r *procRunner) PluginToHost(network, addr string) (string, string, error) {
	return network, addr, nil
}

func (r *procRunner) HostToPlugin(network, addr string) (string, string, error) {
	return network, addr, nil
}
