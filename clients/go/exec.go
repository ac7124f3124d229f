package computesdk

import (
	"context"
	"fmt"
	"iter"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"

	processv1 "github.com/computesdk/computesdk/clients/go/api/process/v1"
)

// ExecOption configures a command.
type ExecOption func(*execConfig)

type execConfig struct {
	cmd         processv1.Command
	stdin       []byte
	hasStdin    bool
	interactive bool
	tag         string
	noCheck     bool
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

// NoCheck makes Exec and ExecArgv return a non-zero exit or a signal as a
// plain result instead of a *CommandExitError.
func NoCheck() ExecOption { return func(c *execConfig) { c.noCheck = true } }

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
	st, err := s.Client().Raw.Processes.Exec(ctx)
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

// Exec runs a shell command line to completion. A non-zero exit or a signal
// returns the result together with a *CommandExitError (match it with
// errors.As), as the spec's exec throws; NoCheck turns that off. A command
// that ran out of its WithCommandTimeout is a result with TimedOut set, no
// error. Stream and StartProcess never fail for how the command ended.
func (s *Sandbox) Exec(ctx context.Context, command string, opts ...ExecOption) (*ExecResult, error) {
	return s.run(ctx, newExec(command, nil, opts))
}

// ExecArgv runs argv exactly, without a shell, to completion (see Exec).
func (s *Sandbox) ExecArgv(ctx context.Context, argv []string, opts ...ExecOption) (*ExecResult, error) {
	return s.run(ctx, newExec("", argv, opts))
}

// CommandExitError is a one-shot command that exited non-zero or was killed
// by a signal. Result is the whole result, also returned beside the error.
type CommandExitError struct {
	Stdout    []byte
	Stderr    []byte
	ExitCode  int
	Signal    int
	OOMKilled bool
	Result    *ExecResult
}

func (e *CommandExitError) Error() string {
	how := fmt.Sprintf("exit code %d", e.ExitCode)
	if e.Signal != 0 {
		how = fmt.Sprintf("signal %d", e.Signal)
	}
	if e.OOMKilled {
		how += " (out of memory)"
	}
	tail := strings.TrimSpace(string(e.Stderr))
	if tail == "" {
		tail = strings.TrimSpace(string(e.Stdout))
	}
	if len(tail) > 500 {
		tail = tail[len(tail)-500:]
	}
	if tail != "" {
		how += ": " + tail
	}
	return "computesdk: command failed with " + how
}

// checked is res with a *CommandExitError when it failed and cfg checks.
func checked(cfg *execConfig, res *ExecResult, err error) (*ExecResult, error) {
	if err != nil || cfg.noCheck || res.TimedOut || (res.ExitCode == 0 && res.Signal == 0) {
		return res, err
	}
	return res, &CommandExitError{Stdout: res.Stdout, Stderr: res.Stderr, ExitCode: res.ExitCode,
		Signal: res.Signal, OOMKilled: res.OOMKilled, Result: res}
}

// execResume is the capability RunCommand needs: output past what fits inline
// is read on with AttachProcess.
const execResume = "exec.resume"

// run takes one unary call (RunCommand) when the command has no stdin and the
// provider can re-attach, and the Exec stream otherwise.
func (s *Sandbox) run(ctx context.Context, cfg *execConfig) (*ExecResult, error) {
	if !cfg.hasStdin && !cfg.interactive {
		resumable, err := s.Client().supports(ctx, s.Provider(), execResume)
		if err != nil {
			return nil, err
		}
		if resumable {
			res, err := s.runCommand(ctx, cfg)
			return checked(cfg, res, err)
		}
	}
	st, err := s.stream(ctx, cfg)
	if err != nil {
		return nil, err
	}
	res, err := st.Wait()
	return checked(cfg, res, err)
}

// runCommand reads output past what fits inline with AttachProcess, from where
// the answer stopped.
func (s *Sandbox) runCommand(ctx context.Context, cfg *execConfig) (*ExecResult, error) {
	resp, err := s.Client().Raw.Processes.RunCommand(ctx, &processv1.RunCommandRequest{
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
