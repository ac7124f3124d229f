// computesdk-agent is the init process of every local sandbox.
//
// It runs as PID 1 inside the container, so every command it forks inherits
// the sandbox's namespaces, cgroup, seccomp filter, capabilities and
// no_new_privs: nothing started through it can step outside the sandbox the
// way an nsenter'd process would. It depends on nothing inside the image.
//
// The daemon talks to it over a Unix socket in a directory bind-mounted from
// the host. Each connection carries one request. Output of every process is
// kept in size-capped segment files so that a client can re-read it from any
// byte offset, even after the daemon itself was restarted.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Frame types on the wire: one byte, then a 4-byte big-endian length, then the payload.
const (
	frameRequest = 'Q' // daemon -> agent: JSON request, always first
	frameStdin   = 'I' // daemon -> agent: stdin bytes
	frameClose   = 'C' // daemon -> agent: close stdin
	frameSignal  = 'K' // daemon -> agent: JSON {"signal": N}
	frameJSON    = 'J' // agent -> daemon: JSON reply
	frameStdout  = 'O' // agent -> daemon: stdout bytes
	frameStderr  = 'E' // agent -> daemon: stderr bytes
	frameExit    = 'X' // agent -> daemon: JSON exit status
	frameError   = 'R' // agent -> daemon: JSON {"code", "message"}

	maxFrame     = 8 << 20
	readChunk    = 1 << 20
	pipeDrainFor = 250 * time.Millisecond
	keepExited   = 256
)

var (
	stateDir   string
	segmentCap int64
)

type request struct {
	Op           string   `json:"op"`
	ID           string   `json:"id"`
	Args         []string `json:"args"`
	Env          []string `json:"env"`
	Cwd          string   `json:"cwd"`
	TimeoutMs    int64    `json:"timeout_ms"`
	Stdin        bool     `json:"stdin"`
	Tag          string   `json:"tag"`
	Attach       bool     `json:"attach"`
	KillOnClose  bool     `json:"kill_on_close"`
	StdoutOffset int64    `json:"stdout_offset"`
	StderrOffset int64    `json:"stderr_offset"`
	NoOutput     bool     `json:"no_output"`
	Signal       int      `json:"signal"`
	Close        bool     `json:"close"`
}

type agentError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *agentError) Error() string { return e.Code + ": " + e.Message }

func fail(code, format string, args ...any) *agentError {
	return &agentError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ---------------------------------------------------------------- output store

type segment struct {
	start int64
	size  int64
	f     *os.File
}

// stream keeps the most recent output of one pipe in at most two segment files.
type stream struct {
	segs   []*segment
	total  int64
	closed bool
}

func (s *stream) append(b []byte) error {
	last := s.segs[len(s.segs)-1]
	if last.size >= segmentCap {
		f, err := files.get()
		if err != nil {
			return err
		}
		last = &segment{start: s.total, f: f}
		s.segs = append(s.segs, last)
		if len(s.segs) > 2 {
			old := s.segs[0]
			files.discard(old.f)
			s.segs = s.segs[1:]
		}
	}
	if _, err := last.f.WriteAt(b, last.size); err != nil {
		return err
	}
	last.size += int64(len(b))
	s.total += int64(len(b))
	return nil
}

func (s *stream) earliest() int64 { return s.segs[0].start }

// readAt returns up to max bytes at offset off, which must be retained.
func (s *stream) readAt(off int64, max int) ([]byte, error) {
	for _, seg := range s.segs {
		if off >= seg.start && off < seg.start+seg.size {
			n := seg.start + seg.size - off
			if n > int64(max) {
				n = int64(max)
			}
			buf := make([]byte, n)
			_, err := seg.f.ReadAt(buf, off-seg.start)
			return buf, err
		}
	}
	return nil, fail("OUTPUT_TRUNCATED", "offset %d is no longer retained", off)
}

func (s *stream) release() {
	for _, seg := range s.segs {
		files.discard(seg.f)
	}
}

// ---------------------------------------------------------------- processes

type exitStatus struct {
	ExitCode   int   `json:"exit_code"`
	Signal     int   `json:"signal"`
	DurationMs int64 `json:"duration_ms"`
	TimedOut   bool  `json:"timed_out"`
}

type process struct {
	id    string
	pid   int
	args  []string
	tag   string
	start time.Time

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced whenever output or state changes
	out      *stream
	err      *stream
	stdin    *os.File
	pipes    []*os.File
	exited   bool
	status   exitStatus
	timedOut bool

	// Live foreground readers pin their offsets: the pumps stop reading the
	// process's pipes (so the process blocks, as on a full pipe) rather than
	// let such a reader fall out of the retained window.
	pins map[*pin]struct{}
	room *sync.Cond
}

type pin struct{ out, err int64 }

// behindLocked reports whether stream s is a full segment ahead of a pinned reader.
func (p *process) behindLocked(s *stream) bool {
	for pn := range p.pins {
		off := pn.out
		if s == p.err {
			off = pn.err
		}
		if s.total-off >= segmentCap {
			return true
		}
	}
	return false
}

func (p *process) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *process) done() bool { return p.exited && p.out.closed && p.err.closed }

