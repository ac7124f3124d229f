package computesdk_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	computesdk "github.com/computesdk/computesdk/clients/go"
)

// daemon is a real computesdkd that the suite owns and can restart.
//
// With COMPUTESDK_TEST_TLS=1 the suite's daemon also serves TLS on a free
// loopback port, with a CA and a server certificate (IP 127.0.0.1, DNS
// localhost) made here, and connect() reaches it there with an admin token of
// tenant "go-suite" made by the CLI. The harness's own cleanup and
// introspection keep using the Unix socket.
type daemon struct {
	root, socket string
	cmd          *exec.Cmd
	exited       chan struct{} // closed when cmd has ended

	// Set by enableTLS: the PEM files, the TCP port (kept across restarts) and
	// whether the daemon demands client certificates signed by tls.CA.
	tls         *tlsFiles
	port        int
	clientCerts bool
	// Set by enablePlaintext: TCP on port without TLS (--insecure-listen).
	plaintext bool
	// The admin token of tenant that connect() carries, once started over TCP.
	tenant, token string
}

var testDaemon *daemon

func TestMain(m *testing.M) {
	d, err := startDaemon()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot start computesdkd:", err)
		if d != nil {
			d.stop()
			d.unmountAll()
			d.dumpLog()
		}
		os.Exit(1)
	}
	testDaemon = d
	code := m.Run()
	d.finish(code == 0)
	os.Exit(code)
}

func daemonBinary() string {
	if b := os.Getenv("COMPUTESDKD"); b != "" {
		return b
	}
	abs, _ := filepath.Abs("../../.venv/bin/computesdkd")
	return abs
}

func cliBinary() string {
	if b := os.Getenv("COMPUTESDK_CLI"); b != "" {
		return b
	}
	abs, _ := filepath.Abs("../../.venv/bin/computesdk")
	return abs
}

func startDaemon() (*daemon, error) {
	d, err := newDaemon()
	if err != nil {
		return nil, err
	}
	if os.Getenv("COMPUTESDK_TEST_TLS") == "1" {
		if err := d.enableTLS(false); err != nil {
			return d, err
		}
	}
	return d, d.start()
}

// newDaemon makes the root of a daemon that is not started yet.
func newDaemon() (*daemon, error) {
	// Sandboxes' unprivileged init must be able to traverse to what the daemon
	// makes here, so the directory is 0711 and not under a private tmp.
	if err := os.MkdirAll("/var/tmp", 0o1777); err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("/var/tmp", "computesdk-go-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(root, 0o711); err != nil {
		return nil, err
	}
	return &daemon{root: root, socket: filepath.Join(root, "d.sock"), tenant: "go-suite"}, nil
}

// enableTLS makes the daemon serve TLS on TCP too, with certificates made in
// its root; clientCerts makes it require client certificates (mTLS).
func (d *daemon) enableTLS(clientCerts bool) error {
	files, err := writeTLSFiles(d.root)
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	d.tls, d.port, d.clientCerts = files, port, clientCerts
	return nil
}

// enablePlaintext makes the daemon serve plaintext TCP too (--insecure-listen).
func (d *daemon) enablePlaintext() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	d.port, d.plaintext = port, true
	return nil
}

// address is the TCP listener's host:port ("" with the socket only).
func (d *daemon) address() string {
	if d.port == 0 {
		return ""
	}
	return fmt.Sprintf("127.0.0.1:%d", d.port)
}

