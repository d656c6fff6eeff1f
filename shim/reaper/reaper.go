// Package reaper makes the shim a child subreaper and reaps every child it
// gets, handing each exit to whoever waits for that pid.
//
// Once the shim reaps with wait4(-1), no other code may wait for its own
// children; commands started through [Default] (which go-runc uses as its
// Monitor) get their status from the reaper instead.
package reaper

import (
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Exit is one reaped child: its pid, shell-style status and time.
type Exit = runc.Exit

// Reaper collects child exits and fans them out to subscribers.
type Reaper struct {
	mu   sync.Mutex
	subs map[chan Exit]struct{}
}

// Default is the process-wide reaper; its Monitor drives go-runc.
var Default = &Reaper{subs: make(map[chan Exit]struct{})}

// Start makes the calling process a child subreaper and begins reaping on
// SIGCHLD. It must be called once, before any child is started.
func (r *Reaper) Start() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return os.NewSyscallError("prctl subreaper", err)
	}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	runc.Monitor = &monitor{r: r}
	go func() {
		for range sigs {
			r.reap()
		}
	}()
	return nil
}

// Subscribe returns a channel that receives every exit until Unsubscribe.
func (r *Reaper) Subscribe() chan Exit {
	ch := make(chan Exit, 32)
	r.mu.Lock()
	r.subs[ch] = struct{}{}
	r.mu.Unlock()
	return ch
}

// Unsubscribe stops deliveries to ch. It drains ch while waiting for the
// lock, so a reap blocked on a full ch cannot deadlock with it.
func (r *Reaper) Unsubscribe(ch chan Exit) {
	for !r.mu.TryLock() {
		select {
		case <-ch:
		case <-time.After(time.Millisecond):
		}
	}
	delete(r.subs, ch)
	r.mu.Unlock()
}

// reap collects every child that has exited and notifies subscribers.
func (r *Reaper) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		e := Exit{Pid: pid, Status: ExitStatus(ws), Timestamp: time.Now()}
		r.mu.Lock()
		for ch := range r.subs {
			ch <- e
		}
		r.mu.Unlock()
	}
}

// ExitStatus converts a wait status to a shell-style exit code: the exit
// code itself, or 128 plus the signal that killed the process.
func ExitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// monitor is the go-runc ProcessMonitor backed by the reaper.
type monitor struct {
	r *Reaper
}

// Start subscribes before starting c so that a fast exit is not missed.
func (m *monitor) Start(c *exec.Cmd) (chan Exit, error) {
	ch := m.r.Subscribe()
	if err := c.Start(); err != nil {
		m.r.Unsubscribe(ch)
		return nil, err
	}
	return ch, nil
}

// StartLocked is Start; the shim never sets a parent-death signal on runc.
func (m *monitor) StartLocked(c *exec.Cmd) (chan Exit, error) {
	return m.Start(c)
}

// Wait waits for c's exit, lets os/exec finish its copies and descriptors,
// and releases the process handle.
func (m *monitor) Wait(c *exec.Cmd, ch chan Exit) (int, error) {
	defer m.r.Unsubscribe(ch)
	for e := range ch {
		if e.Pid != c.Process.Pid {
			continue
		}
		// The child is already reaped, so Wait only fails with ECHILD; it
		// still joins the copy goroutines and closes the parent's pipes.
		_ = c.Wait()
		_ = c.Process.Release()
		return e.Status, nil
	}
	return -1, errors.New("reaper: subscription closed")
}
