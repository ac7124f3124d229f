// Package computesdk is the Go client of computesdkd, the sandbox-management
// daemon. It wraps the generated gRPC stubs (still reachable as Client.Raw)
// with context-first calls, functional options, typed errors and streams as
// iterators.
//
//	sb, err := computesdk.Compute(ctx, "local", computesdk.WithTemplate("python"))
//	res, err := sb.Exec(ctx, "python --version")
//	err = sb.Destroy(ctx)
//
// Connect (and Compute) find the daemon on its Unix socket, or over TCP with
// TLS and a bearer token: WithAddress, WithToken, WithCA, WithClientCert,
// WithInsecure, WithServerName, or the same from the environment
// (COMPUTESDK_ADDRESS, COMPUTESDK_TOKEN, COMPUTESDK_CA, COMPUTESDK_CLIENT_CERT,
// COMPUTESDK_CLIENT_KEY, COMPUTESDK_INSECURE=1):
//
//	export COMPUTESDK_ADDRESS=sandboxes.internal:7443 COMPUTESDK_CA=/etc/computesdk/ca.pem
//	export COMPUTESDK_TOKEN=$(computesdk --socket /run/computesdk/computesdkd.sock token create --tenant me --scope write)
//
// Calls wait for a restarting daemon and event streams resume after it, over
// either transport.
package computesdk

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	adminv1 "github.com/computesdk/computesdk/clients/go/api/admin/v1"
	eventsv1 "github.com/computesdk/computesdk/clients/go/api/events/v1"
	filesystemv1 "github.com/computesdk/computesdk/clients/go/api/filesystem/v1"
	groupv1 "github.com/computesdk/computesdk/clients/go/api/group/v1"
	messagingv1 "github.com/computesdk/computesdk/clients/go/api/messaging/v1"
	monitoringv1 "github.com/computesdk/computesdk/clients/go/api/monitoring/v1"
	networkv1 "github.com/computesdk/computesdk/clients/go/api/network/v1"
	poolv1 "github.com/computesdk/computesdk/clients/go/api/pool/v1"
	processv1 "github.com/computesdk/computesdk/clients/go/api/process/v1"
	providerv1 "github.com/computesdk/computesdk/clients/go/api/provider/v1"
	sandboxv1 "github.com/computesdk/computesdk/clients/go/api/sandbox/v1"
	snapshotv1 "github.com/computesdk/computesdk/clients/go/api/snapshot/v1"
	templatev1 "github.com/computesdk/computesdk/clients/go/api/template/v1"
	volumev1 "github.com/computesdk/computesdk/clients/go/api/volume/v1"
)

// maxMessage matches the daemon's limit; output chunks are at most 1 MiB.
const maxMessage = 64 << 20

// serviceConfig makes every call wait for a (re)starting daemon instead of
// failing at once; the caller's context deadline bounds the wait.
const serviceConfig = `{"methodConfig": [{"name": [{}], "waitForReady": true}]}`

// Raw holds the generated stubs, for calls this package does not wrap yet.
// Their errors are *Error too: the connection translates every call's status.
type Raw struct {
	Sandboxes  sandboxv1.SandboxServiceClient
	Processes  processv1.ProcessServiceClient
	Files      filesystemv1.FilesystemServiceClient
	Events     eventsv1.EventServiceClient
	Providers  providerv1.ProviderServiceClient
	Monitoring monitoringv1.MonitoringServiceClient
	Pools      poolv1.PoolServiceClient
	Groups     groupv1.GroupServiceClient
	Networks   networkv1.NetworkServiceClient
	Messaging  messagingv1.MessagingServiceClient
	Snapshots  snapshotv1.SnapshotServiceClient
	Volumes    volumev1.VolumeServiceClient
	Templates  templatev1.TemplateServiceClient
	Admin      adminv1.AdminServiceClient
}

// ConnState is the client's view of its connection, reported by event streams
// as they lose the daemon and find it again.
type ConnState int

const (
	Connected ConnState = iota
	Disconnected
	Reconnecting
)

func (s ConnState) String() string {
	return [...]string{"connected", "disconnected", "reconnecting"}[s]
}

// Client is one connection to the daemon. It is safe for concurrent use.
type Client struct {
	Raw    Raw
	target string
	conn   *grpc.ClientConn
	opts   []ConnectOption // what Connect was given, to re-open a closed client
	shared bool            // the default connection (DefaultClient)
	closed atomic.Bool

	mu       sync.Mutex
	handlers []func(ConnState)
	// Each provider's capabilities as ListProviders said: provider name -> []string.
	capabilities sync.Map
}

// remember keeps what ListProviders said each provider can do.
func (c *Client) remember(providers []*providerv1.Provider) {
	for _, p := range providers {
		c.capabilities.Store(p.GetName(), p.GetCapabilities())
	}
}

// supports tells whether provider has capability. Connect already learnt the
// providers the daemon had then; one it did not list is asked about once.
func (c *Client) supports(ctx context.Context, provider, capability string) (bool, error) {
	caps, ok := c.capabilities.Load(provider)
	if !ok {
		if _, err := c.Providers(ctx); err != nil {
			return false, err
		}
		caps, _ = c.capabilities.LoadOrStore(provider, []string(nil))
	}
	return slices.Contains(caps.([]string), capability), nil
}

