package main

// Processes: starting them, pumping their pipes into the output store, reaping
// them (as PID 1 must, orphans too), and the table the operations look them up in.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"computesdk/agent/agentpb"
)

const (
	pipeDrainFor = 250 * time.Millisecond
	keepExited   = 256
)

type exitStatus struct {
	exitCode   int
	signal     int
	durationMs int64
	timedOut   bool
}

func (s exitStatus) proto() *agentpb.ExitStatus {
	return &agentpb.ExitStatus{ExitCode: int32(s.exitCode), Signal: int32(s.signal),
		DurationMs: s.durationMs, TimedOut: s.timedOut}
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

func (p *process) info() *agentpb.ProcessInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	in := &agentpb.ProcessInfo{Id: p.id, Pid: int32(p.pid), Args: p.args, Tag: p.tag,
		Running: !p.exited, StartUnixMs: p.start.UnixMilli(), StdoutBytes: p.out.total,
		StderrBytes: p.err.total}
	if p.exited {
		in.Exit = p.status.proto()
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
	return nil, fail(codeProcessNotFound, "no process %q", id)
}

// all is a snapshot of the table, oldest first.
func (t *table) all() []*process {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*process(nil), t.order...)
}

func startProcess(req *agentpb.StartRequest) (*process, error) {
	if len(req.Args) == 0 {
		return nil, fail(codeInvalidArgument, "empty command")
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if st, err := os.Stat(cwd); err != nil || !st.IsDir() {
		return nil, fail(codeCwdNotFound, "working directory %q does not exist", cwd)
	}
	argv0 := req.Args[0]
	path, err := lookPath(argv0, req.Env)
	if err != nil {
		return nil, fail(codeExecutableNotFound, "%s: not found", argv0)
	}

	procs.mu.Lock()
	defer procs.mu.Unlock()
	if req.Tag != "" {
		for _, p := range procs.byID {
			if p.tag == req.Tag && !p.exited {
				return nil, fail(codeTagInUse, "a running process already has tag %q", req.Tag)
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
		return nil, fail(codeExecFailed, "%v", err)
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
	warned := false
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
			// The store is a capped tmpfs: when it is full, the output of
			// finished processes gives way to that of running ones.
			for errors.Is(werr, syscall.ENOSPC) && dropOldestExited() {
				p.mu.Lock()
				werr = s.append(buf[:n])
				p.notifyLocked()
				p.mu.Unlock()
			}
			if werr != nil && !warned { // once: the log is on the host
				warned = true
				fmt.Fprintf(os.Stderr, "agent: keep output of %s: %v (further errors not logged)\n", p.id, werr)
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
	p.status = exitStatus{exitCode: ws.ExitStatus(), durationMs: time.Since(p.start).Milliseconds(),
		timedOut: p.timedOut}
	if ws.Signaled() {
		p.status.exitCode = -1
		p.status.signal = int(ws.Signal())
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

// dropOldestExited frees the kept output of the oldest process that has exited
// and been drained; false when there is none.
func dropOldestExited() bool {
	procs.mu.Lock()
	defer procs.mu.Unlock()
	for i, p := range procs.order {
		p.mu.Lock()
		done := p.done()
		p.mu.Unlock()
		if done {
			delete(procs.byID, p.id)
			p.out.releaseNow()
			p.err.releaseNow()
			procs.order = append(procs.order[:i:i], procs.order[i+1:]...)
			return true
		}
	}
	return false
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

func signalProcess(p *process, sig int) error {
	if sig <= 0 || sig > 64 {
		return fail(codeInvalidArgument, "bad signal %d", sig)
	}
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	if exited {
		return fail(codeProcessExited, "process %s has exited", p.id)
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
		return fail(codeStdinClosed, "stdin of %s is closed or was never opened", p.id)
	}
	if len(data) > 0 {
		if _, err := w.Write(data); err != nil {
			return fail(codeStdinClosed, "write stdin: %v", err)
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
