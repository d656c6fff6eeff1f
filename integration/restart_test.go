//go:build linux

package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/google/go-cmp/cmp"

	"corral.dev/pluginkit/testkit"
)

// Shape of the call loop: loopCalls namespace calls, with the plugin
// disturbed once loopDisturbAt of them have returned.
const (
	loopCalls     = 500
	loopDisturbAt = 150
)

// callLoop makes n namespace calls through store, in groups of five on a
// namespace of its own: Create, SetLabel, List, Labels, Delete. Each call
// must succeed exactly once: a Create that answers AlreadyExists or a
// Delete that answers NotFound was run twice. done counts returned calls.
func callLoop(ctx context.Context, store namespaces.Store, prefix string, n int, done *atomic.Int64) []error {
	var errs []error
	fail := func(i int, ns, op string, err error) {
		errs = append(errs, fmt.Errorf("call %d: %s %s: %w", i, op, ns, err))
	}
	for i := range n {
		k := i / 5
		ns := fmt.Sprintf("%s-%d", prefix, k)
		want := map[string]string{"k": strconv.Itoa(k), "step": "set"}
		switch i % 5 {
		case 0:
			if err := store.Create(ctx, ns, map[string]string{"k": strconv.Itoa(k)}); err != nil {
				fail(i, ns, "Create", err)
			}
		case 1:
			if err := store.SetLabel(ctx, ns, "step", "set"); err != nil {
				fail(i, ns, "SetLabel", err)
			}
		case 2:
			list, err := store.List(ctx)
			if err == nil && !slices.Contains(list, ns) {
				err = fmt.Errorf("not listed in %q", list)
			}
			if err != nil {
				fail(i, ns, "List", err)
			}
		case 3:
			labels, err := store.Labels(ctx, ns)
			if err == nil && !cmp.Equal(want, labels) {
				err = fmt.Errorf("labels %v, want %v", labels, want)
			}
			if err != nil {
				fail(i, ns, "Labels", err)
			}
		case 4:
			if err := store.Delete(ctx, ns); err != nil {
				fail(i, ns, "Delete", err)
			}
		}
		done.Add(1)
	}
	return errs
}

// loopWhile runs callLoop against d and calls disturb once loopDisturbAt
// calls have returned. It fails t for every call that failed, and when
// disturb ran only after the loop had ended.
func loopWhile(t *testing.T, d *daemon, disturb func()) {
	t.Helper()
	store := newClient(t, d).NamespaceService()
	ctx := clientContext(t)
	var done atomic.Int64
	result := make(chan []error, 1)
	prefix := uniqueNS("loop")
	start := time.Now()
	go func() { result <- callLoop(ctx, store, prefix, loopCalls, &done) }()

	if !waitForFast(30*time.Second, func() bool { return done.Load() >= loopDisturbAt }) {
		t.Fatalf("only %d of %d calls returned in 30s", done.Load(), loopDisturbAt)
	}
	disturb()
	at := done.Load()

	errs := <-result
	t.Logf("%d calls in %v, disturbed after call %d", loopCalls, time.Since(start), at)
	for _, err := range errs {
		t.Error(err)
	}
	if at >= loopCalls {
		t.Errorf("the loop had ended (%d calls) before the plugin was disturbed", at)
	}
}