// Connect opens a connection and waits until the daemon answers (the first
// call, ListProviders, needs scope read over TCP).
//
// By default it goes to the Unix socket, or to $COMPUTESDK_ADDRESS when that
// is set. Over TCP the connection is TLS and every call carries the token:
//
//	c, err := computesdk.Connect(ctx,
//		computesdk.WithAddress("sandboxes.internal:7443"),
//		computesdk.WithCA("/etc/computesdk/ca.pem"),
//		computesdk.WithToken(os.Getenv("COMPUTESDK_TOKEN")))
//
// A token the daemon refuses fails Connect with an *Error whose reason tells
// why (ErrTokenMissing, ErrTokenInvalid, ErrTokenRevoked, ErrTokenExpired;
// ErrScopeInsufficient later, for a call the token's scope does not cover).
// A daemon that cannot be reached, or whose TLS handshake fails, gives
// ErrDaemonUnreachable with the cause in its message.
func Connect(ctx context.Context, opts ...ConnectOption) (*Client, error) {
	cfg := connectConfig{timeout: 10 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	plan, err := cfg.plan()
	if err != nil {
		return nil, err
	}
	target := plan.target
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(plan.creds),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)),
		// First in the chain, so the caller's own interceptors see the status as sent.
		grpc.WithChainUnaryInterceptor(typedErrors),
		grpc.WithChainStreamInterceptor(typedStreamErrors),
	}
	if plan.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer(plan.token)))
	}
	dial = append(dial, cfg.dial...)
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, err
	}
	c := &Client{target: target, conn: conn, opts: opts, Raw: Raw{
		Sandboxes:  sandboxv1.NewSandboxServiceClient(conn),
		Processes:  processv1.NewProcessServiceClient(conn),
		Files:      filesystemv1.NewFilesystemServiceClient(conn),
		Events:     eventsv1.NewEventServiceClient(conn),
		Providers:  providerv1.NewProviderServiceClient(conn),
		Monitoring: monitoringv1.NewMonitoringServiceClient(conn),
		Pools:      poolv1.NewPoolServiceClient(conn),
		Groups:     groupv1.NewGroupServiceClient(conn),
		Networks:   networkv1.NewNetworkServiceClient(conn),
		Messaging:  messagingv1.NewMessagingServiceClient(conn),
		Snapshots:  snapshotv1.NewSnapshotServiceClient(conn),
		Volumes:    volumev1.NewVolumeServiceClient(conn),
		Templates:  templatev1.NewTemplateServiceClient(conn),
		Admin:      adminv1.NewAdminServiceClient(conn),
	}}
	// A cheap call proves the daemon is there (waitForReady rides out a restart)
	// and tells what each provider can do.
	pctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	if plan.tls != nil {
		go func() {
			select {
			case <-plan.tls.failed:
				cancel()
			case <-pctx.Done():
			}
		}()
	}
	if _, err := c.Providers(pctx); err != nil {
		_ = conn.Close()
		if plan.tls != nil {
			select {
			case <-plan.tls.failed:
				return nil, daemonUnreachable(fmt.Sprintf("cannot reach computesdkd at %s: TLS handshake: %v", target, plan.tls.err))
			default:
			}
		}
		if errors.Is(pctx.Err(), context.DeadlineExceeded) {
			msg := "cannot reach computesdkd at " + target
			// What grpc last met on the way (refused, TLS handshake failed, ...).
			var e *Error
			if errors.As(err, &e) && e.Code == codes.DeadlineExceeded && e.Message != "" {
				msg += ": " + e.Message
			}
			if plan.tls != nil && plan.tls.hungUp.Load() {
				msg += " (the daemon hung up right after the TLS handshake: does it want a client" +
					" certificate (WithClientCert) signed by another CA?)"
			}
			return nil, daemonUnreachable(msg)
		}
		return nil, err
	}
	return c, nil
}

// Target is the gRPC target this client is connected to.
func (c *Client) Target() string { return c.target }

// Close releases the connection. Closing the default connection (DefaultClient)
// makes the next Compute open another.
func (c *Client) Close() error {
	c.closed.Store(true)
	return c.conn.Close()
}

func (c *Client) isClosed() bool { return c.closed.Load() }

// reopen connects again as this client did.
func (c *Client) reopen(ctx context.Context) (*Client, error) {
	if c.shared {
		return DefaultClient(ctx)
	}
	return Connect(ctx, c.opts...)
}

// OnConnectionChange registers a handler for connected/disconnected/reconnecting.
func (c *Client) OnConnectionChange(h func(ConnState)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.handlers = append(c.handlers, h)
}

func (c *Client) notify(s ConnState) {
	c.mu.Lock()
	hs := append([]func(ConnState){}, c.handlers...)
	c.mu.Unlock()
	for _, h := range hs {
		h(s)
	}
}
