package computesdk

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"iter"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	processv1 "github.com/computesdk/computesdk/clients/go/api/process/v1"
	sandboxv1 "github.com/computesdk/computesdk/clients/go/api/sandbox/v1"
)

// chunk is the largest stdin or file piece sent in one message.
const chunk = 1 << 20

// State is where a sandbox is in its life.
type State int32

const (
	StateUnspecified = State(sandboxv1.State_STATE_UNSPECIFIED)
	StateCreating    = State(sandboxv1.State_STATE_CREATING)
	StateRunning     = State(sandboxv1.State_STATE_RUNNING)
	StateStopping    = State(sandboxv1.State_STATE_STOPPING)
	StateStopped     = State(sandboxv1.State_STATE_STOPPED)
	StateError       = State(sandboxv1.State_STATE_ERROR)
)

func (s State) String() string {
	return map[State]string{StateCreating: "creating", StateRunning: "running",
		StateStopping: "stopping", StateStopped: "stopped", StateError: "error"}[s]
}

// Sandbox is a handle to one sandbox. Methods are safe for concurrent use.
type Sandbox struct {
	client     *Client
	ownsClient bool

	mu   sync.Mutex
	info *sandboxv1.Sandbox
}

func (s *Sandbox) ID() string { return s.Info().GetId() }

// Info is the sandbox as last seen (see Refresh).
func (s *Sandbox) Info() *sandboxv1.Sandbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

func (s *Sandbox) Provider() string            { return s.Info().GetProvider() }
func (s *Sandbox) Template() string            { return s.Info().GetTemplate() }
func (s *Sandbox) Metadata() map[string]string { return s.Info().GetMetadata() }
func (s *Sandbox) Client() *Client             { return s.client }

// Refresh re-reads the sandbox from the daemon.
func (s *Sandbox) Refresh(ctx context.Context) error {
	resp, err := s.client.Raw.Sandboxes.GetSandbox(ctx, &sandboxv1.GetSandboxRequest{SandboxId: s.ID()})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.info = resp.GetSandbox()
	s.mu.Unlock()
	return nil
}

// Status is a sandbox's state, uptime, resources and current use.
type Status struct {
	State     State
	Uptime    time.Duration
	Resources Resources
	Usage     *sandboxv1.ResourceUsage
}

func (s *Sandbox) GetStatus(ctx context.Context) (*Status, error) {
	resp, err := s.client.Raw.Sandboxes.GetSandboxStatus(ctx,
		&sandboxv1.GetSandboxStatusRequest{SandboxId: s.ID()})
	if err != nil {
		return nil, err
	}
	return &Status{State: State(resp.GetState()),
		Uptime:    time.Duration(resp.GetUptimeMs()) * time.Millisecond,
		Resources: resourcesFrom(resp.GetResources()), Usage: resp.GetUsage()}, nil
}

// DestroyOption configures Destroy.
type DestroyOption func(*sandboxv1.DestroySandboxRequest)

// Gracefully sends SIGTERM to every process and waits up to timeout before SIGKILL.
func Gracefully(timeout time.Duration) DestroyOption {
	return func(r *sandboxv1.DestroySandboxRequest) {
		r.Graceful, r.GracefulTimeoutMs = true, uint64(timeout.Milliseconds())
	}
}

// Destroy removes the sandbox; a sandbox made by Compute also closes its connection.
func (s *Sandbox) Destroy(ctx context.Context, opts ...DestroyOption) error {
	req := &sandboxv1.DestroySandboxRequest{SandboxId: s.ID()}
	for _, o := range opts {
		o(req)
	}
	_, err := s.client.Raw.Sandboxes.DestroySandbox(ctx, req)
	if s.ownsClient {
		_ = s.client.Close()
	}
	return err
}

// CloneOption changes the copy made by Clone.
type CloneOption func(*sandboxv1.CloneSandboxRequest)

