//go:build linux

package shim_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"corral.dev/pluginkit/testkit"
)

// shims are the runtimes compared, by the name ctr selects them with.
var shims = []struct {
	name, runtime, binary string
}{
	{"corral", "io.containerd.corral.v2", "containerd-shim-corral-v2"},
	{"runc-v2", "io.containerd.runc.v2", "containerd-shim-runc-v2"},
}

// bench is a daemon with the busybox image and both shims on its PATH.
type bench struct {
	d  *testkit.Containerd
	ns string
}

// setup builds our shim, starts containerd and imports busybox.
func setup(b *testing.B) *bench {
	b.Helper()
	testkit.RequiresRoot(b)
	dir := b.TempDir()
	src, err := filepath.Abs("../../shim")
	if err != nil {
		b.Fatal(err)
	}
	// Static, as the shim is shipped: no libc mapped into every shim.
	build := exec.Command("go", "build", "-C", src, "-o",
		filepath.Join(dir, "containerd-shim-corral-v2"),
		"./cmd/containerd-shim-corral-v2")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	if err != nil {
		b.Fatalf("build shim: %v\n%s", err, out)
	}
	image := testkit.BusyboxImage(b)
	be := &bench{d: testkit.StartContainerd(b, dir), ns: "bench"}
	b.Cleanup(func() {
		// ctr puts containers in the cgroup /<namespace>/<id>.
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + be.ns)
		for _, d := range append(dirs, "/sys/fs/cgroup/"+be.ns) {
			_ = syscall.Rmdir(d)
		}
	})
	be.ctr(b, "images", "import", "--base-name", "busybox", image)
	return be
}

// ctr runs ctr in the bench namespace, FIFOs in the daemon's directory.
func (be *bench) ctr(b *testing.B, args ...string) string {
	b.Helper()
	if len(args) > 0 && args[0] == "run" {
		fifos := []string{"run", "--fifo-dir", filepath.Join(be.d.Dir, "fifo")}
		args = append(fifos, args[1:]...)
	}
	out, err := be.d.Ctr(be.ns, args...)
	if err != nil {
		b.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// remove kills and deletes the containers ids.
func (be *bench) remove(b *testing.B, ids []string) {
	b.Helper()
	for _, id := range ids {
		_, _ = be.d.Ctr(be.ns, "tasks", "kill", "-s", "SIGKILL", id)
	}
	for _, id := range ids {
		for range 100 {
			if _, err := be.d.Ctr(be.ns, "tasks", "rm", id); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		be.ctr(b, "containers", "rm", id)
	}
}

// reportRounds reports, per shim, the median and 90th percentile of its
// rounds in ms, and the ratio of our median to the stock shim's.
func reportRounds(b *testing.B, ds map[string][]time.Duration) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	median := make(map[string]float64)
	for name, d := range ds {
		slices.Sort(d)
		median[name] = ms(d[len(d)/2])
		b.ReportMetric(median[name], name+"-median-ms")
		b.ReportMetric(ms(d[len(d)*9/10]), name+"-p90-ms")
	}
	b.ReportMetric(median["corral"]/median["runc-v2"], "ratio")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkRunRm times `ctr run --rm busybox /bin/true`, the two shims
// taking turns so that both see the same load.
func BenchmarkRunRm(b *testing.B) {
	be := setup(b)
	ds := make(map[string][]time.Duration)
	for _, s := range shims {
		be.ctr(b, "run", "--rm", "--runtime", s.runtime, "busybox:latest", "warm", "/bin/true")
	}
	for i := 0; b.Loop(); i++ {
		for _, s := range shims {
			start := time.Now()
			be.ctr(b, "run", "--rm", "--runtime", s.runtime, "busybox:latest",
				fmt.Sprintf("rm-%s-%d", s.name, i), "/bin/true")
			ds[s.name] = append(ds[s.name], time.Since(start))
		}
	}
	reportRounds(b, ds)
}

// BenchmarkRunRmCPU measures the CPU time containerd, the shim and runc
// spend on one `ctr run --rm busybox /bin/true`: the daemon runs in a
// cgroup of its own, which its shims and their runc invocations inherit
// (containers move to theirs). Unlike latency, it does not depend on what
// else the host runs.
func BenchmarkRunRmCPU(b *testing.B) {
	be := setup(b)
	usage := be.cpuCgroup(b)
	ds := make(map[string][]time.Duration)
	for _, s := range shims {
		be.ctr(b, "run", "--rm", "--runtime", s.runtime, "busybox:latest", "warm", "/bin/true")
	}
	for i := 0; b.Loop(); i++ {
		for _, s := range shims {
			before := usage()
			be.ctr(b, "run", "--rm", "--runtime", s.runtime, "busybox:latest",
				fmt.Sprintf("cpu-%s-%d", s.name, i), "/bin/true")
			// containerd cleans up after the shim exits, off ctr's path.
			time.Sleep(300 * time.Millisecond)
			ds[s.name] = append(ds[s.name], usage()-before)
		}
	}
	reportRounds(b, ds)
}

// cpuCgroup moves the daemon into a new cpu accounting cgroup and returns
// a reader of its usage; the cgroup is removed when b ends.
func (be *bench) cpuCgroup(b *testing.B) func() time.Duration {
	b.Helper()
	name := fmt.Sprintf("corral-bench-%d", os.Getpid())
	dir, file := "/sys/fs/cgroup/"+name, "cpu.stat" // cgroup v2
	if _, err := os.Stat("/sys/fs/cgroup/cpuacct"); err == nil {
		dir, file = "/sys/fs/cgroup/cpuacct/"+name, "cpuacct.usage"
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	pid := strconv.Itoa(be.d.Pid())
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(pid), 0); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// Hand every process back to the parent so the cgroup can go.
		data, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		for _, p := range strings.Fields(string(data)) {
			_ = os.WriteFile(filepath.Join(filepath.Dir(dir), "cgroup.procs"), []byte(p), 0)
		}
		_ = syscall.Rmdir(dir)
	})
	return func() time.Duration {
		data, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			b.Fatal(err)
		}
		fields := strings.Fields(string(data))
		if file == "cpu.stat" { // usage_usec N ...
			n, _ := strconv.ParseInt(fields[1], 10, 64)
			return time.Duration(n) * time.Microsecond
		}
		n, _ := strconv.ParseInt(fields[0], 10, 64)
		return time.Duration(n)
	}
}

