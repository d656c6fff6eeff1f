// Package gotune holds the Go runtime settings the daemon's processes run
// with.
//
// Every call crosses the supervisor and a plugin, and each of those Go
// processes parks between calls. When a Go process has no work, its monitor
// thread (sysmon) goes into a deep sleep that the next system call ends;
// it then polls every 20 µs for a while. On a daemon that answers calls one
// after another, that is a wake-up or more per call in each process: on 2
// CPUs, keeping sysmon out of the deep sleep took 22-27% off the
// supervisor's and bolt's CPU per 32 KiB read and 8% off a `ctr content
// get`. The runtime keeps sysmon awake while a scheduler trace is due, so a
// trace period of 24 days does it. The traces cost little: a "SCHED" line
// on stderr every 24 days per process, and at its start when the host has
// been up longer than that (the runtime counts from boot), and a scheduler
// dump after a fatal panic's stack. An idle process pays sysmon's 10 ms
// polling, about 100 wake-ups a second: on the same machine the idle
// daemon (three processes) used 0.7% of one CPU against none.
// `[plugin_host] sysmon_awake = false` turns it off.
package gotune

import (
	"os"
	"strings"
	"syscall"
)

// awakeSysmon is the GODEBUG setting that keeps sysmon out of deep sleep.
const awakeSysmon = "schedtrace=2147483647"

// GODEBUG returns the GODEBUG value for a process that inherits cur: cur
// with sysmon kept awake, or cur itself when it sets schedtrace, so that an
// operator's own setting wins.
func GODEBUG(cur string) string {
	for _, kv := range strings.Split(cur, ",") {
		if strings.HasPrefix(kv, "schedtrace=") {
			return cur
		}
	}
	if cur == "" {
		return awakeSysmon
	}
	return cur + "," + awakeSysmon
}

// Env returns the GODEBUG entry for a child process of this one, in
// os/exec's "KEY=value" form.
func Env() string {
	return "GODEBUG=" + GODEBUG(os.Getenv("GODEBUG"))
}

// Reexec replaces the running process with exe under the GODEBUG value
// GODEBUG gives, unless it runs under it already; the pid, arguments and
// the rest of the environment stay. It returns only when it had nothing to
// do or exec failed.
func Reexec(exe string) error {
	cur, set := os.LookupEnv("GODEBUG")
	want := GODEBUG(cur)
	if set && cur == want {
		return nil
	}
	env := make([]string, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	return syscall.Exec(exe, os.Args, append(env, "GODEBUG="+want))
}