func CloneToProvider(name string) CloneOption {
	return func(r *sandboxv1.CloneSandboxRequest) { r.Provider = name }
}
func CloneWithTemplate(name string) CloneOption {
	return func(r *sandboxv1.CloneSandboxRequest) { r.Template = name }
}
func CloneWithEnv(env map[string]string) CloneOption {
	return func(r *sandboxv1.CloneSandboxRequest) { r.Env = env }
}
func CloneWithResources(res Resources) CloneOption {
	return func(r *sandboxv1.CloneSandboxRequest) { r.Resources = res.proto() }
}

// Clone copies the sandbox, files included, into a new one.
func (s *Sandbox) Clone(ctx context.Context, opts ...CloneOption) (*Sandbox, error) {
	req := &sandboxv1.CloneSandboxRequest{SandboxId: s.ID()}
	for _, o := range opts {
		o(req)
	}
	resp, err := s.client.Raw.Sandboxes.CloneSandbox(ctx, req)
	if err != nil {
		return nil, err
	}
	return &Sandbox{client: s.client, info: resp.GetSandbox()}, nil
}

// MigrateOption configures Migrate.
type MigrateOption func(*sandboxv1.MigrateSandboxRequest)

func MigrateWithTemplate(name string) MigrateOption {
	return func(r *sandboxv1.MigrateSandboxRequest) { r.Template = name }
}
func PreserveFiles(on bool) MigrateOption {
	return func(r *sandboxv1.MigrateSandboxRequest) { r.PreserveFiles = on }
}
func PreserveEnv(on bool) MigrateOption {
	return func(r *sandboxv1.MigrateSandboxRequest) { r.PreserveEnv = on }
}
func TemplateMapping(m map[string]string) MigrateOption {
	return func(r *sandboxv1.MigrateSandboxRequest) { r.TemplateMapping = m }
}
func EnvMapping(m map[string]string) MigrateOption {
	return func(r *sandboxv1.MigrateSandboxRequest) { r.EnvMapping = m }
}

// Migrate moves the sandbox to another provider; the returned sandbox replaces this one.
func (s *Sandbox) Migrate(ctx context.Context, provider string, opts ...MigrateOption) (*Sandbox, error) {
	req := &sandboxv1.MigrateSandboxRequest{SandboxId: s.ID(), Provider: provider}
	for _, o := range opts {
		o(req)
	}
	resp, err := s.client.Raw.Sandboxes.MigrateSandbox(ctx, req)
	if err != nil {
		return nil, err
	}
	return &Sandbox{client: s.client, info: resp.GetSandbox()}, nil
}

// Events yields this sandbox's lifecycle events (see Client.Events).
func (s *Sandbox) Events(ctx context.Context, opts ...EventOption) iter.Seq2[Event, error] {
	return s.client.Events(ctx, append([]EventOption{ForSandboxes(s.ID())}, opts...)...)
}

// ---------------------------------------------------------------- exec

// ExecOption configures a command.
type ExecOption func(*execConfig)

type execConfig struct {
	cmd         processv1.Command
	stdin       []byte
	hasStdin    bool
	interactive bool
	tag         string
}

func WithCwd(dir string) ExecOption { return func(c *execConfig) { c.cmd.Cwd = dir } }
func WithCommandEnv(env map[string]string) ExecOption {
	return func(c *execConfig) { c.cmd.Env = env }
}
func WithCommandTimeout(d time.Duration) ExecOption {
	return func(c *execConfig) { c.cmd.TimeoutMs = uint64(d.Milliseconds()) }
}

// WithStdin feeds data to the command and then closes its stdin.
func WithStdin(data []byte) ExecOption {
	return func(c *execConfig) { c.stdin, c.hasStdin = data, true }
}

// Interactive keeps stdin open for ExecStream.SendStdin / Process.WriteStdin.
func Interactive() ExecOption { return func(c *execConfig) { c.interactive = true } }

// WithTag names a background process (StartProcess only).
func WithTag(tag string) ExecOption { return func(c *execConfig) { c.tag = tag } }

func newExec(shell string, argv []string, opts []ExecOption) *execConfig {
	c := &execConfig{}
	c.cmd.Command, c.cmd.Args = shell, argv
	for _, o := range opts {
		o(c)
	}
	c.cmd.Stdin = c.hasStdin || c.interactive
	return c
}

