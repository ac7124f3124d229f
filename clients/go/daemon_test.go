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
type daemon struct {
	root, socket string
	cmd          *exec.Cmd
}

var testDaemon *daemon

func TestMain(m *testing.M) {
	d, err := startDaemon()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot start computesdkd:", err)
		os.Exit(1)
	}
	testDaemon = d
	code := m.Run()
	d.destroyLeftovers()
	d.stop()
	d.unmountAll()
	if code != 0 {
		d.dumpLog()
	} else {
		_ = os.RemoveAll(d.root)
	}
	os.Exit(code)
}

func daemonBinary() string {
	if b := os.Getenv("COMPUTESDKD"); b != "" {
		return b
	}
	abs, _ := filepath.Abs("../../.venv/bin/computesdkd")
	return abs
}

func startDaemon() (*daemon, error) {
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
	d := &daemon{root: root, socket: filepath.Join(root, "d.sock")}
	return d, d.start()
}

func (d *daemon) start() error {
	log, err := os.OpenFile(filepath.Join(d.root, "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	d.cmd = exec.Command(daemonBinary(), "--socket", d.socket, "--state-dir", filepath.Join(d.root, "state"),
		"--log-format", "json", "--grace", "2", "--on-exit", "keep")
	d.cmd.Stdout, d.cmd.Stderr = log, log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := d.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", d.socket); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("computesdkd did not listen on %s", d.socket)
}

func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	_ = d.cmd.Wait()
	d.cmd = nil
}

func (d *daemon) restart() error {
	d.stop()
	return d.start()
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

func connect(t testing.TB) *computesdk.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := computesdk.Connect(ctx, computesdk.WithSocket(testDaemon.socket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
