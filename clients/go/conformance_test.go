package computesdk_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	computesdk "github.com/computesdk/computesdk/clients/go"
)

// The scenario list every client runs: tests/conformance/scenarios.json.
type scenarioFile struct {
	Scenarios []struct {
		Name  string `json:"name"`
		Steps []step `json:"steps"`
	} `json:"scenarios"`
}

type step struct {
	Op          string            `json:"op"`
	Provider    string            `json:"provider"`
	Template    string            `json:"template"`
	Metadata    map[string]string `json:"metadata"`
	Env         map[string]string `json:"env"`
	SandboxID   string            `json:"sandbox_id"`
	Command     string            `json:"command"`
	Argv        []string          `json:"argv"`
	Cwd         string            `json:"cwd"`
	Stdin       *string           `json:"stdin"`
	StdinRepeat *struct {
		Text  string `json:"text"`
		Count int    `json:"count"`
	} `json:"stdin_repeat"`
	Send          []string `json:"send"`
	Path          string   `json:"path"`
	Content       *string  `json:"content"`
	ContentBase64 *string  `json:"content_base64"`
	Type          string   `json:"type"`
	Check         *bool    `json:"check"`
	// Snapshots and saved values ("$snapshot", "$state", "$export").
	ID                 string              `json:"id"`
	Name               string              `json:"name"`
	Description        string              `json:"description"`
	Volumes            []computesdk.Volume `json:"volumes"`
	TemplateDefinition *templateDefinition `json:"template_definition"`
	Resources          *map[string]float64 `json:"resources"`
	RestoreFrom        string              `json:"restore_from"`
	ImportState        string              `json:"import_state"`
	RawExpect          json.RawMessage     `json:"expect"`
	Expect             expect              `json:"-"`
	Error              *stepError          `json:"error"`
}

type expect struct {
	State            string            `json:"state"`
	Template         string            `json:"template"`
	Metadata         map[string]string `json:"metadata"`
	Stdout           *string           `json:"stdout"`
	Stderr           *string           `json:"stderr"`
	ExitCode         *int              `json:"exit_code"`
	Signal           *int              `json:"signal"`
	MinStdoutChunks  int               `json:"min_stdout_chunks"`
	Size             *uint64           `json:"size"`
	Content          *string           `json:"content"`
	ContentBase64    *string           `json:"content_base64"`
	Names            []string          `json:"names"`
	IsDir            *bool             `json:"is_dir"`
	Count            *int              `json:"count"`
	TypesInOrder     []string          `json:"types_in_order"`
	ConnectionStates []string          `json:"connection_states"`
}

// runner carries one scenario's state between its steps.
type runner struct {
	t       *testing.T
	ctx     context.Context
	client  *computesdk.Client
	sandbox *computesdk.Sandbox

	saved map[string]any // $snapshot, $state, $export

	mu     sync.Mutex
	events []computesdk.Event
	states []string
}

func TestConformance(t *testing.T) {
	raw, err := os.ReadFile("../../tests/conformance/scenarios.json")
	if err != nil {
		t.Fatal(err)
	}
	var file scenarioFile
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Scenarios) == 0 {
		t.Fatal("no scenarios")
	}
	for _, sc := range file.Scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r := &runner{t: t, ctx: ctx, client: connect(t), saved: map[string]any{}}
			r.client.OnConnectionChange(func(s computesdk.ConnState) {
				r.mu.Lock()
				r.states = append(r.states, s.String())
				r.mu.Unlock()
			})
			for i, st := range sc.Steps {
				// An object expect is the common shape; health_check's is a bare bool.
				if len(st.RawExpect) > 0 && st.RawExpect[0] == '{' {
					if err := json.Unmarshal(st.RawExpect, &st.Expect); err != nil {
						t.Fatalf("step %d: expect: %v", i, err)
					}
				}
				err := r.run(st)
				if st.Error != nil {
					checkError(t, i, st, err)
				} else if err != nil {
					t.Fatalf("step %d (%s): %v", i, st.Op, err)
				}
			}
		})
	}
}

