package computesdk

import (
	"context"
	"errors"
	"iter"
	"time"

	"google.golang.org/grpc/codes"

	groupv1 "github.com/computesdk/computesdk/clients/go/api/group/v1"
	poolv1 "github.com/computesdk/computesdk/clients/go/api/pool/v1"
	sandboxv1 "github.com/computesdk/computesdk/clients/go/api/sandbox/v1"
)

// itemError turns the code name and reason of one failed item into *Error.
func itemError(code, reason, message string) *Error {
	c := codes.Unknown
	for i := codes.OK; i <= codes.Unauthenticated; i++ {
		if snakeUpper(i.String()) == code {
			c = i
		}
	}
	return &Error{Code: c, Reason: reason, Message: message}
}

func snakeUpper(s string) string {
	out := make([]byte, 0, len(s)+4)
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if i > 0 && ch >= 'A' && ch <= 'Z' {
			out = append(out, '_')
		}
		if ch >= 'a' && ch <= 'z' {
			ch -= 'a' - 'A'
		}
		out = append(out, ch)
	}
	return string(out)
}

// ---------------------------------------------------------------- batch, reset, env

// BatchItem is one create of a batch.
type BatchItem struct {
	Provider string
	Options  []CreateOption
}

// BatchResult is one item's outcome: a sandbox or the error it met.
type BatchResult struct {
	Sandbox *Sandbox
	Err     error
}

// BatchCreate creates many sandboxes in one call; a failed item does not fail the others.
func (c *Client) BatchCreate(ctx context.Context, items []BatchItem) ([]BatchResult, error) {
	req := &sandboxv1.BatchCreateSandboxesRequest{}
	specs := make([]*createSpec, 0, len(items))
	for _, it := range items {
		spec := newSpec(it.Provider, it.Options)
		if spec.importState != nil {
			return nil, errors.New("computesdk: WithImportState makes one sandbox: use Create, not BatchCreate")
		}
		if err := c.buildInline(ctx, spec); err != nil {
			return nil, err
		}
		specs = append(specs, spec)
		req.Requests = append(req.Requests, spec.req)
	}
	resp, err := c.Raw.Sandboxes.BatchCreateSandboxes(ctx, req)
	if err != nil {
		return nil, err
	}
	out := make([]BatchResult, 0, len(resp.GetResults()))
	// Results come in the order of the requests.
	for i, r := range resp.GetResults() {
		if e := r.GetError(); e != nil {
			out = append(out, BatchResult{Err: itemError(e.GetCode(), e.GetReason(), e.GetMessage())})
		} else {
			out = append(out, BatchResult{Sandbox: c.sandbox(r.GetSandbox(), specs[i])})
		}
	}
	return out, nil
}

// ListActive yields every running sandbox.
func (c *Client) ListActive(ctx context.Context) iter.Seq2[*Sandbox, error] {
	return c.List(ctx, ListByState(StateRunning))
}

// WithPool makes create take (true) or never take (false) a warm pooled sandbox;
// without it the daemon's default applies.
func WithPool(use bool) CreateOption {
	return func(s *createSpec) {
		s.req.PoolPolicy = sandboxv1.PoolPolicy_POOL_POLICY_NEVER
		if use {
			s.req.PoolPolicy = sandboxv1.PoolPolicy_POOL_POLICY_ALLOW
		}
	}
}

// Reset kills every process; hard also returns the files to the template's state.
func (s *Sandbox) Reset(ctx context.Context, hard bool) error {
	resp, err := s.Client().Raw.Sandboxes.ResetSandbox(ctx, &sandboxv1.ResetSandboxRequest{SandboxId: s.ID(), Hard: hard})
	if err != nil {
		return err
	}
	s.setInfo(resp.GetSandbox())
	return nil
}

// SetEnv sets and unsets variables for later commands; it survives a daemon
// restart. It returns the whole environment now in effect.
func (s *Sandbox) SetEnv(ctx context.Context, env map[string]string, unset ...string) (map[string]string, error) {
	resp, err := s.Client().Raw.Sandboxes.SetSandboxEnv(ctx, &sandboxv1.SetSandboxEnvRequest{SandboxId: s.ID(), Env: env, Unset: unset})
	if err != nil {
		return nil, err
	}
	return resp.GetEnv(), nil
}