func (d *daemon) start() error {
	log, err := os.OpenFile(filepath.Join(d.root, "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	args := []string{"--socket", d.socket, "--state-dir", filepath.Join(d.root, "state"),
		"--log-format", "json", "--grace", "2", "--on-exit", "keep"}
	if d.tls != nil {
		args = append(args, "--listen", d.address(), "--tls-cert", d.tls.ServerCert, "--tls-key", d.tls.ServerKey)
		if d.clientCerts {
			args = append(args, "--tls-client-ca", d.tls.CA)
		}
	} else if d.plaintext {
		args = append(args, "--listen", d.address(), "--insecure-listen")
	}
	d.cmd = exec.Command(daemonBinary(), args...)
	d.cmd.Stdout, d.cmd.Stderr = log, log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.cmd.Start(); err != nil {
		d.cmd = nil
		return err
	}
	exited := make(chan struct{})
	d.exited = exited
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); close(exited) }(d.cmd)
	deadline := time.Now().Add(30 * time.Second)
	for !d.listening() {
		select {
		case <-exited:
			return fmt.Errorf("computesdkd exited: %v", d.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("computesdkd did not listen on %s %s", d.socket, d.address())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d.port != 0 && d.token == "" {
		// One token for the daemon's life: it outlives restarts (the daemon keeps tokens in its state).
		if d.token, err = d.createToken("admin", d.tenant); err != nil {
			return err
		}
	}
	return nil
}

func (d *daemon) listening() bool {
	c, err := net.Dial("unix", d.socket)
	if err != nil {
		return false
	}
	c.Close()
	if d.port == 0 {
		return true
	}
	c, err = net.Dial("tcp", d.address())
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// cli runs the computesdk command line on the admin socket and returns its stdout.
func (d *daemon) cli(args ...string) (string, error) {
	cmd := exec.Command(cliBinary(), append([]string{"--socket", d.socket}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("computesdk %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// createToken makes a token with the CLI; it prints the secret alone.
func (d *daemon) createToken(scope, tenant string) (string, error) {
	out, err := d.cli("token", "create", "--tenant", tenant, "--scope", scope)
	if err != nil {
		return "", err
	}
	token := strings.TrimSpace(out)
	if token == "" || strings.ContainsAny(token, " \n\t") {
		return "", fmt.Errorf("token create printed %q, not a token alone", out)
	}
	return token, nil
}

// connectOptions reach the daemon as the suite's clients do: over TCP (TLS,
// or plaintext) with the admin token when it listens there, else over the socket.
func (d *daemon) connectOptions() []computesdk.ConnectOption {
	if d.port == 0 {
		return []computesdk.ConnectOption{computesdk.WithSocket(d.socket)}
	}
	if d.plaintext {
		return []computesdk.ConnectOption{computesdk.WithAddress(d.address()), computesdk.WithInsecure(),
			computesdk.WithToken(d.token)}
	}
	opts := []computesdk.ConnectOption{computesdk.WithAddress(d.address()), computesdk.WithCA(d.tls.CA),
		computesdk.WithToken(d.token)}
	if d.clientCerts {
		opts = append(opts, computesdk.WithClientCert(d.tls.ClientCert, d.tls.ClientKey))
	}
	return opts
}

func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.exited
	d.cmd = nil
}

func (d *daemon) restart() error {
	d.stop()
	return d.start()
}

// finish destroys what the tests left, stops the daemon and removes its root
// (kept, with its log shown, when the tests failed).
func (d *daemon) finish(passed bool) {
	d.destroyLeftovers()
	d.stop()
	d.unmountAll()
	if !passed {
		d.dumpLog()
	} else {
		_ = os.RemoveAll(d.root)
	}
}

func (d *daemon) destroyLeftovers() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := computesdk.Connect(ctx, computesdk.WithSocket(d.socket))
	if err != nil {
		return
	}
	defer c.Close()
	for sb, err := range c.List(ctx) {
		if err != nil {
			return
		}
		_ = sb.Destroy(ctx)
	}
}

// unmountAll drops what the daemon keeps mounted under its state dir (the disk
// store, volumes), so that the directory can be removed.
func (d *daemon) unmountAll() {
	raw, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var mounts []string
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], d.root+"/") {
			mounts = append(mounts, f[1])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		_ = exec.Command("umount", "-l", m).Run()
	}
}

func (d *daemon) dumpLog() {
	b, _ := os.ReadFile(filepath.Join(d.root, "daemon.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	fmt.Fprintf(os.Stderr, "--- computesdkd log (tail) ---\n%s\n", b)
}

// connect is a client of the suite's daemon: over the socket, or over TLS with
// a token in TLS mode (COMPUTESDK_TEST_TLS=1).
func connect(t testing.TB) *computesdk.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := computesdk.Connect(ctx, testDaemon.connectOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