// Chunk is a piece of output; Offset is its position in that stream.
type Chunk struct {
	Stderr bool
	Data   []byte
	Offset uint64
}

// ExecResult is a finished command.
type ExecResult struct {
	ProcessID string
	Stdout    []byte
	Stderr    []byte
	ExitCode  int
	Signal    int
	Duration  time.Duration
	TimedOut  bool
	OOMKilled bool
}

func resultFrom(id string, out, errOut []byte, ex *processv1.Exited) *ExecResult {
	return &ExecResult{ProcessID: id, Stdout: out, Stderr: errOut, ExitCode: int(ex.GetExitCode()),
		Signal: int(ex.GetSignal()), Duration: time.Duration(ex.GetDurationMs()) * time.Millisecond,
		TimedOut: ex.GetTimedOut(), OOMKilled: ex.GetOomKilled()}
}

// ExecStream is a running command: read Output, then Exited says how it ended.
type ExecStream struct {
	ProcessID string
	PID       int

	stream processv1.ProcessService_ExecClient
	cancel context.CancelFunc
	sendMu sync.Mutex
	exited *processv1.Exited
}

// Stream runs a shell command line (through /bin/sh -c) and streams its output.
func (s *Sandbox) Stream(ctx context.Context, command string, opts ...ExecOption) (*ExecStream, error) {
	return s.stream(ctx, newExec(command, nil, opts))
}

// StreamArgv runs argv exactly, without a shell, and streams its output.
func (s *Sandbox) StreamArgv(ctx context.Context, argv []string, opts ...ExecOption) (*ExecStream, error) {
	return s.stream(ctx, newExec("", argv, opts))
}