type processInfo struct {
	ID          string      `json:"id"`
	Pid         int         `json:"pid"`
	Args        []string    `json:"args"`
	Tag         string      `json:"tag"`
	Running     bool        `json:"running"`
	Exit        *exitStatus `json:"exit,omitempty"`
	StartUnixMs int64       `json:"start_unix_ms"`
	StdoutBytes int64       `json:"stdout_bytes"`
	StderrBytes int64       `json:"stderr_bytes"`
}

func (p *process) info() processInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	in := processInfo{ID: p.id, Pid: p.pid, Args: p.args, Tag: p.tag, Running: !p.exited,
		StartUnixMs: p.start.UnixMilli(), StdoutBytes: p.out.total, StderrBytes: p.err.total}
	if p.exited {
		st := p.status
		in.Exit = &st
	}
	return in
}

type table struct {
	mu     sync.Mutex
	nextID int
	byID   map[string]*process
	byPid  map[int]*process
	order  []*process
}

var procs = &table{byID: map[string]*process{}, byPid: map[int]*process{}}

func (t *table) get(id string) (*process, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.byID[id]; ok {
		return p, nil
	}
	return nil, fail("PROCESS_NOT_FOUND", "no process %q", id)
}

func newStream() (*stream, error) {
	f, err := files.get()
	if err != nil {
		return nil, err
	}
	return &stream{segs: []*segment{{f: f}}}, nil
}

// filePool hands out output files created ahead of time. Creating a file on the
// host disk behind the bind mount costs ~0.7 ms here (strace), several times a
// fork+exec, so it is kept off the exec path; removal happens off it too.
type filePool struct {
	ready chan *os.File
	gone  chan *os.File
}

var files = &filePool{ready: make(chan *os.File, 16), gone: make(chan *os.File, 256)}

func (fp *filePool) run() {
	for {
		select {
		case f := <-fp.gone:
			f.Close()
			os.Remove(f.Name())
		default:
			f, err := os.CreateTemp(stateDir, "out-")
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			select {
			case fp.ready <- f:
			case g := <-fp.gone: // the pool is full: clean up while waiting
				g.Close()
				os.Remove(g.Name())
				fp.ready <- f
			}
		}
	}
}

func (fp *filePool) get() (*os.File, error) {
	select {
	case f := <-fp.ready:
		return f, nil
	default:
		return os.CreateTemp(stateDir, "out-")
	}
}

func (fp *filePool) discard(f *os.File) {
	select {
	case fp.gone <- f:
	default:
		f.Close()
		os.Remove(f.Name())
	}
}

