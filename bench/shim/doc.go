// Package shim benchmarks corral's runc shim against containerd's own
// containerd-shim-runc-v2, both under Debian's containerd 1.6: the latency
// of `ctr run --rm`, the time to start 20 containers at once, and the
// shim's memory per container. The benchmarks are in the package's tests.
package shim