// BenchmarkStart20 times starting 20 containers at once until all run,
// the two shims taking turns.
func BenchmarkStart20(b *testing.B) {
	const n = 20
	be := setup(b)
	ds := make(map[string][]time.Duration)
	for round := 0; b.Loop(); round++ {
		for _, s := range shims {
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("s20-%s-%d-%d", s.name, round, i)
			}
			start := time.Now()
			var wg sync.WaitGroup
			for _, id := range ids {
				wg.Go(func() {
					be.ctr(b, "run", "-d", "--runtime", s.runtime, "busybox:latest", id,
						"sleep", "1000")
				})
			}
			wg.Wait()
			ds[s.name] = append(ds[s.name], time.Since(start))

			b.StopTimer()
			be.remove(b, ids)
			b.StartTimer()
		}
	}
	reportRounds(b, ds)
}

// BenchmarkMemory reports each shim's RSS and PSS per container with ten
// containers running.
func BenchmarkMemory(b *testing.B) {
	const n = 10
	be := setup(b)
	for _, s := range shims {
		b.Run(s.name, func(b *testing.B) {
			ids := make([]string, n)
			for i := range ids {
				ids[i] = fmt.Sprintf("mem-%s-%d", s.name, i)
				be.ctr(b, "run", "-d", "--runtime", s.runtime, "busybox:latest", ids[i],
					"sleep", "1000")
			}
			defer be.remove(b, ids)
			time.Sleep(5 * time.Second) // let the shims settle

			var rss, pss float64
			for b.Loop() {
				rss, pss = 0, 0
				for _, id := range ids {
					pid, err := shimOf(s.binary, be.ns, id)
					if err != nil {
						b.Fatal(err)
					}
					r, p, err := rollup(pid)
					if err != nil {
						b.Fatal(err)
					}
					rss += r
					pss += p
				}
			}
			b.ReportMetric(rss/n/1024, "RSS-MiB/container")
			b.ReportMetric(pss/n/1024, "PSS-MiB/container")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// shimOf finds the long-lived shim binary serving id in ns.
func shimOf(binary, ns, id string) (int, error) {
	matches, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range matches {
		data, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if filepath.Base(args[0]) != binary || !slices.Contains(args, id) ||
			!slices.Contains(args, ns) || slices.Contains(args, "start") {
			continue
		}
		return strconv.Atoi(filepath.Base(filepath.Dir(m)))
	}
	return 0, fmt.Errorf("no %s for %s/%s", binary, ns, id)
}

// rollup reads Rss and Pss, in KiB, from /proc/<pid>/smaps_rollup.
func rollup(pid int) (rss, pss float64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read smaps_rollup: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(fields[1], 64)
		switch fields[0] {
		case "Rss:":
			rss = v
		case "Pss:":
			pss = v
		}
	}
	return rss, pss, sc.Err()
}