func (s *Sandbox) stream(ctx context.Context, cfg *execConfig) (*ExecStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := s.client.Raw.Processes.Exec(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	es := &ExecStream{stream: st, cancel: cancel}
	start := &processv1.ExecRequest{Request: &processv1.ExecRequest_Start{
		Start: &processv1.ExecStart{SandboxId: s.ID(), Command: &cfg.cmd}}}
	if err := es.send(start); err != nil {
		cancel()
		return nil, err
	}
	if cfg.hasStdin {
		if err := es.SendStdin(cfg.stdin); err != nil {
			cancel()
			return nil, err
		}
		if !cfg.interactive {
			if err := es.CloseStdin(); err != nil {
				cancel()
				return nil, err
			}
		}
	}
	return es, nil
}

func (e *ExecStream) send(req *processv1.ExecRequest) error {
	e.sendMu.Lock()
	defer e.sendMu.Unlock()
	if err := e.stream.Send(req); !isEOF(err) {
		return err
	}
	// The server ended the call; Output reports why.
	return nil
}

// SendStdin writes to the command's stdin (needs WithStdin or Interactive).
func (e *ExecStream) SendStdin(data []byte) error {
	for len(data) > 0 {
		n := min(len(data), chunk)
		if err := e.send(&processv1.ExecRequest{Request: &processv1.ExecRequest_Stdin{Stdin: data[:n]}}); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// CloseStdin sends end of file.
func (e *ExecStream) CloseStdin() error {
	return e.send(&processv1.ExecRequest{Request: &processv1.ExecRequest_CloseStdin{CloseStdin: true}})
}

// Signal delivers a signal number to the command.
func (e *ExecStream) Signal(sig int) error {
	return e.send(&processv1.ExecRequest{Request: &processv1.ExecRequest_Signal{Signal: int32(sig)}})
}

// Output yields chunks of stdout and stderr as they arrive, until the command
// ends. Iterate it once. Stopping early cancels the call.
func (e *ExecStream) Output() iter.Seq2[Chunk, error] {
	return func(yield func(Chunk, error) bool) {
		defer e.cancel()
		for {
			resp, err := e.stream.Recv()
			if err != nil {
				if !isEOF(err) {
					yield(Chunk{}, err)
				}
				return
			}
			switch ev := resp.GetEvent().(type) {
			case *processv1.ExecResponse_Started:
				e.ProcessID, e.PID = ev.Started.GetProcessId(), int(ev.Started.GetPid())
			case *processv1.ExecResponse_Stdout:
				if !yield(Chunk{Data: ev.Stdout.GetData(), Offset: ev.Stdout.GetOffset()}, nil) {
					return
				}
			case *processv1.ExecResponse_Stderr:
				if !yield(Chunk{Stderr: true, Data: ev.Stderr.GetData(), Offset: ev.Stderr.GetOffset()}, nil) {
					return
				}
			case *processv1.ExecResponse_Exited:
				e.exited = ev.Exited
			}
		}
	}
}

// Wait reads the rest of the output and returns the result.
func (e *ExecStream) Wait() (*ExecResult, error) {
	var out, errOut []byte
	for c, err := range e.Output() {
		if err != nil {
			return nil, err
		}
		if c.Stderr {
			errOut = append(errOut, c.Data...)
		} else {
			out = append(out, c.Data...)
		}
	}
	if e.exited == nil {
		return nil, &Error{Code: codes.Aborted, Reason: ErrSandboxTerminated.Reason, Message: "exec ended without an exit status"}
	}
	return resultFrom(e.ProcessID, out, errOut, e.exited), nil
}

// Exited is how the command ended, once Output is done; nil before.
func (e *ExecStream) Exited() *processv1.Exited { return e.exited }

// Exec runs a shell command line to completion.
func (s *Sandbox) Exec(ctx context.Context, command string, opts ...ExecOption) (*ExecResult, error) {
	return s.run(ctx, newExec(command, nil, opts))
}

// ExecArgv runs argv exactly, without a shell, to completion.
func (s *Sandbox) ExecArgv(ctx context.Context, argv []string, opts ...ExecOption) (*ExecResult, error) {
	return s.run(ctx, newExec("", argv, opts))
}

// execResume is the capability RunCommand needs: output past what fits inline
// is read on with AttachProcess.
const execResume = "exec.resume"

// run takes one unary call (RunCommand) when the command has no stdin and the
// provider can re-attach, and the Exec stream otherwise.
func (s *Sandbox) run(ctx context.Context, cfg *execConfig) (*ExecResult, error) {
	if !cfg.hasStdin && !cfg.interactive {
		resumable, err := s.client.supports(ctx, s.Provider(), execResume)
		if err != nil {
			return nil, err
		}
		if resumable {
			return s.runCommand(ctx, cfg)
		}
	}
	st, err := s.stream(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return st.Wait()
}

// runCommand reads output past what fits inline with AttachProcess, from where
// the answer stopped.
func (s *Sandbox) runCommand(ctx context.Context, cfg *execConfig) (*ExecResult, error) {
	resp, err := s.client.Raw.Processes.RunCommand(ctx, &processv1.RunCommandRequest{
		SandboxId: s.ID(), Command: &cfg.cmd})
	if err != nil {
		return nil, err
	}
	if exited := resp.GetExited(); exited != nil {
		return resultFrom(resp.GetProcessId(), resp.GetStdout(), resp.GetStderr(), exited), nil
	}
	p := &Process{ID: resp.GetProcessId(), sandbox: s}
	return p.collect(ctx, resp.GetStdout(), resp.GetStderr())
}

// ---------------------------------------------------------------- processes

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
	resp, err := s.client.Raw.Processes.StartProcess(ctx, &processv1.StartProcessRequest{
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
	resp, err := s.client.Raw.Processes.ListProcesses(ctx, &processv1.ListProcessesRequest{SandboxId: s.ID()})
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
	st, err := p.sandbox.client.Raw.Processes.AttachProcess(ctx, &processv1.AttachProcessRequest{
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
		_, err := p.sandbox.client.Raw.Processes.WriteStdin(ctx, &processv1.WriteStdinRequest{
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
	_, err := p.sandbox.client.Raw.Processes.SignalProcess(ctx, &processv1.SignalProcessRequest{
		SandboxId: p.sandbox.ID(), ProcessId: p.ID, Signal: int32(sig)})
	return err
}

// Kill sends SIGKILL.
func (p *Process) Kill(ctx context.Context) error { return p.Signal(ctx, 9) }

// ---------------------------------------------------------------- helpers

func isEOF(err error) bool { return errors.Is(err, io.EOF) }

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
