// computesdk-agent is the init process of every local sandbox.
//
// It runs as PID 1 inside the container, so every command it forks inherits
// the sandbox's namespaces, cgroup, seccomp filter, capabilities and
// no_new_privs: nothing started through it can step outside the sandbox the
// way an nsenter'd process would. It depends on nothing inside the image.
//
// The daemon talks to it over a Unix socket that the daemon binds on the host
// and hands over as an inherited listening fd; the sandbox has no path to it.
// Each connection carries one request. Output of every process is kept in
// size-capped segment files (on a tmpfs inside the sandbox, charged to its
// memory) so that a client can re-read it from any byte offset, even after the
// daemon itself was restarted.
//
// On Kubernetes (opt-in, -listen-tcp) the daemon reaches the agent over the pod
// network instead, behind TLS and a per-sandbox token: netauth.go.
//
// The files, by concern: main.go (flags, the socket, the accept loop, signals),
// wire.go (framing and the protobuf messages of proto/computesdk/agent/v1),
// ops.go (the operations of a connection, following a process), process.go
// (starting, reaping and signalling processes, the process table), output.go
// (the output store), mq.go (the `agent mq` channel client).
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
)

var (
	stateDir   string
	segmentCap int64
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "mq" {
		os.Exit(mqMain(os.Args[2:]))
	}
	sock := flag.String("socket", "", "listen on this Unix socket (tests; sandboxes use -listen-fd)")
	listenFd := flag.Int("listen-fd", -1, "accept on this inherited listening socket")
	flag.StringVar(&stateDir, "state", "/.computesdk/run/proc", "keep process output here")
	flag.Int64Var(&segmentCap, "segment-bytes", 32<<20, "output kept per stream is at most twice this")
	tcp := netFlags()
	flag.Parse()
	// Not dumpable: code in the sandbox runs as the same uid as PID 1 but must not
	// ptrace it, read its memory or reach its fds through /proc/1 (that would need
	// CAP_SYS_PTRACE, which the sandbox does not have). Children are dumpable again
	// after their execve.
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_DUMPABLE, 0, 0); errno != 0 {
		fmt.Fprintln(os.Stderr, "agent: prctl(PR_SET_DUMPABLE):", errno)
		os.Exit(1)
	}
	debug.SetGCPercent(50) // density: many agents run side by side
	reserveThreads(16)

	sigchld := make(chan os.Signal, 64)
	signal.Notify(sigchld, syscall.SIGCHLD)
	go reap(sigchld)

	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
	go files.run()
	var l net.Listener
	var ns *netServer
	var err error
	if tcp.addr != "" { // the network channel (Kubernetes): netauth.go
		ns, l, err = tcp.open(*listenFd, *sock)
	} else {
		l, err = listen(*listenFd, *sock)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-term
		for _, p := range procs.all() {
			syscall.Kill(-p.pid, syscall.SIGTERM)
		}
		os.Exit(0)
	}()

	if ns != nil {
		fmt.Fprintln(os.Stderr, "agent: serving on", l.Addr()) // tests read the port
		ns.serveLoop(l)
		os.Exit(1)
	}
	for {
		nc, err := l.Accept()
		if err != nil {
			continue
		}
		go serve(nc)
	}
}

// listen takes the control socket. In a sandbox the daemon binds it on the host, in
// a directory the sandbox cannot see, and hands the listening fd to init (runc
// --preserve-fds): nothing inside can replace or redirect it, and a connection
// reaches this sandbox by construction.
func listen(fd int, path string) (net.Listener, error) {
	if fd >= 0 {
		f := os.NewFile(uintptr(fd), "control socket")
		defer f.Close() // FileListener holds a close-on-exec duplicate
		return net.FileListener(f)
	}
	if path == "" {
		return nil, errors.New("neither -listen-fd nor -socket was given")
	}
	os.Remove(path)
	return net.Listen("unix", path)
}

// reserveThreads makes the runtime start n OS threads now and keep them idle.
// Threads count against the sandbox's pids limit; a fork bomb can leave none to
// create later, and a Go program that cannot make a thread it needs aborts.
// Parked threads are reused, so the agent outlives pid exhaustion.
func reserveThreads(n int) {
	var started, release sync.WaitGroup
	started.Add(n)
	release.Add(1)
	for i := 0; i < n; i++ {
		go func() {
			runtime.LockOSThread()
			started.Done()
			release.Wait()
			runtime.UnlockOSThread() // back to the idle pool rather than exiting
		}()
	}
	started.Wait()
	release.Done()
}
