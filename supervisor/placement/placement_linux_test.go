package placement

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// envHelper makes the test binary run helperPlace instead of the tests:
// placing changes the whole process, so it happens in a child.
const envHelper = "PLACEMENT_TEST_SETTING"

func TestMain(m *testing.M) {
	if setting, ok := os.LookupEnv(envHelper); ok {
		if err := helperPlace(setting); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helperPlace places this process twice (as a re-executed daemon does),
// with threads locked before and after, and prints each thread's CPUs,
// the value of EnvHostCPUs and GOMAXPROCS.
func helperPlace(setting string) error {
	var wg sync.WaitGroup
	release := make(chan struct{})
	lockThreads := func(n int) {
		for range n {
			ready := make(chan struct{})
			wg.Go(func() {
				runtime.LockOSThread()
				close(ready)
				<-release
			})
			<-ready
		}
	}
	lockThreads(6)
	for range 2 {
		if _, _, err := Place(setting); err != nil {
			return err
		}
	}
	lockThreads(2)
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &set); err != nil {
			return err
		}
		var cpus []int
		for c := 0; c <= maxCPU; c++ {
			if set.IsSet(c) {
				cpus = append(cpus, c)
			}
		}
		fmt.Printf("thread %d %s\n", tid, FormatList(cpus))
	}
	fmt.Printf("host %s\n", os.Getenv(EnvHostCPUs))
	close(release)
	wg.Wait()
	return nil
}

// place runs helperPlace in a child with env added and returns the CPUs of
// each of its threads and the host CPUs it recorded.
func place(t *testing.T, setting string, env ...string) (threads map[string]string, host string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, envHelper+"="+setting)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("place %q: %v\n%s", setting, err, out)
	}
	threads = make(map[string]string)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "thread":
			threads[f[1]] = f[2]
		case len(f) == 2 && f[0] == "host":
			host = f[1]
		default:
			t.Fatalf("place %q: unexpected line %q", setting, line)
		}
	}
	return threads, host
}

func TestPlacePinsEveryThread(t *testing.T) {
	if _, ok := os.LookupEnv(EnvHostCPUs); ok {
		t.Skipf("%s is set in the test's environment", EnvHostCPUs)
	}
	host, err := HostCPUs()
	if err != nil {
		t.Fatal(err)
	}
	hostList := FormatList(host)
	want := FormatList(host[len(host)-AutoCount(len(host)):])
	threads, recorded := place(t, Auto)
	if recorded != hostList {
		t.Errorf("recorded host CPUs %q, want %q", recorded, hostList)
	}
	if len(threads) < 8 {
		t.Errorf("only %d threads listed, want at least the 8 locked ones", len(threads))
	}
	for tid, cpus := range threads {
		if cpus != want {
			t.Errorf("thread %s runs on CPUs %s, want %s", tid, cpus, want)
		}
	}

	// "all" leaves every thread on the host's CPUs.
	threads, _ = place(t, All)
	for tid, cpus := range threads {
		if cpus != hostList {
			t.Errorf("with %q, thread %s runs on CPUs %s, want %s", All, tid, cpus, hostList)
		}
	}

	// A re-executed daemon picks from the CPUs it was started with, not
	// from those it pinned itself to.
	last := strconv.Itoa(host[len(host)-1])
	threads, recorded = place(t, Auto, EnvHostCPUs+"="+hostList)
	for tid, cpus := range threads {
		if cpus != want {
			t.Errorf("re-executed: thread %s runs on CPUs %s, want %s", tid, cpus, want)
		}
	}
	if recorded != hostList {
		t.Errorf("re-executed: recorded host CPUs %q, want %q", recorded, hostList)
	}

	// An explicit list is taken as it is.
	threads, _ = place(t, last)
	for tid, cpus := range threads {
		if cpus != last {
			t.Errorf("with %q, thread %s runs on CPUs %s", last, tid, cpus)
		}
	}
}

func TestPlaceRefusesForeignCPUs(t *testing.T) {
	host, err := HostCPUs()
	if err != nil {
		t.Fatal(err)
	}
	outside := strconv.Itoa(host[len(host)-1] + 1)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envHelper+"="+outside)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is not one the daemon may run on") {
		t.Errorf("placing on CPU %s, outside %s: %v\n%s", outside, FormatList(host), err, out)
	}
}