// RestartOption changes what a restart starts with.
type RestartOption func(*sandboxv1.RestartSandboxRequest)

// RestartWithTemplate starts from another template's files.
func RestartWithTemplate(name string) RestartOption {
	return func(r *sandboxv1.RestartSandboxRequest) { r.Template = name }
}

// RestartWithEnv replaces the environment.
func RestartWithEnv(env map[string]string) RestartOption {
	return func(r *sandboxv1.RestartSandboxRequest) { r.Env = env }
}

// RestartWithResources replaces the resources.
func RestartWithResources(res Resources) RestartOption {
	return func(r *sandboxv1.RestartSandboxRequest) { r.Resources = res.proto() }
}

// Restart stops every process and starts the sandbox again, keeping its id.
func (s *Sandbox) Restart(ctx context.Context, opts ...RestartOption) error {
	req := &sandboxv1.RestartSandboxRequest{SandboxId: s.ID()}
	for _, o := range opts {
		o(req)
	}
	resp, err := s.Client().Raw.Sandboxes.RestartSandbox(ctx, req)
	if err != nil {
		return err
	}
	s.setInfo(resp.GetSandbox())
	return nil
}

// Release gives a sandbox acquired from a pool back to it.
func (s *Sandbox) Release(ctx context.Context, hard bool) (bool, error) {
	return s.Client().Pools().Release(ctx, s.ID(), hard)
}

// URL is a URL on the host's loopback that forwards to this sandbox's port.
func (s *Sandbox) URL(ctx context.Context, port int) (string, error) {
	return s.Client().Networks().URL(ctx, s.ID(), port)
}

// ---------------------------------------------------------------- pools

// PoolSpec is what a pool keeps warm.
type PoolSpec struct {
	Name, Provider, Template string
	Min, Max                 int
	Resources                Resources
	Env                      map[string]string
}

// Pool is a pool's spec and counters.
type Pool = poolv1.Pool

// Pools manages warm pools.
type Pools struct{ c *Client }

func (c *Client) Pools() *Pools { return &Pools{c} }

func (p *Pools) Create(ctx context.Context, spec PoolSpec) (*Pool, error) {
	resp, err := p.c.Raw.Pools.CreatePool(ctx, &poolv1.CreatePoolRequest{Spec: &poolv1.PoolSpec{
		Name: spec.Name, Provider: spec.Provider, Template: spec.Template,
		Min: uint32(spec.Min), Max: uint32(spec.Max), Resources: spec.Resources.proto(), Env: spec.Env}})
	if err != nil {
		return nil, err
	}
	return resp.GetPool(), nil
}

func (p *Pools) Get(ctx context.Context, name string) (*Pool, error) {
	resp, err := p.c.Raw.Pools.GetPool(ctx, &poolv1.GetPoolRequest{Name: name})
	if err != nil {
		return nil, err
	}
	return resp.GetPool(), nil
}

