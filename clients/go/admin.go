package computesdk

import (
	"context"
	"time"

	adminv1 "github.com/computesdk/computesdk/clients/go/api/admin/v1"
)

// Token describes a bearer token, never with its secret.
type Token = adminv1.Token

// Scope is what a token may do within its tenant; each includes the one before.
type Scope = adminv1.Scope

const (
	ScopeRead  = adminv1.Scope_SCOPE_READ  // Get, List, Read, Stat, Subscribe, Monitor, Attach...
	ScopeWrite = adminv1.Scope_SCOPE_WRITE // also create, exec, write, destroy
	ScopeAdmin = adminv1.Scope_SCOPE_ADMIN // also the tenant's own tokens, over TCP
)

// Quota bounds one tenant; zero in a field means no bound.
type Quota = adminv1.Quota

// TenantUsage is what a tenant holds now, in a Quota's units.
type TenantUsage = adminv1.Usage

// Admin manages who may call the daemon over the network: tokens and quotas.
// On the Unix socket every tenant is in reach; over TCP an admin-scope token
// reaches its own tenant only, and SetQuota needs the socket.
type Admin struct{ c *Client }

func (c *Client) Admin() *Admin { return &Admin{c} }

// TokenOption configures CreateToken.
type TokenOption func(*adminv1.CreateTokenRequest)

// TokenDescription says what the token is for.
func TokenDescription(text string) TokenOption {
	return func(r *adminv1.CreateTokenRequest) { r.Description = text }
}

// TokenTTL makes the token expire after d (default: never), to the second.
func TokenTTL(d time.Duration) TokenOption {
	return func(r *adminv1.CreateTokenRequest) { r.TtlSeconds = uint64((d + time.Second - 1) / time.Second) }
}

// CreateToken makes a token for tenant with scope and returns it with its
// secret, the string to pass to WithToken. The daemon keeps only a hash: the
// secret cannot be had again.
func (a *Admin) CreateToken(ctx context.Context, tenant string, scope Scope, opts ...TokenOption) (*Token, string, error) {
	req := &adminv1.CreateTokenRequest{Tenant: tenant, Scope: scope}
	for _, o := range opts {
		o(req)
	}
	resp, err := a.c.Raw.Admin.CreateToken(ctx, req)
	if err != nil {
		return nil, "", err
	}
	return resp.GetToken(), resp.GetSecret(), nil
}

// ListTokens lists tenant's tokens, revoked ones included ("" = every tenant in reach).
func (a *Admin) ListTokens(ctx context.Context, tenant string) ([]*Token, error) {
	resp, err := a.c.Raw.Admin.ListTokens(ctx, &adminv1.ListTokensRequest{Tenant: tenant})
	if err != nil {
		return nil, err
	}
	return resp.GetTokens(), nil
}

// RevokeToken makes a token useless at once; calls in flight finish.
func (a *Admin) RevokeToken(ctx context.Context, id string) (*Token, error) {
	resp, err := a.c.Raw.Admin.RevokeToken(ctx, &adminv1.RevokeTokenRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return resp.GetToken(), nil
}

// SetQuota replaces tenant's quota (socket only) and returns the one in force.
func (a *Admin) SetQuota(ctx context.Context, tenant string, q *Quota) (*Quota, error) {
	resp, err := a.c.Raw.Admin.SetQuota(ctx, &adminv1.SetQuotaRequest{Tenant: tenant, Quota: q})
	if err != nil {
		return nil, err
	}
	return resp.GetQuota(), nil
}

// GetQuota returns tenant's quota and what it uses now.
func (a *Admin) GetQuota(ctx context.Context, tenant string) (*Quota, *TenantUsage, error) {
	resp, err := a.c.Raw.Admin.GetQuota(ctx, &adminv1.GetQuotaRequest{Tenant: tenant})
	if err != nil {
		return nil, nil, err
	}
	return resp.GetQuota(), resp.GetUsage(), nil
}