// waitForFast is waitFor polling every millisecond.
func waitForFast(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// TestPluginKilled kills the bolt plugin process with SIGKILL in the middle
// of a loop of namespace calls: every call succeeds exactly once, the
// supervisor starts a new process by itself, and the restart shows in
// `containerd plugins ls`, ctr plugins ls, introspection and the metrics.
func TestPluginKilled(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	old := d.runningPlugin(t, boltID)
	if !slices.Contains(childPIDs(d.Pid), old.Pid) {
		t.Fatalf("bolt pid %d is not a child of daemon %d (children %v)", old.Pid, d.Pid, childPIDs(d.Pid))
	}

	loopWhile(t, d, func() {
		if err := syscall.Kill(old.Pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 bolt %d: %v", old.Pid, err)
		}
	})

	now := d.runningPlugin(t, boltID)
	if now.Pid == old.Pid || !alive(now.Pid) {
		t.Errorf("bolt pid %d after the kill (was %d), want a new live process", now.Pid, old.Pid)
	}
	if alive(old.Pid) {
		t.Errorf("killed bolt process %d is still there", old.Pid)
	}
	if now.Restarts != 1 {
		t.Errorf("containerd plugins ls: bolt restarts = %d, want 1", now.Restarts)
	}
	if got := metricValue(t, scrape(t, d.MetricsAddr), "corral_plugin_restarts_total", boltID); got != 1 {
		t.Errorf(`corral_plugin_restarts_total{plugin="bolt"} = %v, want 1`, got)
	}
	for _, c := range ctrTools(t) {
		if row := ctrPlugins(t, c, d)[boltID]; len(row) != 4 || row[3] != "ok" {
			t.Errorf("%s plugins ls: bolt row %q, want status ok", c.name, row)
		}
	}
	exports := checkClientPlugins(t, clientContext(t), newClient(t, d))
	want := map[string]string{"pid": strconv.Itoa(now.Pid), "restarts": "1", "status": "running"}
	for k, v := range want {
		if exports[k] != v {
			t.Errorf("introspection: bolt export %s = %q, want %q (exports %v)", k, exports[k], v, exports)
		}
	}
}

// TestPluginRestartCommand restarts the bolt plugin with `containerd plugins
// restart` in the middle of a loop of namespace calls: no call fails and a
// new process serves.
func TestPluginRestartCommand(t *testing.T) {
	testkit.RequiresRoot(t)
	d := startDaemon(t, settings{})
	old := d.runningPlugin(t, boltID)

	loopWhile(t, d, func() {
		mustRun(t, containerdBin, "-c", d.Config, "-a", d.Socket, "plugins", "restart", boltID)
	})

	now := d.runningPlugin(t, boltID)
	if now.Pid == old.Pid || !alive(now.Pid) {
		t.Errorf("bolt pid %d after the restart (was %d), want a new live process", now.Pid, old.Pid)
	}
	if !waitGone(old.Pid, 5*time.Second) {
		t.Errorf("old bolt process %d still running after the restart", old.Pid)
	}
}

// TestPluginKilledUnderConcurrentLoad kills the bolt plugin three times
// while eight clients make namespace calls at once, so that calls are in
// flight at every stage when the process dies (some committed but not yet
// answered): every call still succeeds exactly once, and every event
// reaches a subscriber.
func TestPluginKilledUnderConcurrentLoad(t *testing.T) {
	testkit.RequiresRoot(t)
	const (
		workers = 8
		kills   = 3
	)
	d := startDaemon(t, settings{})
	c := newClient(t, d)
	store := c.NamespaceService()
	ctx := clientContext(t)
	events := collectEvents(t, subscribe(t, ctx, c))
	var done atomic.Int64
	results := make(chan []error, workers)
	var prefixes []string
	for w := range workers {
		prefix := uniqueNS(fmt.Sprintf("w%d", w))
		prefixes = append(prefixes, prefix)
		go func() { results <- callLoop(ctx, store, prefix, loopCalls, &done) }()
	}

	total := int64(workers * loopCalls)
	pid := d.runningPlugin(t, boltID).Pid
	for k := range int64(kills) {
		at := (k + 1) * total / (kills + 1)
		if !waitForFast(time.Minute, func() bool { return done.Load() >= at }) {
			t.Fatalf("only %d of %d calls returned in a minute", done.Load(), at)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 bolt %d: %v", pid, err)
		}
		t.Logf("killed bolt %d after %d calls", pid, done.Load())
		pid = d.restartedPlugin(t, boltID, pid).Pid
	}

	for range workers {
		for _, err := range <-results {
			t.Error(err)
		}
	}
	// Every namespace's create, update and delete reached the subscriber.
	var want []string
	for _, prefix := range prefixes {
		for k := range loopCalls / 5 {
			for _, topic := range []string{"create", "update", "delete"} {
				want = append(want, fmt.Sprintf("%s-%d /namespaces/%s", prefix, k, topic))
			}
		}
	}
	events.check(t, want)

	if got := d.plugins(t)[boltID].Restarts; got != kills {
		t.Errorf("containerd plugins ls: bolt restarts = %d, want %d", got, kills)
	}
	if got := metricValue(t, scrape(t, d.MetricsAddr), "corral_plugin_restarts_total", boltID); got != kills {
		t.Errorf(`corral_plugin_restarts_total{plugin="bolt"} = %v, want %d`, got, kills)
	}
}

// eventCounter counts the events of a subscription by "namespace topic",
// reading them as they come so that the subscriber never falls behind.
type eventCounter struct {
	mu     sync.Mutex
	counts map[string]int
	err    error
}

func collectEvents(t *testing.T, s *subscription) *eventCounter {
	t.Helper()
	ec := &eventCounter{counts: make(map[string]int)}
	go func() {
		for {
			select {
			case e := <-s.envelopes:
				ec.mu.Lock()
				ec.counts[e.Namespace+" "+e.Topic]++
				ec.mu.Unlock()
			case err := <-s.errs:
				ec.mu.Lock()
				ec.err = err
				ec.mu.Unlock()
				return
			}
		}
	}()
	return ec
}

// check waits for each of want to arrive, failing t for those that do not,
// and logs how many arrived more than once.
func (ec *eventCounter) check(t *testing.T, want []string) {
	t.Helper()
	var missing []string
	dups := 0
	waitFor(10*time.Second, func() bool {
		ec.mu.Lock()
		defer ec.mu.Unlock()
		missing, dups = missing[:0], 0
		for _, w := range want {
			switch n := ec.counts[w]; {
			case n == 0:
				missing = append(missing, w)
			case n > 1:
				dups++
			}
		}
		return len(missing) == 0 || ec.err != nil
	})
	if ec.err != nil {
		t.Errorf("subscription ended: %v", ec.err)
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d events never arrived, first %q", len(missing), len(want), missing[0])
	}
	if dups > 0 {
		t.Logf("%d of %d events arrived more than once (calls replayed after the kills)", dups, len(want))
	}
}

// TestPluginInitFailure starts the daemon on a metadata database that is
// not one: bolt fails to initialise and is reported so, with its error,
// while the daemon and its other services keep serving and calls to bolt's
// services fail instead of hanging.
func TestPluginInitFailure(t *testing.T) {
	testkit.RequiresRoot(t)
	l := newLayout(t)
	l.writeConfig(t, settings{})
	db := filepath.Join(l.Root, boltFullID, "meta.db")
	if err := os.MkdirAll(filepath.Dir(db), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db, bytes.Repeat([]byte("not a bolt database\n"), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startOn(t, l)

	var p plugin
	if !waitFor(bootTimeout, func() bool {
		p = d.plugins(t)[boltID]
		return p.State == "failed"
	}) {
		t.Fatalf("containerd plugins ls: bolt %+v, want failed", p)
	}
	out := mustRun(t, containerdBin, "-c", d.Config, "-a", d.Socket, "plugins", "ls")
	if !strings.Contains(out, db) {
		t.Errorf("containerd plugins ls does not name %s:\n%s", db, out)
	}
	for _, c := range ctrTools(t) {
		if row := ctrPlugins(t, c, d)[boltID]; len(row) != 4 || row[3] != "error" {
			t.Errorf("%s plugins ls: bolt row %q, want status error", c.name, row)
		}
		c.run(t, d, "version")
		start := time.Now()
		r := run(c.path, "--address", d.Socket, "namespaces", "ls")
		if r.Err == nil {
			t.Errorf("%s namespaces ls with bolt failed: succeeded, want an error", c.name)
		}
		t.Logf("%s namespaces ls: %s after %v", c.name, strings.TrimSpace(r.Stderr), time.Since(start))
	}

	families := scrape(t, d.MetricsAddr)
	if v := metricValue(t, families, "corral_plugin_up", boltID); v != 0 {
		t.Errorf(`corral_plugin_up{plugin="bolt"} = %v, want 0`, v)
	}
	for _, m := range pluginSeries(families, "corral_plugin_state", boltID) {
		want := 0.0
		if labelsOf(m)["state"] == "failed" {
			want = 1
		}
		if got := m.GetGauge().GetValue(); got != want {
			t.Errorf("corral_plugin_state%v = %v, want %v", labelsOf(m), got, want)
		}
	}
	if !d.running() {
		t.Errorf("daemon exited")
	}
}
