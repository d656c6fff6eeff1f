//go:build linux

package integration

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"corral.dev/pluginkit/testkit"
)

// cpusAllowed is the kernel's list of the CPUs a process or thread may run
// on, from the Cpus_allowed_list line of its status file under /proc (proc
// is "self", a pid, or "<pid>/task/<tid>").
func cpusAllowed(t *testing.T, proc string) string {
	t.Helper()
	status, err := os.ReadFile("/proc/" + proc + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no Cpus_allowed_list in /proc/%s/status", proc)
	return ""
}

// expandCPUs turns a kernel CPU list ("0-2,5") into CPU numbers.
func expandCPUs(t *testing.T, list string) []int {
	t.Helper()
	var cpus []int
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(lo)
		last := first
		if err == nil && isRange {
			last, err = strconv.Atoi(hi)
		}
		if err != nil {
			t.Fatalf("CPU list %q: %v", list, err)
		}
		for c := first; c <= last; c++ {
			cpus = append(cpus, c)
		}
	}
	return cpus
}

// checkThreadsOn checks that every thread of the daemon's processes may run
// on the CPUs want and no others, and that each plugin was told the host's
// CPUs (a kernel CPU list).
func checkThreadsOn(t *testing.T, d *daemon, want []int, host string) {
	t.Helper()
	pids := []int{d.Pid}
	for _, p := range d.plugins(t) {
		pids = append(pids, p.Pid)
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.Pid))
		if err != nil {
			t.Fatal(err)
		}
		if kv := "CORRAL_HOST_CPUS=" + host; !strings.Contains("\x00"+string(env)+"\x00", "\x00"+kv+"\x00") {
			t.Errorf("plugin %s (pid %d): no %s in its environment", p.ID, p.Pid, kv)
		}
	}
	for _, pid := range pids {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			got := cpusAllowed(t, fmt.Sprintf("%d/task/%s", pid, task.Name()))
			if !slices.Equal(expandCPUs(t, got), want) {
				t.Errorf("process %d, thread %s runs on CPUs %s, want %v", pid, task.Name(), got, want)
			}
		}
	}
}

// supervisorProcs is the supervisor's go_sched_gomaxprocs_threads.
func supervisorProcs(t *testing.T, d *daemon) float64 {
	t.Helper()
	for _, m := range scrape(t, d.MetricsAddr)["go_sched_gomaxprocs_threads"].GetMetric() {
		if _, ok := labelsOf(m)["plugin"]; !ok {
			return m.GetGauge().GetValue()
		}
	}
	t.Fatal("no go_sched_gomaxprocs_threads series of the supervisor")
	return 0
}

// TestCPUAffinity: [plugin_host] cpu_affinity puts every thread of the
// supervisor and its plugins, restarted ones too, on the CPUs it picks, and
// the Go runtimes size themselves to them.
func TestCPUAffinity(t *testing.T) {
	testkit.RequiresRoot(t)
	host := cpusAllowed(t, "self")
	cpus := expandCPUs(t, host)
	n := len(cpus)
	auto := cpus[n-max(1, n/4):]

	t.Run("auto", func(t *testing.T) {
		d := startDaemon(t, settings{})
		d.runningPlugin(t, boltID)
		checkThreadsOn(t, d, auto, host)
		if got := supervisorProcs(t, d); got != float64(len(auto)) {
			t.Errorf("the supervisor's GOMAXPROCS is %v on CPUs %v, want %d", got, auto, len(auto))
		}
	})
	t.Run("auto without re-exec", func(t *testing.T) {
		// Without sysmon_awake the supervisor does not re-execute itself:
		// its runtime notices the new affinity on its own.
		d := startDaemon(t, settings{ParkSysmon: true})
		d.runningPlugin(t, boltID)
		checkThreadsOn(t, d, auto, host)
		testkit.WaitFor(t, "the supervisor's GOMAXPROCS to follow its CPUs", func() bool {
			return supervisorProcs(t, d) == float64(len(auto))
		})
	})
	t.Run("list", func(t *testing.T) {
		first := cpus[:1]
		d := startDaemon(t, settings{CPUAffinity: strconv.Itoa(cpus[0])})
		old := d.runningPlugin(t, boltID)
		checkThreadsOn(t, d, first, host)
		mustRun(t, containerdBin, "-c", d.Config, "-a", d.Socket, "plugins", "restart", boltID)
		testkit.WaitFor(t, "a new bolt process", func() bool {
			p := d.plugins(t)[boltID]
			return p.State == "running" && p.Pid != old.Pid
		})
		checkThreadsOn(t, d, first, host)
		if got := supervisorProcs(t, d); got != 1 {
			t.Errorf("the supervisor's GOMAXPROCS is %v on one CPU", got)
		}
	})
	t.Run("all", func(t *testing.T) {
		d := startDaemon(t, settings{CPUAffinity: "all"})
		d.runningPlugin(t, boltID)
		checkThreadsOn(t, d, cpus, host)
		if got := supervisorProcs(t, d); got != float64(runtime.GOMAXPROCS(0)) {
			t.Errorf("the supervisor's GOMAXPROCS is %v, want the host's %d", got, runtime.GOMAXPROCS(0))
		}
	})
	t.Run("foreign CPU", func(t *testing.T) {
		l := newLayout(t)
		outside := cpus[n-1] + 1
		l.writeConfig(t, settings{CPUAffinity: strconv.Itoa(outside)})
		out := exitFailure(t, "-c", l.Config)
		want := fmt.Sprintf("plugin_host.cpu_affinity: CPU %d is not one the daemon may run on (%s)", outside, host)
		if !strings.Contains(out, want) {
			t.Errorf("daemon output does not say %q:\n%s", want, out)
		}
	})
}
