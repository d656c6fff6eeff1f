// Package integration tests the containerd binary end to end: it builds the
// binary, starts daemons on temporary roots and sockets, and drives them with
// Debian's ctr 1.6, ctr 2.4.2, the containerd Go client and plain HTTP. The
// tests need root and run only with -test.root.
package integration
