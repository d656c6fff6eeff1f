package sidebyside

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat. Linux has
// reported USER_HZ as 100 on every architecture Go supports for decades.
const clockTick = 10 * time.Millisecond

// procStat is what the benchmark reads from one /proc/<pid>/stat.
type procStat struct {
	pid  int
	ppid int
	comm string
	cpu  time.Duration // utime + stime
}

// readStat parses /proc/<pid>/stat.
func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	return parseStat(pid, data)
}

// parseStat parses the text of /proc/<pid>/stat. The command name is in
// parentheses and may itself hold spaces and parentheses, so the fields
// are counted from the last ')'.
func parseStat(pid int, data []byte) (procStat, error) {
	open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return procStat{}, fmt.Errorf("parse stat of pid %d: no command name", pid)
	}
	// After the name: state(3) ppid(4) ... utime(14) stime(15).
	fields := bytes.Fields(data[end+1:])
	if len(fields) < 13 {
		return procStat{}, fmt.Errorf("parse stat of pid %d: %d fields", pid, len(fields)+2)
	}
	var nums [3]int64
	for i, f := range []int{1, 11, 12} {
		n, err := strconv.ParseInt(string(fields[f]), 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("parse stat of pid %d: field %d: %w", pid, f+3, err)
		}
		nums[i] = n
	}
	return procStat{
		pid:  pid,
		ppid: int(nums[0]),
		comm: string(data[open+1 : end]),
		cpu:  time.Duration(nums[1]+nums[2]) * clockTick,
	}, nil
}

// CPU is the processor time a daemon's processes have used, split into the
// daemon process itself and its descendants (plugins, shims).
type CPU struct {
	Daemon   time.Duration
	Children map[int]time.Duration // by pid
}

// Total is the daemon's time plus its descendants'.
func (c CPU) Total() time.Duration {
	t := c.Daemon
	for _, d := range c.Children {
		t += d
	}
	return t
}

// ChildTotal is the time of the descendants alone.
func (c CPU) ChildTotal() time.Duration {
	return c.Total() - c.Daemon
}

// Sub returns the time used between before and c. A descendant that is
// new in c counts from zero; one that exited in between is lost, which the
// workloads avoid by not restarting anything.
func (c CPU) Sub(before CPU) CPU {
	out := CPU{Daemon: c.Daemon - before.Daemon, Children: make(map[int]time.Duration)}
	for pid, d := range c.Children {
		out.Children[pid] = d - before.Children[pid]
	}
	return out
}

// Add returns the sum of c and o, process by process.
func (c CPU) Add(o CPU) CPU {
	out := CPU{Daemon: c.Daemon + o.Daemon, Children: make(map[int]time.Duration)}
	for pid, d := range c.Children {
		out.Children[pid] += d
	}
	for pid, d := range o.Children {
		out.Children[pid] += d
	}
	return out
}

// ReadCPU sums utime and stime of pid and of every live descendant of pid.
func ReadCPU(pid int) (CPU, error) {
	root, err := readStat(pid)
	if err != nil {
		return CPU{}, err
	}
	all, err := allStats()
	if err != nil {
		return CPU{}, err
	}
	cpu := CPU{Daemon: root.cpu, Children: make(map[int]time.Duration)}
	for _, s := range all {
		if s.pid != pid && descends(all, s, pid) {
			cpu.Children[s.pid] = s.cpu
		}
	}
	return cpu, nil
}

// allStats reads the stat of every process; processes that exit while it
// reads are skipped.
func allStats() (map[int]procStat, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	out := make(map[int]procStat, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if s, err := readStat(pid); err == nil {
			out[pid] = s
		}
	}
	return out, nil
}

// descends reports whether s has ancestor among its parents in all.
func descends(all map[int]procStat, s procStat, ancestor int) bool {
	for range len(all) {
		if s.ppid == ancestor {
			return true
		}
		parent, ok := all[s.ppid]
		if !ok {
			return false
		}
		s = parent
	}
	return false
}

// LoadAverage returns the 1-, 5- and 15-minute load averages of the
// machine, or "unknown".
func LoadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// processCPU is the CPU time of the descendants that share a label.
type processCPU struct {
	label string
	cpu   time.Duration
}

// byProcess returns the time of c's descendants grouped by what they are:
// our plugin processes by plugin id, anything else by command name. The
// processes must still be running.
func byProcess(c CPU) []processCPU {
	sums := make(map[string]time.Duration)
	for pid, d := range c.Children {
		sums[processLabel(pid)] += d
	}
	out := make([]processCPU, 0, len(sums))
	for label, d := range sums {
		out = append(out, processCPU{label: label, cpu: d})
	}
	slices.SortFunc(out, func(a, b processCPU) int { return strings.Compare(a.label, b.label) })
	return out
}

// processLabel names pid by the CORRAL_PLUGIN_ID in its environment, or
// by its command name.
func processLabel(pid int) string {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	if env, err := os.ReadFile(filepath.Join(dir, "environ")); err == nil {
		for _, kv := range bytes.Split(env, []byte{0}) {
			if id, ok := bytes.CutPrefix(kv, []byte("CORRAL_PLUGIN_ID=")); ok {
				return "plugin " + string(id)
			}
		}
	}
	if s, err := readStat(pid); err == nil {
		return s.comm
	}
	return "pid " + strconv.Itoa(pid)
}

// SelfCPU returns the user and system time this process has used.
func SelfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
