package placement

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Place pins every thread of this process to the CPUs setting picks from
// the host's, and records the host's CPUs in the environment (EnvHostCPUs)
// for processes started later. It returns the host's CPUs and the daemon's
// (nil when setting leaves the affinity alone). Place is idempotent: a
// re-executed daemon finds the host's CPUs in its environment and picks the
// same set again.
func Place(setting string) (host, cpus []int, err error) {
	if host, err = HostCPUs(); err != nil {
		return nil, nil, err
	}
	if cpus, err = Pick(setting, host); err != nil {
		return nil, nil, err
	}
	if err := os.Setenv(EnvHostCPUs, FormatList(host)); err != nil {
		return nil, nil, err
	}
	if cpus == nil {
		return host, nil, nil
	}
	return host, cpus, pinProcess(cpus)
}

// HostCPUs returns the CPUs the daemon was started with: those EnvHostCPUs
// names, or else those the calling thread may run on.
func HostCPUs() ([]int, error) {
	if v, ok := os.LookupEnv(EnvHostCPUs); ok {
		cpus, err := ParseList(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", EnvHostCPUs, err)
		}
		return cpus, nil
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("read CPU affinity: %w", err)
	}
	var cpus []int
	for c := 0; c <= maxCPU; c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// pinProcess sets the affinity of every thread of this process. Threads
// made meanwhile inherit the mask of the thread making them, which may not
// have had it yet, so the threads are listed again until a pass finds none
// new.
func pinProcess(cpus []int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	done := make(map[int]bool)
	for {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("list threads: %w", err)
		}
		fresh := 0
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || done[tid] {
				continue
			}
			fresh++
			err = unix.SchedSetaffinity(tid, &set)
			if err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("set CPU affinity of thread %d to %s: %w", tid, FormatList(cpus), err)
			}
			done[tid] = true
		}
		if fresh == 0 {
			return nil
		}
	}
}
