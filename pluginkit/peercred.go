package pluginkit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// PeerCredentials returns transport credentials for a plugin's server that
// accept a connection only from the process that started the plugin (the
// supervisor), running as the same user. The socket's 0600 mode keeps other
// users out; this check keeps out other processes of the same user.
func PeerCredentials() credentials.TransportCredentials {
	return peerCreds{}
}

type peerCreds struct{}

// peerInfo is the AuthInfo of a connection that passed the check.
type peerInfo struct {
	credentials.CommonAuthInfo
	Pid int32
}

func (peerInfo) AuthType() string { return "peercred" }

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	pid, err := checkPeer(c)
	if err != nil {
		return nil, nil, err
	}
	info := peerInfo{Pid: pid}
	info.SecurityLevel = credentials.NoSecurity
	return c, info, nil
}

// checkPeer returns the pid of c's peer when it is the supervisor: the
// parent of this process, running as the same user. Every server of a plugin
// runs it on each connection it accepts.
func checkPeer(c net.Conn) (int32, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, fmt.Errorf("peer check: %T is not a unix connection", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("peer check: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("peer check: %w", err)
	}
	if credErr != nil {
		return 0, fmt.Errorf("peer check: read peer credentials: %w", credErr)
	}
	if int(cred.Uid) != os.Geteuid() || int(cred.Pid) != os.Getppid() {
		return 0, fmt.Errorf("peer check: pid %d uid %d is not the supervisor: %w",
			cred.Pid, cred.Uid, errPeerRefused)
	}
	return cred.Pid, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peer credentials are for plugin servers only")
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (p peerCreds) Clone() credentials.TransportCredentials { return p }

func (peerCreds) OverrideServerName(string) error { return nil }

var errPeerRefused = errors.New("connection refused")