func startProcess(req *request) (*process, error) {
	if len(req.Args) == 0 {
		return nil, fail("INVALID_ARGUMENT", "empty command")
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if st, err := os.Stat(cwd); err != nil || !st.IsDir() {
		return nil, fail("CWD_NOT_FOUND", "working directory %q does not exist", cwd)
	}
	argv0 := req.Args[0]
	path, err := lookPath(argv0, req.Env)
	if err != nil {
		return nil, fail("EXECUTABLE_NOT_FOUND", "%s: not found", argv0)
	}

	procs.mu.Lock()
	defer procs.mu.Unlock()
	if req.Tag != "" {
		for _, p := range procs.byID {
			if p.tag == req.Tag && !p.exited {
				return nil, fail("TAG_IN_USE", "a running process already has tag %q", req.Tag)
			}
		}
	}
	procs.nextID++
	id := "proc-" + strconv.Itoa(procs.nextID)

	p := &process{id: id, args: req.Args, tag: req.Tag, changed: make(chan struct{}),
		pins: map[*pin]struct{}{}}
	p.room = sync.NewCond(&p.mu)
	if p.out, err = newStream(); err != nil {
		return nil, err
	}
	if p.err, err = newStream(); err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	var inR *os.File
	if req.Stdin {
		if inR, p.stdin, err = os.Pipe(); err != nil {
			return nil, err
		}
	} else if inR, err = os.Open(os.DevNull); err != nil {
		return nil, err
	}
	attr := &os.ProcAttr{Dir: cwd, Env: req.Env, Files: []*os.File{inR, outW, errW},
		Sys: &syscall.SysProcAttr{Setpgid: true}}
	p.start = time.Now()
	osp, err := os.StartProcess(path, req.Args, attr)
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		if p.stdin != nil {
			p.stdin.Close()
		}
		p.out.release()
		p.err.release()
		return nil, fail("EXEC_FAILED", "%v", err)
	}
	p.pid = osp.Pid
	osp.Release() // the reaper owns wait4 for every child
	p.pipes = []*os.File{outR, errR}
	procs.byID[id] = p
	procs.byPid[p.pid] = p
	procs.order = append(procs.order, p)
	go pump(p, outR, p.out)
	go pump(p, errR, p.err)
	if req.TimeoutMs > 0 {
		time.AfterFunc(time.Duration(req.TimeoutMs)*time.Millisecond, func() {
			p.mu.Lock()
			running := !p.exited
			if running {
				p.timedOut = true
			}
			p.mu.Unlock()
			if running {
				syscall.Kill(-p.pid, syscall.SIGKILL)
			}
		})
	}
	return p, nil
}

func lookPath(name string, env []string) (string, error) {
	if filepath.IsAbs(name) || filepath.Base(name) != name {
		if st, err := os.Stat(name); err == nil && !st.IsDir() {
			return name, nil
		}
		return "", errors.New("not found")
	}
	pathVar := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if len(kv) > 5 && kv[:5] == "PATH=" {
			pathVar = kv[5:]
		}
	}
	for _, d := range filepath.SplitList(pathVar) {
		c := filepath.Join(d, name)
		if st, err := os.Stat(c); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", errors.New("not found")
}

func pump(p *process, r *os.File, s *stream) {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.behindLocked(s) {
				p.room.Wait()
			}
			werr := s.append(buf[:n])
			p.notifyLocked()
			p.mu.Unlock()
			if werr != nil {
				fmt.Fprintf(os.Stderr, "agent: keep output of %s: %v\n", p.id, werr)
			}
		}
		if err != nil {
			break
		}
	}
	r.Close()
	p.mu.Lock()
	s.closed = true
	p.notifyLocked()
	p.mu.Unlock()
}

// reap collects every child, ours or orphaned, as PID 1 must.
func reap(sigs <-chan os.Signal) {
	for range sigs {
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
			procs.mu.Lock()
			p := procs.byPid[pid]
			if p != nil {
				delete(procs.byPid, pid)
			}
			procs.mu.Unlock()
			if p != nil {
				finish(p, ws)
			}
		}
	}
}

func finish(p *process, ws syscall.WaitStatus) {
	p.mu.Lock()
	p.exited = true
	p.status = exitStatus{ExitCode: ws.ExitStatus(), DurationMs: time.Since(p.start).Milliseconds(),
		TimedOut: p.timedOut}
	if ws.Signaled() {
		p.status.ExitCode = -1
		p.status.Signal = int(ws.Signal())
	}
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	p.notifyLocked()
	p.mu.Unlock()
	// A background grandchild may hold the pipes open forever; stop waiting for it.
	time.AfterFunc(pipeDrainFor, func() {
		for _, f := range p.pipes {
			f.Close()
		}
	})
	forgetOldExited()
}

func forgetOldExited() {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	exited := 0
	for _, p := range procs.order {
		p.mu.Lock()
		if p.exited {
			exited++
		}
		p.mu.Unlock()
	}
	kept := procs.order[:0]
	for _, p := range procs.order {
		p.mu.Lock()
		drop := exited > keepExited && p.done()
		p.mu.Unlock()
		if drop {
			exited--
			delete(procs.byID, p.id)
			p.out.release()
			p.err.release()
			continue
		}
		kept = append(kept, p)
	}
	procs.order = kept
}

