package computesdk

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"iter"
	"slices"
	"sync"
	"time"

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
	mu        sync.Mutex
	client    *Client
	info      *sandboxv1.Sandbox
	spec      *createSpec // how it was created; nil for Get and List
	listeners []*Listener
}

func (s *Sandbox) ID() string { return s.Info().GetId() }

// Info is the sandbox as last seen (see Refresh).
func (s *Sandbox) Info() *sandboxv1.Sandbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

func (s *Sandbox) setInfo(info *sandboxv1.Sandbox) {
	s.mu.Lock()
	s.info = info
	s.mu.Unlock()
}

func (s *Sandbox) Provider() string            { return s.Info().GetProvider() }
func (s *Sandbox) Template() string            { return s.Info().GetTemplate() }
func (s *Sandbox) Metadata() map[string]string { return s.Info().GetMetadata() }

// Resources are the figures the sandbox runs with (as last seen; see Refresh).
func (s *Sandbox) Resources() Resources { return resourcesFrom(s.Info().GetResources()) }

// RequestedResources are what the create, Scale or SetResourceLimits asked
// for when the host capped them (Resources holds what is in force); nil
// when nothing was capped.
func (s *Sandbox) RequestedResources() *Resources {
	if r := s.Info().GetRequestedResources(); r != nil {
		res := resourcesFrom(r)
		return &res
	}
	return nil
}

// Client is the connection the sandbox's calls go through (Reconnect may
// replace a closed one).
func (s *Sandbox) Client() *Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.client
}

// Refresh re-reads the sandbox from the daemon.
func (s *Sandbox) Refresh(ctx context.Context) error {
	resp, err := s.Client().Raw.Sandboxes.GetSandbox(ctx, &sandboxv1.GetSandboxRequest{SandboxId: s.ID()})
	if err != nil {
		return err
	}
	s.setInfo(resp.GetSandbox())
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
	resp, err := s.Client().Raw.Sandboxes.GetSandboxStatus(ctx,
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

// Destroy removes the sandbox. Its listeners see the "destroyed" event, then stop.
func (s *Sandbox) Destroy(ctx context.Context, opts ...DestroyOption) error {
	req := &sandboxv1.DestroySandboxRequest{SandboxId: s.ID()}
	for _, o := range opts {
		o(req)
	}
	_, err := s.Client().Raw.Sandboxes.DestroySandbox(ctx, req)
	if err == nil {
		s.stopListeners(listenerGrace)
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
	resp, err := s.Client().Raw.Sandboxes.CloneSandbox(ctx, req)
	if err != nil {
		return nil, err
	}
	return s.Client().sandbox(resp.GetSandbox(), nil), nil
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
	resp, err := s.Client().Raw.Sandboxes.MigrateSandbox(ctx, req)
	if err != nil {
		return nil, err
	}
	return s.Client().sandbox(resp.GetSandbox(), nil), nil
}

// Events yields this sandbox's lifecycle events (see Client.Events).
func (s *Sandbox) Events(ctx context.Context, opts ...EventOption) iter.Seq2[Event, error] {
	return s.Client().Events(ctx, append([]EventOption{ForSandboxes(s.ID())}, opts...)...)
}

// ---------------------------------------------------------------- config, reconnect

// SandboxConfig is what the sandbox was created with, as given, except
// Resources: always the figures it runs with now (the provider's defaults
// where none were asked for, the host's cap where more were), so that
//
//	sb.Restart(ctx, computesdk.RestartWithResources(computesdk.Resources{
//		MemoryMB: sb.Config().Resources.MemoryMB * 2}))
//
// works whatever the create said. A sandbox from Get or List has no create
// options: its provider, template and metadata are as the daemon reports them.
type SandboxConfig struct {
	Provider           string
	Template           string
	TemplateDefinition *TemplateDefinition
	Metadata           map[string]string
	Env                map[string]string
	Timeout            time.Duration
	KeepAlive          bool
	Resources          Resources
	Volumes            []Volume
	RestoreFrom        string
	FallbackProviders  []string
}

// Config returns the sandbox's create options (see SandboxConfig).
func (s *Sandbox) Config() SandboxConfig {
	s.mu.Lock()
	info, spec := s.info, s.spec
	s.mu.Unlock()
	cfg := SandboxConfig{Provider: info.GetProvider(), Template: info.GetTemplate(), Metadata: info.GetMetadata(),
		Timeout: time.Duration(info.GetTimeoutMs()) * time.Millisecond, KeepAlive: info.GetKeepAlive(),
		Resources: resourcesFrom(info.GetResources())}
	if spec != nil {
		req := spec.req
		if req.GetProvider() != "" {
			cfg.Provider = req.GetProvider()
		}
		if req.GetTemplate() != "" {
			cfg.Template = req.GetTemplate()
		}
		if req.GetMetadata() != nil {
			cfg.Metadata = req.GetMetadata()
		}
		cfg.TemplateDefinition, cfg.Env, cfg.Volumes = spec.definition, req.GetEnv(), spec.volumes
		cfg.RestoreFrom, cfg.FallbackProviders = req.GetRestoreFrom(), req.GetFallbackProviders()
	}
	return cfg
}

// Reconnect is the spec's recovery call after a "connection-lost" error: it
// re-opens the connection if it was closed, waits for the daemon to answer
// (as every call does, up to ctx's deadline), re-reads the sandbox and makes
// its listeners resume at once after the last event they saw.
func (s *Sandbox) Reconnect(ctx context.Context) error {
	c := s.Client()
	if c.isClosed() {
		fresh, err := c.reopen(ctx)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.client = fresh
		s.mu.Unlock()
	}
	// A daemon going down cancels calls in flight: wait for the one coming up.
	for backoff := 50 * time.Millisecond; ; backoff = min(backoff*2, 2*time.Second) {
		err := s.Refresh(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil || !daemonGone(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
	}
	s.mu.Lock()
	ls := slices.Clone(s.listeners)
	s.mu.Unlock()
	for _, l := range ls {
		l.resume()
	}
	return nil
}

// ---------------------------------------------------------------- helpers

func isEOF(err error) bool { return errors.Is(err, io.EOF) }

// receiver is a server stream's receiving side.
type receiver[R any] interface{ Recv() (R, error) }

// received yields what a server stream opened by open sends, each turned by
// pick, until it ends; stopping early cancels it, and the error of a stream
// cut by ctx is not one.
func received[R, T any](ctx context.Context, open func(context.Context) (receiver[R], error), pick func(R) T) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var zero T
		st, err := open(ctx)
		if err != nil {
			yield(zero, err)
			return
		}
		for {
			resp, err := st.Recv()
			if err != nil {
				if !isEOF(err) && ctx.Err() == nil {
					yield(zero, err)
				}
				return
			}
			if !yield(pick(resp), nil) {
				return
			}
		}
	}
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
