package computesdk

import (
	"bytes"
	"context"
	"iter"
	"time"

	providerv1 "github.com/computesdk/computesdk/clients/go/api/provider/v1"
	sandboxv1 "github.com/computesdk/computesdk/clients/go/api/sandbox/v1"
)

// Resources asks for CPU, memory, disk and pids; zero means the provider's default.
type Resources struct {
	CPUCores  float64
	MemoryMB  uint64
	DiskMB    uint64
	PidsLimit uint32
	GPU       *GPU
}

// GPU asks for an accelerator.
type GPU struct {
	Type  string
	Count uint32
}

func (r Resources) proto() *sandboxv1.Resources {
	out := &sandboxv1.Resources{CpuCores: r.CPUCores, MemoryMb: r.MemoryMB, DiskMb: r.DiskMB,
		PidsLimit: r.PidsLimit}
	if r.GPU != nil {
		out.Gpu = &sandboxv1.GpuSpec{Enabled: true, Type: r.GPU.Type, Count: r.GPU.Count}
	}
	return out
}

func resourcesFrom(p *sandboxv1.Resources) Resources {
	r := Resources{CPUCores: p.GetCpuCores(), MemoryMB: p.GetMemoryMb(), DiskMB: p.GetDiskMb(),
		PidsLimit: p.GetPidsLimit()}
	if g := p.GetGpu(); g.GetEnabled() {
		r.GPU = &GPU{Type: g.GetType(), Count: g.GetCount()}
	}
	return r
}

// CreateOption configures Create, Compute and BatchCreate.
type CreateOption func(*createSpec)

// createSpec is a create as the caller gave it: the request, plus what the
// client does around it (an inline template to build first, an archive to
// import instead) and the volumes in the spec's shape, kept for Config.
type createSpec struct {
	req         *sandboxv1.CreateSandboxRequest
	definition  *TemplateDefinition
	importState []byte
	volumes     []Volume
}

func newSpec(provider string, opts []CreateOption) *createSpec {
	s := &createSpec{req: &sandboxv1.CreateSandboxRequest{Provider: provider, RequestId: randomID()}}
	for _, o := range opts {
		o(s)
	}
	return s
}

func WithTemplate(name string) CreateOption {
	return func(s *createSpec) { s.req.Template, s.definition = name, nil }
}

func WithMetadata(md map[string]string) CreateOption {
	return func(s *createSpec) { s.req.Metadata = md }
}

// WithTimeout sets how long the sandbox may live idle before the daemon reaps it.
func WithTimeout(d time.Duration) CreateOption {
	return func(s *createSpec) { s.req.TimeoutMs = uint64(d.Milliseconds()) }
}

func WithKeepAlive(on bool) CreateOption {
	return func(s *createSpec) { s.req.KeepAlive = on }
}

func WithEnv(env map[string]string) CreateOption {
	return func(s *createSpec) { s.req.Env = env }
}

// WithResources asks for resources. A request above the host is capped at
// the host; Config and GetStatus show the figures in force.
func WithResources(res Resources) CreateOption {
	return func(s *createSpec) { s.req.Resources = res.proto() }
}

// WithRequestID makes retries of one create idempotent (a random id is the default).
func WithRequestID(id string) CreateOption {
	return func(s *createSpec) { s.req.RequestId = id }
}

// WithFallbackProviders are tried in order when the provider is down.
func WithFallbackProviders(names ...string) CreateOption {
	return func(s *createSpec) { s.req.FallbackProviders = names }
}

// WithTemplateDefinition is the spec's inline template: Create builds it
// (Templates().Build; a definition built before is a cache hit, nothing runs)
// and starts the sandbox from it. A failed build is a *TemplateBuildError.
func WithTemplateDefinition(def *TemplateDefinition) CreateOption {
	return func(s *createSpec) { s.definition, s.req.Template = def, def.GetName() }
}

// Create makes a sandbox on provider ("" = the daemon's default) and returns once it is ready.
func (c *Client) Create(ctx context.Context, provider string, opts ...CreateOption) (*Sandbox, error) {
	spec := newSpec(provider, opts)
	if spec.importState != nil {
		sb, err := c.ImportState(ctx, bytes.NewReader(spec.importState), provider, spec.req.GetMetadata())
		if err != nil {
			return nil, err
		}
		sb.spec = spec
		return sb, nil
	}
	if err := c.buildInline(ctx, spec); err != nil {
		return nil, err
	}
	resp, err := c.Raw.Sandboxes.CreateSandbox(ctx, spec.req)
	if err != nil {
		return nil, err
	}
	return c.sandbox(resp.GetSandbox(), spec), nil
}

// buildInline builds the create's inline template, if it has one.
func (c *Client) buildInline(ctx context.Context, spec *createSpec) error {
	if spec.definition == nil {
		return nil
	}
	_, err := c.Templates().Build(ctx, spec.definition, nil, WithBuildProvider(spec.req.GetProvider()))
	return err
}

func (c *Client) sandbox(info *sandboxv1.Sandbox, spec *createSpec) *Sandbox {
	return &Sandbox{client: c, info: info, spec: spec}
}

// Get returns a handle to an existing sandbox.
func (c *Client) Get(ctx context.Context, sandboxID string) (*Sandbox, error) {
	resp, err := c.Raw.Sandboxes.GetSandbox(ctx, &sandboxv1.GetSandboxRequest{SandboxId: sandboxID})
	if err != nil {
		return nil, err
	}
	return c.sandbox(resp.GetSandbox(), nil), nil
}

// ListOption filters List.
type ListOption func(*sandboxv1.ListSandboxesRequest)

func ListByMetadata(md map[string]string) ListOption {
	return func(r *sandboxv1.ListSandboxesRequest) { r.Metadata = md }
}

func ListByProvider(name string) ListOption {
	return func(r *sandboxv1.ListSandboxesRequest) { r.Provider = name }
}

func ListByState(states ...State) ListOption {
	return func(r *sandboxv1.ListSandboxesRequest) {
		for _, s := range states {
			r.States = append(r.States, sandboxv1.State(s))
		}
	}
}

// List yields every matching sandbox, following pages as it goes.
func (c *Client) List(ctx context.Context, opts ...ListOption) iter.Seq2[*Sandbox, error] {
	return func(yield func(*Sandbox, error) bool) {
		req := &sandboxv1.ListSandboxesRequest{PageSize: 100}
		for _, o := range opts {
			o(req)
		}
		for {
			resp, err := c.Raw.Sandboxes.ListSandboxes(ctx, req)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, s := range resp.GetSandboxes() {
				if !yield(c.sandbox(s, nil), nil) {
					return
				}
			}
			if resp.GetNextPageToken() == "" {
				return
			}
			req.PageToken = resp.GetNextPageToken()
		}
	}
}

// Provider describes one back end and what it can do.
type Provider = providerv1.Provider

// Providers lists the daemon's back ends.
func (c *Client) Providers(ctx context.Context) ([]*Provider, error) {
	resp, err := c.Raw.Providers.ListProviders(ctx, &providerv1.ListProvidersRequest{})
	if err != nil {
		return nil, err
	}
	c.remember(resp.GetProviders())
	return resp.GetProviders(), nil
}
