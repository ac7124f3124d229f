package computesdk_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	computesdk "github.com/computesdk/computesdk/clients/go"
	errorsv1 "github.com/computesdk/computesdk/clients/go/api/errors/v1"
)

// Why Connect cannot reach the daemon over its Unix socket, said at once: no
// socket, a stale one, one that is root's, a non-root user's default.

const (
	// With it set, the test binary is the helper below, not the suite: run as
	// uid 65534, it connects (to $COMPUTESDK_TEST_SOCKET_PATH, else the
	// default) and prints what Connect returned.
	socketHelperEnv     = "COMPUTESDK_TEST_SOCKET_HELPER"
	socketHelperPathEnv = "COMPUTESDK_TEST_SOCKET_PATH"
	systemHint          = "(the default for uid 65534; a system daemon would listen on /run/computesdk/computesdkd.sock"
)

// The TestHelperProcess pattern, in init rather than a test: TestMain would
// start a daemon first, which a helper run as nobody neither needs nor can.
func init() {
	if os.Getenv(socketHelperEnv) != "1" {
		return
	}
	opts := []computesdk.ConnectOption{computesdk.WithConnectTimeout(5 * time.Second)}
	if s := os.Getenv(socketHelperPathEnv); s != "" {
		opts = append(opts, computesdk.WithSocket(s))
	}
	var out helperOutcome
	c, err := computesdk.Connect(context.Background(), opts...)
	var e *computesdk.Error
	switch {
	case err == nil:
		_ = c.Close()
		out.OK = true
	case errors.As(err, &e):
		out.Code, out.Reason, out.Message = e.Code.String(), e.Reason, e.Message
	default:
		out.Other = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
	os.Exit(0)
}

type helperOutcome struct {
	OK                    bool
	Code, Reason, Message string
	Other                 string
}

// connectAsNobody runs the helper as uid 65534 with none of the suite's
// COMPUTESDK_* settings (nor $XDG_RUNTIME_DIR) plus env.
func connectAsNobody(t *testing.T, socket string, env ...string) helperOutcome {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run the client as uid 65534")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv")
	}
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", nobodyBinary(t))
	cmd.Dir = "/"
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "COMPUTESDK_") && !strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") && !strings.HasPrefix(kv, "HOME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME=/nonexistent", socketHelperEnv+"=1", socketHelperPathEnv+"="+socket)
	cmd.Env = append(cmd.Env, env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("the helper as uid 65534: %v\n%s", err, stderr.String())
	}
	var out helperOutcome
	if err := json.Unmarshal(stdout, &out); err != nil {
		t.Fatalf("the helper printed %q: %v\n%s", stdout, err, stderr.String())
	}
	return out
}

// nobodyBinary is a copy of this test binary that uid 65534 may run (go test
// keeps its own under a directory only root may enter).
func nobodyBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("/var/tmp", "computesdk-go-helper-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "helper.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestStaleSocketIsNamedAsStale(t *testing.T) {
	clearEnv(t)
	path := filepath.Join(t.TempDir(), "stale.sock")
	// Listens, then closes without removing the file: what a killed daemon leaves.
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	_, err = computesdk.Connect(context.Background(), computesdk.WithSocket(path), computesdk.WithConnectTimeout(30*time.Second))
	var e *computesdk.Error
	if !errors.As(err, &e) || !errors.Is(err, computesdk.ErrDaemonUnreachable) || e.Code != codes.Unavailable {
		t.Fatalf("want DAEMON_UNREACHABLE, got %v", err)
	}
	if want := "computesdkd is not running: " + path + " is a stale socket (nothing listens on it)"; e.Message != want {
		t.Fatalf("message %q, want %q", e.Message, want)
	}
}

func TestNoSocketSaysNotRunning(t *testing.T) {
	clearEnv(t)
	path := filepath.Join(t.TempDir(), "none.sock")
	_, err := computesdk.Connect(context.Background(), computesdk.WithSocket(path))
	var e *computesdk.Error
	if !errors.As(err, &e) || !errors.Is(err, computesdk.ErrDaemonUnreachable) || e.Code != codes.Unavailable {
		t.Fatalf("want DAEMON_UNREACHABLE, got %v", err)
	}
	// A path given explicitly gets no hint about the default.
	if want := "computesdkd is not running: no socket at " + path; e.Message != want {
		t.Fatalf("message %q, want %q", e.Message, want)
	}
}

func TestSocketThatAcceptsIsLeftToConnect(t *testing.T) {
	clearEnv(t)
	// Accepts and never answers, as a daemon too busy to: the probe passes,
	// Connect waits out its own timeout.
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "silent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	_, err = computesdk.Connect(context.Background(), computesdk.WithSocket(l.Addr().String()),
		computesdk.WithConnectTimeout(500*time.Millisecond))
	var e *computesdk.Error
	if !errors.As(err, &e) || !errors.Is(err, computesdk.ErrDaemonUnreachable) || !strings.HasPrefix(e.Message, "cannot reach computesdkd at ") {
		t.Fatalf("want the normal path's DAEMON_UNREACHABLE, got %v", err)
	}
}