func (p *Pools) List(ctx context.Context) ([]*Pool, error) {
	resp, err := p.c.Raw.Pools.ListPools(ctx, &poolv1.ListPoolsRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetPools(), nil
}

func (p *Pools) Delete(ctx context.Context, name string) error {
	_, err := p.c.Raw.Pools.DeletePool(ctx, &poolv1.DeletePoolRequest{Name: name})
	return err
}

// Acquire hands out a healthy warm sandbox, waiting up to wait when all are leased.
func (p *Pools) Acquire(ctx context.Context, name string, metadata map[string]string, wait time.Duration) (*Sandbox, error) {
	resp, err := p.c.Raw.Pools.AcquireSandbox(ctx, &poolv1.AcquireSandboxRequest{
		Pool: name, Metadata: metadata, WaitTimeoutMs: uint64(wait.Milliseconds())})
	if err != nil {
		return nil, err
	}
	return p.c.sandbox(resp.GetSandbox(), nil), nil
}

// Release resets a leased sandbox and returns it to its pool (true), or destroys it (false).
func (p *Pools) Release(ctx context.Context, sandboxID string, hard bool) (bool, error) {
	resp, err := p.c.Raw.Pools.ReleaseSandbox(ctx, &poolv1.ReleaseSandboxRequest{SandboxId: sandboxID, Hard: hard})
	if err != nil {
		return false, err
	}
	return resp.GetReturned(), nil
}

// ---------------------------------------------------------------- groups

// Groups manages named groups of sandboxes.
type Groups struct{ c *Client }

func (c *Client) Groups() *Groups { return &Groups{c} }

func (g *Groups) Create(ctx context.Context, name string, sandboxIDs ...string) ([]string, error) {
	resp, err := g.c.Raw.Groups.CreateGroup(ctx, &groupv1.CreateGroupRequest{Name: name, SandboxIds: sandboxIDs})
	if err != nil {
		return nil, err
	}
	return resp.GetGroup().GetSandboxIds(), nil
}

func (g *Groups) Get(ctx context.Context, name string) ([]string, error) {
	resp, err := g.c.Raw.Groups.GetGroup(ctx, &groupv1.GetGroupRequest{Name: name})
	if err != nil {
		return nil, err
	}
	return resp.GetGroup().GetSandboxIds(), nil
}

func (g *Groups) List(ctx context.Context) (map[string][]string, error) {
	resp, err := g.c.Raw.Groups.ListGroups(ctx, &groupv1.ListGroupsRequest{})
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, gr := range resp.GetGroups() {
		out[gr.GetName()] = gr.GetSandboxIds()
	}
	return out, nil
}

func (g *Groups) Add(ctx context.Context, name string, sandboxIDs ...string) ([]string, error) {
	resp, err := g.c.Raw.Groups.AddGroupMembers(ctx, &groupv1.AddGroupMembersRequest{Name: name, SandboxIds: sandboxIDs})
	if err != nil {
		return nil, err
	}
	return resp.GetGroup().GetSandboxIds(), nil
}

func (g *Groups) Remove(ctx context.Context, name string, sandboxIDs ...string) ([]string, error) {
	resp, err := g.c.Raw.Groups.RemoveGroupMembers(ctx, &groupv1.RemoveGroupMembersRequest{Name: name, SandboxIds: sandboxIDs})
	if err != nil {
		return nil, err
	}
	return resp.GetGroup().GetSandboxIds(), nil
}

// MemberResult is one member's outcome of a broadcast.
type MemberResult struct {
	SandboxID string
	Result    *ExecResult
	Err       error
}

// Broadcast runs a shell command line on every member at once and yields each
// member's outcome as it finishes.
func (g *Groups) Broadcast(ctx context.Context, name, command string, opts ...ExecOption) iter.Seq2[MemberResult, error] {
	return func(yield func(MemberResult, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		cfg := newExec(command, nil, opts)
		st, err := g.c.Raw.Groups.Broadcast(ctx, &groupv1.BroadcastRequest{Name: name, Command: &cfg.cmd})
		if err != nil {
			yield(MemberResult{}, err)
			return
		}
		for {
			resp, err := st.Recv()
			if err != nil {
				if !isEOF(err) {
					yield(MemberResult{}, err)
				}
				return
			}
			m := MemberResult{SandboxID: resp.GetSandboxId()}
			if e := resp.GetError(); e != nil {
				m.Err = itemError(e.GetCode(), e.GetReason(), e.GetMessage())
			} else {
				r := resp.GetResult()
				m.Result = resultFrom("", r.GetStdout(), r.GetStderr(), r.GetExited())
			}
			if !yield(m, nil) {
				return
			}
		}
	}
}

// DestroyAll destroys every member and forgets the group.
func (g *Groups) DestroyAll(ctx context.Context, name string) ([]string, error) {
	resp, err := g.c.Raw.Groups.DeleteGroup(ctx, &groupv1.DeleteGroupRequest{Name: name, DestroyMembers: true})
	if err != nil {
		return nil, err
	}
	return resp.GetDestroyedSandboxIds(), nil
}

// Delete forgets the group; the members stay.
func (g *Groups) Delete(ctx context.Context, name string) error {
	_, err := g.c.Raw.Groups.DeleteGroup(ctx, &groupv1.DeleteGroupRequest{Name: name})
	return err
}