func checkError(t *testing.T, i int, st step, err error) {
	t.Helper()
	if want := st.Error; want.Kind == "CommandExitError" {
		var ce *computesdk.CommandExitError
		if !errors.As(err, &ce) {
			t.Fatalf("step %d (%s): want a CommandExitError, got %v", i, st.Op, err)
		}
		if ce.Result == nil || ce.Result.ExitCode != ce.ExitCode {
			t.Fatalf("step %d (%s): the error's result: %+v", i, st.Op, ce.Result)
		}
		for what, ok := range map[string]bool{
			"exit_code": want.ExitCode == nil || *want.ExitCode == ce.ExitCode,
			"signal":    want.Signal == nil || *want.Signal == ce.Signal,
			"stdout":    want.Stdout == nil || *want.Stdout == string(ce.Stdout),
			"stderr":    want.Stderr == nil || *want.Stderr == string(ce.Stderr),
		} {
			if !ok {
				t.Fatalf("step %d (%s): CommandExitError %s: got %+v, want %+v", i, st.Op, what, ce, want)
			}
		}
		return
	} else if want.Kind != "" {
		t.Fatalf("step %d: unknown error kind %q", i, want.Kind)
	}
	var e *computesdk.Error
	if !errors.As(err, &e) {
		t.Fatalf("step %d (%s): want %s error, got %v", i, st.Op, st.Error.Reason, err)
	}
	if !errors.Is(err, &computesdk.Error{Reason: st.Error.Reason}) {
		t.Fatalf("step %d (%s): want reason %s, got %s (%v)", i, st.Op, st.Error.Reason, e.Reason, err)
	}
	if got := strings.ToUpper(snake(e.Code.String())); got != st.Error.Code {
		t.Fatalf("step %d (%s): want code %s, got %s", i, st.Op, st.Error.Code, got)
	}
}

// snake turns grpc-go's code names ("NotFound") into the canonical ones ("NOT_FOUND").
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (r *runner) execOptions(st step) []computesdk.ExecOption {
	var opts []computesdk.ExecOption
	if st.Env != nil {
		opts = append(opts, computesdk.WithCommandEnv(st.Env))
	}
	if st.Cwd != "" {
		opts = append(opts, computesdk.WithCwd(st.Cwd))
	}
	if st.Stdin != nil {
		opts = append(opts, computesdk.WithStdin([]byte(*st.Stdin)))
	}
	if st.StdinRepeat != nil {
		opts = append(opts, computesdk.WithStdin(bytes.Repeat([]byte(st.StdinRepeat.Text), st.StdinRepeat.Count)))
	}
	return opts
}

func (r *runner) stream(st step, opts ...computesdk.ExecOption) (*computesdk.ExecStream, error) {
	opts = append(r.execOptions(st), opts...)
	if st.Argv != nil {
		return r.sandbox.StreamArgv(r.ctx, st.Argv, opts...)
	}
	return r.sandbox.Stream(r.ctx, st.Command, opts...)
}

