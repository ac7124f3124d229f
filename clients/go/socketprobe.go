package computesdk

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
)

// systemSocket is where a daemon run by root (a system service) listens.
const systemSocket = "/run/computesdk/computesdkd.sock"

// ErrSocketPermissionDenied is the client's own reason (code PermissionDenied)
// when this user may not connect to the daemon's Unix socket: the daemon
// never sends it.
var ErrSocketPermissionDenied = &Error{Reason: "SOCKET_PERMISSION_DENIED"}

// probeTimeout bounds the probe; a daemon slower than this to accept is left to
// Connect's own timeout.
const probeTimeout = 2 * time.Second

// probeSocket fails at once, saying why, when nothing can answer at a Unix
// socket: no file, a stale file nobody listens on, or a socket this user may
// not connect to. Any other outcome (it accepts; it is slow to, as a busy
// daemon may be; another error) is left to the connection. isDefault: the path
// is this user's default, not one from WithSocket or $COMPUTESDK_SOCKET. The
// same rules and words as the Python and TypeScript clients.
func probeSocket(path string, isDefault bool) error {
	// A directory or a plain file refuses a connect like a stale socket does: name it.
	if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeSocket == 0 {
		return daemonUnreachable(path + " is not a socket (is it computesdkd's --socket?)")
	}
	conn, err := net.DialTimeout("unix", path, probeTimeout)
	if err == nil {
		_ = conn.Close()
		return nil
	}
	switch {
	case errors.Is(err, syscall.ENOENT):
		why := "computesdkd is not running: no socket at " + path
		if isDefault {
			why += elsewhere()
		}
		return daemonUnreachable(why)
	case errors.Is(err, syscall.ECONNREFUSED):
		return daemonUnreachable("computesdkd is not running: " + path + " is a stale socket (nothing listens on it)")
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return &Error{Code: codes.PermissionDenied, Reason: ErrSocketPermissionDenied.Reason, Message: fmt.Sprintf(
			"permission denied on %s (uid %d): the daemon's socket is its owner's only (mode 0600, in a 0700 directory). "+
				"Run as that user (for a system daemon, root), or reach its network listener with --address and a token",
			path, os.Geteuid())}
	}
	return nil
}

// elsewhere: a non-root user's default is under their own runtime dir, so a
// system daemon's socket is not where they look: say so, rather than only that
// nothing runs.
func elsewhere() string {
	if os.Geteuid() == 0 {
		return "" // root's default is the system socket itself
	}
	// /run/computesdk is root's: a system daemon may well be there. Any other
	// failure to look: none is.
	if _, err := os.Stat(systemSocket); err != nil && !errors.Is(err, syscall.EACCES) && !errors.Is(err, syscall.EPERM) {
		return ""
	}
	return fmt.Sprintf(" (the default for uid %d; a system daemon would listen on %s, which only root may use: "+
		"run as root, set COMPUTESDK_SOCKET, or use --address with a token)", os.Geteuid(), systemSocket)
}
