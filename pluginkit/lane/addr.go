package lane

import "net"

// Addr is the address of a plugin process's HTTP/2 socket, with the path of
// its lane socket. String and Network are those of the HTTP/2 socket.
type Addr struct {
	net.Addr
	// Lane is the path of the lane socket; empty when the process has none.
	Lane string
}

// LaneOf returns the lane socket path of addr, or "" when it has none.
func LaneOf(addr net.Addr) string {
	if a, ok := addr.(*Addr); ok {
		return a.Lane
	}
	return ""
}
