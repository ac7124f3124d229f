package computesdk

import (
	"context"
	"iter"

	processv1 "github.com/computesdk/computesdk/clients/go/api/process/v1"
)

// ProcessInfo describes a background process.
type ProcessInfo = processv1.Process

// Process is a handle to a background process; it outlives connections.
type Process struct {
	ID      string
	sandbox *Sandbox
}

// StartProcess starts a shell command line in the background.
func (s *Sandbox) StartProcess(ctx context.Context, command string, opts ...ExecOption) (*Process, error) {
	return s.startProcess(ctx, newExec(command, nil, opts))
}

// StartProcessArgv starts argv in the background.
func (s *Sandbox) StartProcessArgv(ctx context.Context, argv []string, opts ...ExecOption) (*Process, error) {
	return s.startProcess(ctx, newExec("", argv, opts))
}

func (s *Sandbox) startProcess(ctx context.Context, cfg *execConfig) (*Process, error) {
	resp, err := s.Client().Raw.Processes.StartProcess(ctx, &processv1.StartProcessRequest{
		SandboxId: s.ID(), Command: &cfg.cmd, Tag: cfg.tag})
	if err != nil {
		return nil, err
	}
	p := &Process{ID: resp.GetProcess().GetProcessId(), sandbox: s}
	if cfg.hasStdin {
		if err := p.WriteStdin(ctx, cfg.stdin, !cfg.interactive); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Process is a handle to an earlier process by id or tag.
func (s *Sandbox) Process(id string) *Process { return &Process{ID: id, sandbox: s} }

// Processes lists the sandbox's processes, running and finished.
func (s *Sandbox) Processes(ctx context.Context) ([]*ProcessInfo, error) {
	resp, err := s.Client().Raw.Processes.ListProcesses(ctx, &processv1.ListProcessesRequest{SandboxId: s.ID()})
	if err != nil {
		return nil, err
	}
	return resp.GetProcesses(), nil
}

// Attach yields the process's output from these offsets (0, 0 replays it all),
// then its end as a final chunk-less iteration; see Wait for the whole result.
func (p *Process) Attach(ctx context.Context, stdoutOffset, stderrOffset uint64) iter.Seq2[Chunk, error] {
	return func(yield func(Chunk, error) bool) {
		_, _ = p.attach(ctx, stdoutOffset, stderrOffset, yield)
	}
}

func (p *Process) attach(ctx context.Context, outOff, errOff uint64, yield func(Chunk, error) bool) (*processv1.Exited, bool) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := p.sandbox.Client().Raw.Processes.AttachProcess(ctx, &processv1.AttachProcessRequest{
		SandboxId: p.sandbox.ID(), ProcessId: p.ID, StdoutOffset: outOff, StderrOffset: errOff})
	if err != nil {
		return nil, yield(Chunk{}, err)
	}
	var exited *processv1.Exited
	for {
		resp, err := st.Recv()
		if err != nil {
			if isEOF(err) {
				return exited, true
			}
			return nil, yield(Chunk{}, err)
		}
		switch ev := resp.GetEvent().(type) {
		case *processv1.AttachProcessResponse_Stdout:
			if !yield(Chunk{Data: ev.Stdout.GetData(), Offset: ev.Stdout.GetOffset()}, nil) {
				return nil, false
			}
		case *processv1.AttachProcessResponse_Stderr:
			if !yield(Chunk{Stderr: true, Data: ev.Stderr.GetData(), Offset: ev.Stderr.GetOffset()}, nil) {
				return nil, false
			}
		case *processv1.AttachProcessResponse_Exited:
			exited = ev.Exited
		}
	}
}

// Wait attaches from the start and returns the whole result once the process ends.
func (p *Process) Wait(ctx context.Context) (*ExecResult, error) {
	return p.collect(ctx, nil, nil)
}

// collect appends the output from where out and errOut end until the process exits.
func (p *Process) collect(ctx context.Context, out, errOut []byte) (*ExecResult, error) {
	var failure error
	exited, _ := p.attach(ctx, uint64(len(out)), uint64(len(errOut)), func(c Chunk, err error) bool {
		if err != nil {
			failure = err
			return false
		}
		if c.Stderr {
			errOut = append(errOut, c.Data...)
		} else {
			out = append(out, c.Data...)
		}
		return true
	})
	if failure != nil {
		return nil, failure
	}
	return resultFrom(p.ID, out, errOut, exited), nil
}

// WriteStdin writes to a process started with Interactive or WithStdin; close sends EOF.
func (p *Process) WriteStdin(ctx context.Context, data []byte, close bool) error {
	for first := true; first || len(data) > 0; first = false {
		n := min(len(data), chunk)
		_, err := p.sandbox.Client().Raw.Processes.WriteStdin(ctx, &processv1.WriteStdinRequest{
			SandboxId: p.sandbox.ID(), ProcessId: p.ID, Data: data[:n], Close: close && n == len(data)})
		if err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// Signal delivers a signal number to the process.
func (p *Process) Signal(ctx context.Context, sig int) error {
	_, err := p.sandbox.Client().Raw.Processes.SignalProcess(ctx, &processv1.SignalProcessRequest{
		SandboxId: p.sandbox.ID(), ProcessId: p.ID, Signal: int32(sig)})
	return err
}

// Kill sends SIGKILL.
func (p *Process) Kill(ctx context.Context) error { return p.Signal(ctx, 9) }