// ---------------------------------------------------------------- wire

type conn struct {
	c  net.Conn
	wm sync.Mutex
}

func (c *conn) write(kind byte, payload []byte) error {
	c.wm.Lock()
	defer c.wm.Unlock()
	var hdr [5]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := c.c.Write(hdr[:]); err != nil {
		return err
	}
	_, err := c.c.Write(payload)
	return err
}

func (c *conn) writeJSON(kind byte, v any) error {
	b, _ := json.Marshal(v)
	return c.write(kind, b)
}

func (c *conn) writeErr(err error) {
	var ae *agentError
	if !errors.As(err, &ae) {
		ae = &agentError{Code: "INTERNAL", Message: err.Error()}
	}
	c.writeJSON(frameError, ae)
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes is too large", n)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return hdr[0], b, err
}

func serve(nc net.Conn) {
	defer nc.Close()
	c := &conn{c: nc}
	kind, body, err := readFrame(nc)
	if err != nil || kind != frameRequest {
		return
	}
	var req request
	if err := json.Unmarshal(body, &req); err != nil {
		c.writeErr(fail("INVALID_ARGUMENT", "bad request: %v", err))
		return
	}
	if err := handle(c, &req); err != nil {
		c.writeErr(err)
	}
}

func handle(c *conn, req *request) error {
	switch req.Op {
	case "ping":
		return c.writeJSON(frameJSON, map[string]int{"pid": os.Getpid()})
	case "start":
		p, err := startProcess(req)
		if err != nil {
			return err
		}
		if err := c.writeJSON(frameJSON, p.info()); err != nil {
			return nil
		}
		if req.Attach {
			follow(c, p, 0, 0, req.NoOutput, req.KillOnClose)
		}
		return nil
	case "attach":
		p, err := procs.get(req.ID)
		if err != nil {
			return err
		}
		if err := c.writeJSON(frameJSON, p.info()); err != nil {
			return nil
		}
		follow(c, p, req.StdoutOffset, req.StderrOffset, req.NoOutput, req.KillOnClose)
		return nil
	case "signal":
		p, err := procs.get(req.ID)
		if err != nil {
			return err
		}
		if err := signalProcess(p, req.Signal); err != nil {
			return err
		}
		return c.writeJSON(frameJSON, map[string]bool{"ok": true})
	case "stdin":
		p, err := procs.get(req.ID)
		if err != nil {
			return err
		}
		kind, data, err := readFrame(c.c)
		if err != nil || kind != frameStdin {
			return fail("INVALID_ARGUMENT", "expected a stdin frame")
		}
		if err := writeStdin(p, data, req.Close); err != nil {
			return err
		}
		return c.writeJSON(frameJSON, map[string]bool{"ok": true})
	case "list":
		procs.mu.Lock()
		list := append([]*process(nil), procs.order...)
		procs.mu.Unlock()
		infos := make([]processInfo, 0, len(list))
		for _, p := range list {
			infos = append(infos, p.info())
		}
		sort.Slice(infos, func(i, j int) bool { return infos[i].StartUnixMs < infos[j].StartUnixMs })
		return c.writeJSON(frameJSON, map[string]any{"processes": infos})
	case "killall":
		procs.mu.Lock()
		list := append([]*process(nil), procs.order...)
		procs.mu.Unlock()
		for _, p := range list {
			signalProcess(p, req.Signal)
		}
		return c.writeJSON(frameJSON, map[string]bool{"ok": true})
	}
	return fail("INVALID_ARGUMENT", "unknown op %q", req.Op)
}

func signalProcess(p *process, sig int) error {
	if sig <= 0 || sig > 64 {
		return fail("INVALID_ARGUMENT", "bad signal %d", sig)
	}
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	if exited {
		return fail("PROCESS_EXITED", "process %s has exited", p.id)
	}
	if err := syscall.Kill(-p.pid, syscall.Signal(sig)); err != nil {
		return syscall.Kill(p.pid, syscall.Signal(sig))
	}
	return nil
}

