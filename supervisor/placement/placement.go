// Package placement decides which CPUs the daemon's processes run on.
//
// Every routed call hands work from the supervisor to a plugin process and
// back. When those processes sit on different CPUs, each hand-over wakes a
// CPU from idle, which on a virtual machine is an interrupt through the
// hypervisor; when they share a CPU, the kernel switches from the writer to
// the reader on the spot. On 2 vCPUs, keeping the supervisor and its plugins
// on one CPU made `ctr content get` (one call per 32 KiB) 10-20% faster and
// Namespaces.List among 16 callers 15% faster, with streaming reads and
// ingests unchanged. `[plugin_host] cpu_affinity` picks the set: "auto" (a
// quarter of the CPUs the daemon was started with, at least one, the last
// ones), "all" (leave the affinity alone), or a CPU list such as "2-3,6".
//
// The set the daemon was started with is kept in the environment
// (EnvHostCPUs) for the daemon's re-exec and for plugins: whatever a plugin
// starts on behalf of containers (shims) belongs on the host's CPUs, not
// the daemon's.
//
// TODO(runtime-linux): start shims on the host's CPUs (EnvHostCPUs), or
// every container inherits the daemon's share; no plugin starts shims yet.
package placement

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// EnvHostCPUs names the variable that holds, in CPU list form, the CPUs the
// daemon was started with.
const EnvHostCPUs = "CORRAL_HOST_CPUS"

// The values of cpu_affinity besides CPU lists.
const (
	Auto = "auto"
	All  = "all"
)

// maxCPU is the highest CPU number a list may name: the size of the
// affinity masks this package sets.
const maxCPU = 1023

// Check reports whether setting is a value cpu_affinity takes.
func Check(setting string) error {
	switch setting {
	case Auto, All:
		return nil
	}
	_, err := ParseList(setting)
	return err
}

// Pick returns the CPUs the daemon runs on under setting, given the CPUs
// host it was started with (sorted); nil means leave the affinity alone.
func Pick(setting string, host []int) ([]int, error) {
	switch setting {
	case All:
		return nil, nil
	case Auto:
		if len(host) == 0 {
			return nil, nil
		}
		return slices.Clone(host[len(host)-AutoCount(len(host)):]), nil
	}
	cpus, err := ParseList(setting)
	if err != nil {
		return nil, err
	}
	for _, c := range cpus {
		if _, ok := slices.BinarySearch(host, c); !ok {
			return nil, fmt.Errorf("CPU %d is not one the daemon may run on (%s)", c, FormatList(host))
		}
	}
	return cpus, nil
}

// AutoCount is how many of n CPUs "auto" keeps: a quarter, at least one.
func AutoCount(n int) int {
	return max(1, n/4)
}

// ParseList parses a CPU list as the kernel writes them ("0-3,8,10-11")
// into sorted, distinct CPU numbers.
func ParseList(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("empty CPU list")
	}
	var cpus []int
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := parseCPU(lo)
		if err != nil {
			return nil, fmt.Errorf("CPU list %q: %w", s, err)
		}
		last := first
		if isRange {
			if last, err = parseCPU(hi); err != nil {
				return nil, fmt.Errorf("CPU list %q: %w", s, err)
			}
			if last < first {
				return nil, fmt.Errorf("CPU list %q: range %s runs backwards", s, part)
			}
		}
		for c := first; c <= last; c++ {
			cpus = append(cpus, c)
		}
	}
	slices.Sort(cpus)
	return slices.Compact(cpus), nil
}

func parseCPU(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > maxCPU {
		return 0, fmt.Errorf("%q is not a CPU number (0 to %d)", s, maxCPU)
	}
	return n, nil
}

// FormatList writes sorted CPU numbers as a CPU list, runs as ranges.
func FormatList(cpus []int) string {
	var b strings.Builder
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(cpus[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(cpus[j]))
		}
		i = j + 1
	}
	return b.String()
}