func (r *runner) run(st step) error {
	t, ctx := r.t, r.ctx
	switch st.Op {
	case "create":
		sb, err := r.client.Create(ctx, st.Provider, r.createOptions(st)...)
		if err != nil {
			return err
		}
		r.sandbox = sb
	case "destroy":
		return r.sandbox.Destroy(ctx)
	case "status":
		s, err := r.sandbox.GetStatus(ctx)
		if err != nil {
			return err
		}
		eq(t, st, "state", s.State.String(), st.Expect.State)
	case "get":
		id := st.SandboxID
		if id == "" {
			id = r.sandbox.ID()
		}
		sb, err := r.client.Get(ctx, id)
		if err != nil {
			return err
		}
		eq(t, st, "state", computesdk.State(sb.Info().GetState()).String(), st.Expect.State)
		if st.Expect.Template != "" {
			eq(t, st, "template", sb.Template(), st.Expect.Template)
		}
		for k, v := range st.Expect.Metadata {
			eq(t, st, "metadata."+k, sb.Metadata()[k], v)
		}
	case "exec":
		opts := r.execOptions(st)
		if st.Check != nil && !*st.Check {
			opts = append(opts, computesdk.NoCheck())
		}
		var res *computesdk.ExecResult
		var err error
		if st.Argv != nil {
			res, err = r.sandbox.ExecArgv(ctx, st.Argv, opts...)
		} else {
			res, err = r.sandbox.Exec(ctx, st.Command, opts...)
		}
		if err != nil {
			return err
		}
		r.checkExec(st, res.Stdout, res.Stderr, res.ExitCode, res.Signal)
	case "exec_stream":
		es, err := r.stream(st)
		if err != nil {
			return err
		}
		var out, errOut []byte
		chunks := 0
		for c, err := range es.Output() {
			if err != nil {
				return err
			}
			if c.Stderr {
				errOut = append(errOut, c.Data...)
			} else {
				if c.Offset != uint64(len(out)) {
					t.Fatalf("%s: stdout chunk at offset %d, want %d", st.Op, c.Offset, len(out))
				}
				out = append(out, c.Data...)
				chunks++
			}
		}
		if es.Exited() == nil {
			t.Fatalf("%s: no exit status", st.Op)
		}
		r.checkExec(st, out, errOut, int(es.Exited().GetExitCode()), int(es.Exited().GetSignal()))
		if chunks < st.Expect.MinStdoutChunks {
			t.Fatalf("%s: stdout came in %d chunks, want at least %d (not streamed)", st.Op, chunks, st.Expect.MinStdoutChunks)
		}
	case "exec_interactive":
		es, err := r.stream(st, computesdk.Interactive())
		if err != nil {
			return err
		}
		for _, line := range st.Send {
			if err := es.SendStdin([]byte(line)); err != nil {
				return err
			}
		}
		if err := es.CloseStdin(); err != nil {
			return err
		}
		res, err := es.Wait()
		if err != nil {
			return err
		}
		r.checkExec(st, res.Stdout, res.Stderr, res.ExitCode, res.Signal)
	case "write_file":
		data := content(t, st.Content, st.ContentBase64)
		info, err := r.sandbox.WriteFile(ctx, st.Path, data)
		if err != nil {
			return err
		}
		if st.Expect.Size != nil {
			eq(t, st, "size", info.Size, *st.Expect.Size)
		}
	case "read_file":
		data, err := r.sandbox.ReadFile(ctx, st.Path)
		if err != nil {
			return err
		}
		if want := content(t, st.Expect.Content, st.Expect.ContentBase64); !bytes.Equal(data, want) {
			t.Fatalf("read_file %s: got %q, want %q", st.Path, data, want)
		}
	case "list_dir":
		entries, err := r.sandbox.ListDir(ctx, st.Path)
		if err != nil {
			return err
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name)
		}
		sort.Strings(names)
		if !slices.Equal(names, st.Expect.Names) {
			t.Fatalf("list_dir %s: got %v, want %v", st.Path, names, st.Expect.Names)
		}
	case "stat":
		info, err := r.sandbox.Stat(ctx, st.Path)
		if err != nil {
			return err
		}
		if st.Expect.IsDir != nil {
			eq(t, st, "is_dir", info.IsDir, *st.Expect.IsDir)
		}
	case "remove":
		return r.sandbox.Remove(ctx, st.Path, false)
	case "subscribe":
		go func() {
			for ev, err := range r.sandbox.Events(ctx) {
				if err != nil {
					return
				}
				r.mu.Lock()
				r.events = append(r.events, ev)
				r.mu.Unlock()
			}
		}()
	case "wait_event":
		deadline := time.Now().Add(30 * time.Second)
		for !r.seen(st.Type) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q event within 30s", st.Type)
			}
			time.Sleep(20 * time.Millisecond)
		}
	case "restart_daemon":
		return testDaemon.restart()
	case "expect_events":
		r.mu.Lock()
		defer r.mu.Unlock()
		var types []string
		for i, ev := range r.events {
			if i > 0 && ev.Sequence <= r.events[i-1].Sequence {
				t.Fatalf("events out of order or repeated: %d after %d", ev.Sequence, r.events[i-1].Sequence)
			}
			types = append(types, ev.Type)
		}
		if !subsequence(st.Expect.TypesInOrder, types) {
			t.Fatalf("event types %v do not contain %v in order", types, st.Expect.TypesInOrder)
		}
		if !subsequence(st.Expect.ConnectionStates, r.states) {
			t.Fatalf("connection states %v do not contain %v in order", r.states, st.Expect.ConnectionStates)
		}
	case "snapshot_create":
		id, err := r.sandbox.CreateSnapshot(ctx, st.Name, st.Description)
		if err != nil {
			return err
		}
		r.saved["$snapshot"] = id
	case "snapshot_list":
		list, err := r.sandbox.ListSnapshots(ctx)
		if err != nil {
			return err
		}
		names := []string{}
		for _, sn := range list {
			names = append(names, sn.GetName())
		}
		if st.Expect.Count != nil {
			eq(t, st, "count", len(list), *st.Expect.Count)
		}
		if st.Expect.Names != nil && !slices.Equal(names, st.Expect.Names) {
			t.Fatalf("snapshot_list: names %v, want %v", names, st.Expect.Names)
		}
	case "snapshot_restore":
		return r.sandbox.RestoreSnapshot(ctx, r.value(st.ID).(string))
	case "snapshot_delete":
		return r.sandbox.DeleteSnapshot(ctx, r.value(st.ID).(string))
	case "save_state":
		id, err := r.sandbox.SaveState(ctx, st.Name)
		if err != nil {
			return err
		}
		r.saved["$state"] = id
		t.Cleanup(func() { _ = r.client.DeleteState(context.Background(), id) })
	case "export_state":
		data, err := r.sandbox.ExportState(ctx)
		if err != nil {
			return err
		}
		r.saved["$export"] = data
	case "health_check":
		ok, err := r.sandbox.HealthCheck(ctx)
		if err != nil {
			return err
		}
		var want bool
		if err := json.Unmarshal(st.RawExpect, &want); err != nil {
			t.Fatalf("health_check: expect %s: %v", st.RawExpect, err)
		}
		eq(t, st, "healthy", ok, want)
	case "resource_usage":
		u, err := r.sandbox.GetResourceUsage(ctx)
		if err != nil {
			return err
		}
		checkPaths(t, st, *u)
	case "config":
		checkPaths(t, st, r.sandbox.Config())
	case "volume_delete":
		return r.client.Volumes().Delete(ctx, st.Name)
	case "template_delete":
		return r.client.Templates().Delete(ctx, st.Name)
	default:
		t.Fatalf("unknown op %q", st.Op)
	}
	return nil
}

func (r *runner) seen(typ string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.ContainsFunc(r.events, func(e computesdk.Event) bool { return e.Type == typ })
}

func (r *runner) checkExec(st step, out, errOut []byte, exitCode, signal int) {
	if st.Expect.Stdout != nil {
		eq(r.t, st, "stdout", string(out), *st.Expect.Stdout)
	}
	if st.Expect.Stderr != nil {
		eq(r.t, st, "stderr", string(errOut), *st.Expect.Stderr)
	}
	if st.Expect.ExitCode != nil {
		eq(r.t, st, "exit_code", exitCode, *st.Expect.ExitCode)
	}
	if st.Expect.Signal != nil {
		eq(r.t, st, "signal", signal, *st.Expect.Signal)
	}
}

func content(t *testing.T, text, b64 *string) []byte {
	if b64 != nil {
		b, err := base64.StdEncoding.DecodeString(*b64)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if text != nil {
		return []byte(*text)
	}
	return nil
}

func eq[T comparable](t *testing.T, st step, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: %s = %v, want %v", st.Op, what, got, want)
	}
}

func subsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}