func TestSocketOfTheLiveDaemonConnects(t *testing.T) {
	clearEnv(t)
	c, err := computesdk.Connect(context.Background(), computesdk.WithSocket(testDaemon.socket))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestSocketPermissionDeniedIsNamed(t *testing.T) {
	// The suite's daemon is root's: its socket is root's only.
	out := connectAsNobody(t, testDaemon.socket)
	if out.Reason != computesdk.ErrSocketPermissionDenied.Reason || out.Code != codes.PermissionDenied.String() {
		t.Fatalf("want PermissionDenied SOCKET_PERMISSION_DENIED, got %+v", out)
	}
	if !strings.HasPrefix(out.Message, "permission denied on "+testDaemon.socket+" (uid 65534): ") || strings.Contains(out.Message, "not running") {
		t.Fatalf("message %q", out.Message)
	}
	// errors.Is matches it by its reason, and by its code.
	err := error(&computesdk.Error{Code: codes.PermissionDenied, Reason: out.Reason, Message: out.Message})
	if !errors.Is(err, computesdk.ErrSocketPermissionDenied) || !errors.Is(err, computesdk.ErrPermissionDenied) {
		t.Fatal("errors.Is does not match the sentinels")
	}
}

func TestNonRootDefaultSocketIsExplained(t *testing.T) {
	out := connectAsNobody(t, "")
	if out.Reason != "DAEMON_UNREACHABLE" ||
		!strings.HasPrefix(out.Message, "computesdkd is not running: no socket at /tmp/computesdk-65534/computesdk/computesdkd.sock") {
		t.Fatalf("got %+v", out)
	}
	// The hint is for when the system daemon's socket cannot even be looked
	// for (its directory is root's); with no /run/computesdk there is none.
	hidden := false
	if fi, err := os.Stat("/run/computesdk"); err == nil {
		hidden = fi.IsDir() && fi.Mode().Perm()&0o001 == 0
	}
	if strings.Contains(out.Message, systemHint) != hidden {
		t.Fatalf("hint expected: %v; message %q", hidden, out.Message)
	}
	// The default under $XDG_RUNTIME_DIR is still the default.
	xdg := connectAsNobody(t, "", "XDG_RUNTIME_DIR=/nonexistent-xdg")
	if !strings.HasPrefix(xdg.Message, "computesdkd is not running: no socket at /nonexistent-xdg/computesdk/computesdkd.sock") ||
		strings.Contains(xdg.Message, systemHint) != hidden {
		t.Fatalf("under XDG_RUNTIME_DIR: %+v", xdg)
	}
	// A socket from $COMPUTESDK_SOCKET or WithSocket gets none.
	byEnv := connectAsNobody(t, "", "COMPUTESDK_SOCKET=/nonexistent-env/d.sock")
	if byEnv.Message != "computesdkd is not running: no socket at /nonexistent-env/d.sock" {
		t.Fatalf("from COMPUTESDK_SOCKET: %+v", byEnv)
	}
	byOption := connectAsNobody(t, "/nonexistent/d.sock")
	if byOption.Message != "computesdkd is not running: no socket at /nonexistent/d.sock" {
		t.Fatalf("from WithSocket: %+v", byOption)
	}
}

// The probe's reasons are the client's own: the daemon never sends them.
func TestSocketReasonsAreNotInTheEnum(t *testing.T) {
	for _, r := range []string{computesdk.ErrDaemonUnreachable.Reason, computesdk.ErrSocketPermissionDenied.Reason} {
		if _, ok := errorsv1.Reason_value["REASON_"+r]; ok {
			t.Errorf("%s is in the enum now: give it a sentinel from there", r)
		}
	}
}