func writeStdin(p *process, data []byte, closeAfter bool) error {
	p.mu.Lock()
	w := p.stdin
	p.mu.Unlock()
	if w == nil {
		return fail("STDIN_CLOSED", "stdin of %s is closed or was never opened", p.id)
	}
	if len(data) > 0 {
		if _, err := w.Write(data); err != nil {
			return fail("STDIN_CLOSED", "write stdin: %v", err)
		}
	}
	if closeAfter {
		p.mu.Lock()
		if p.stdin != nil {
			p.stdin.Close()
			p.stdin = nil
		}
		p.mu.Unlock()
	}
	return nil
}

// follow streams output from the given offsets, then the exit status.
func follow(c *conn, p *process, outOff, errOff int64, noOutput, killOnClose bool) {
	var pn *pin
	if killOnClose { // a foreground exec: its reader paces the process
		pn = &pin{outOff, errOff}
		p.mu.Lock()
		p.pins[pn] = struct{}{}
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			delete(p.pins, pn)
			p.room.Broadcast()
			p.mu.Unlock()
		}()
	}
	gone := make(chan struct{})
	go func() { // input from the daemon; its end means the client went away
		defer close(gone)
		for {
			kind, data, err := readFrame(c.c)
			if err != nil {
				return
			}
			switch kind {
			case frameStdin:
				writeStdin(p, data, false)
			case frameClose:
				writeStdin(p, nil, true)
			case frameSignal:
				var s struct{ Signal int }
				if json.Unmarshal(data, &s) == nil {
					signalProcess(p, s.Signal)
				}
			}
		}
	}()
	for {
		p.mu.Lock()
		if noOutput {
			outOff, errOff = p.out.total, p.err.total
		}
		var kind byte
		var chunk []byte
		var err error
		switch {
		case outOff < p.out.total:
			if outOff < p.out.earliest() {
				err = fail("OUTPUT_TRUNCATED", "stdout before offset %d is no longer retained", p.out.earliest())
			} else {
				kind = frameStdout
				chunk, err = p.out.readAt(outOff, readChunk)
				outOff += int64(len(chunk))
			}
		case errOff < p.err.total:
			if errOff < p.err.earliest() {
				err = fail("OUTPUT_TRUNCATED", "stderr before offset %d is no longer retained", p.err.earliest())
			} else {
				kind = frameStderr
				chunk, err = p.err.readAt(errOff, readChunk)
				errOff += int64(len(chunk))
			}
		}
		if pn != nil {
			pn.out, pn.err = outOff, errOff
			p.room.Broadcast()
		}
		finished := p.done()
		status := p.status
		wait := p.changed
		p.mu.Unlock()
		if err != nil {
			c.writeErr(err)
			return
		}
		if chunk != nil {
			if c.write(kind, chunk) != nil {
				break
			}
			continue
		}
		if finished {
			c.writeJSON(frameExit, status)
			return
		}
		select {
		case <-wait:
		case <-gone:
			if killOnClose {
				syscall.Kill(-p.pid, syscall.SIGKILL)
			}
			return
		}
	}
	if killOnClose {
		syscall.Kill(-p.pid, syscall.SIGKILL)
	}
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

// ---------------------------------------------------------------- main

func main() {
	if len(os.Args) > 1 && os.Args[1] == "mq" {
		os.Exit(mqMain(os.Args[2:]))
	}
	sock := flag.String("socket", "/.computesdk/agent.sock", "listen on this Unix socket")
	flag.StringVar(&stateDir, "state", "/.computesdk/proc", "keep process output here")
	flag.Int64Var(&segmentCap, "segment-bytes", 32<<20, "output kept per stream is at most twice this")
	flag.Parse()
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
	os.Remove(*sock)
	l, err := net.Listen("unix", *sock+".tmp")
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
	// Appear under the final name only once accepting, so the daemon can poll for it.
	if err := os.Rename(*sock+".tmp", *sock); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-term
		procs.mu.Lock()
		list := append([]*process(nil), procs.order...)
		procs.mu.Unlock()
		for _, p := range list {
			syscall.Kill(-p.pid, syscall.SIGTERM)
		}
		os.Exit(0)
	}()

	for {
		nc, err := l.Accept()
		if err != nil {
			continue
		}
		go serve(nc)
	}
}
