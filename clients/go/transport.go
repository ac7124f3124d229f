package computesdk

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Where Connect goes and how it proves itself, from the options and, for what
// they leave unset, the environment:
//
//	COMPUTESDK_ADDRESS      host:port of the daemon's TCP listener (TLS unless insecure)
//	COMPUTESDK_TOKEN        bearer token sent on every call
//	COMPUTESDK_CA           PEM bundle that alone is trusted for the daemon's certificate
//	COMPUTESDK_CLIENT_CERT  PEM client certificate, for a daemon that wants mTLS
//	COMPUTESDK_CLIENT_KEY   its private key
//	COMPUTESDK_INSECURE=1   plaintext TCP instead of TLS
//	COMPUTESDK_SOCKET       the Unix socket, when no address is given
//
// An explicit option always beats the environment. The endpoint is the last of
// WithSocket, WithAddress and WithTarget given; with none of them it is
// $COMPUTESDK_ADDRESS, then $COMPUTESDK_SOCKET, then DefaultSocket().

type endpointKind int

const (
	endpointDefault endpointKind = iota
	endpointSocket
	endpointAddress
	endpointTarget
)

type connectConfig struct {
	kind     endpointKind
	endpoint string // the socket path, address or target of kind
	timeout  time.Duration
	dial     []grpc.DialOption

	// Unset (nil) means "take it from the environment".
	token      *string
	ca         *string
	clientCert *[2]string // certificate path, key path
	serverName *string
	insecure   *bool
}

// ConnectOption configures Connect.
type ConnectOption func(*connectConfig)

// WithSocket connects over this Unix socket, the daemon's admin socket: no
// TLS, and no token needed (default: $COMPUTESDK_ADDRESS if set, else
// $COMPUTESDK_SOCKET, else the daemon's own default for this user). It beats
// $COMPUTESDK_ADDRESS.
func WithSocket(path string) ConnectOption {
	return func(c *connectConfig) { c.kind, c.endpoint = endpointSocket, path }
}

// WithAddress connects to the daemon's TCP listener (computesdkd --listen),
// "host:port". The connection is TLS, verified against the system roots or
// WithCA, unless WithInsecure; a daemon on TCP also wants WithToken.
func WithAddress(hostPort string) ConnectOption {
	return func(c *connectConfig) { c.kind, c.endpoint = endpointAddress, hostPort }
}

// WithTarget connects to any gRPC target instead, e.g. "dns:///host:7777". It
// is plaintext unless WithCA, WithClientCert or WithServerName asks for TLS
// (the environment's TLS settings do not apply to it); a token, from WithToken
// or $COMPUTESDK_TOKEN, is sent as on any connection.
func WithTarget(target string) ConnectOption {
	return func(c *connectConfig) { c.kind, c.endpoint = endpointTarget, target }
}

// WithToken sends "authorization: Bearer <token>" on every call, unary and
// streaming (default: $COMPUTESDK_TOKEN). Make one with `computesdk token
// create` or Client.Admin().CreateToken. The token never appears in an error
// or a log line of this package. WithToken("") sends none, whatever the
// environment says.
func WithToken(token string) ConnectOption {
	return func(c *connectConfig) { c.token = &token }
}

// WithCA trusts only the certificates in this PEM bundle to sign the daemon's
// certificate (default: $COMPUTESDK_CA, else the system roots).
func WithCA(path string) ConnectOption {
	return func(c *connectConfig) { c.ca = &path }
}

// WithClientCert presents this certificate and key (PEM files) to a daemon
// that requires client certificates (computesdkd --tls-client-ca). Default:
// $COMPUTESDK_CLIENT_CERT and $COMPUTESDK_CLIENT_KEY.
func WithClientCert(certPath, keyPath string) ConnectOption {
	return func(c *connectConfig) { c.clientCert = &[2]string{certPath, keyPath} }
}

// WithServerName checks the daemon's certificate against this name instead of
// the host of the address (e.g. connecting by IP to a certificate for a name).
func WithServerName(name string) ConnectOption {
	return func(c *connectConfig) { c.serverName = &name }
}

// WithInsecure speaks plaintext over TCP (a daemon started with
// --insecure-listen, e.g. on loopback); default: $COMPUTESDK_INSECURE. A token
// still goes on every call, in the clear: keep it to networks you trust.
func WithInsecure() ConnectOption {
	on := true
	return func(c *connectConfig) { c.insecure = &on }
}

// WithConnectTimeout bounds how long Connect waits for the daemon (default 10s).
func WithConnectTimeout(d time.Duration) ConnectOption {
	return func(c *connectConfig) { c.timeout = d }
}

// WithDialOptions adds grpc dial options, e.g. interceptors.
func WithDialOptions(opts ...grpc.DialOption) ConnectOption {
	return func(c *connectConfig) { c.dial = append(c.dial, opts...) }
}

// DefaultSocket is where the daemon listens unless told otherwise.
func DefaultSocket() string {
	if s := os.Getenv("COMPUTESDK_SOCKET"); s != "" {
		return s
	}
	if os.Geteuid() == 0 {
		return "/run/computesdk/computesdkd.sock"
	}
	runtime := os.Getenv("XDG_RUNTIME_DIR")
	if runtime == "" {
		runtime = fmt.Sprintf("/tmp/computesdk-%d", os.Geteuid())
	}
	return filepath.Join(runtime, "computesdk", "computesdkd.sock")
}

// dialPlan is what connectConfig resolves to.
type dialPlan struct {
	target string
	creds  credentials.TransportCredentials
	token  string
	tls    *watchedTLS // nil for plaintext
}

func envTrue(name string) bool {
	v := strings.TrimSpace(os.Getenv(name))
	if b, err := strconv.ParseBool(v); err == nil {
		return b
	}
	return strings.EqualFold(v, "yes") || strings.EqualFold(v, "on")
}

// plan resolves the options and the environment into where and how to dial.
func (cfg *connectConfig) plan() (*dialPlan, error) {
	kind, endpoint := cfg.kind, cfg.endpoint
	if kind == endpointDefault {
		if addr := strings.TrimSpace(os.Getenv("COMPUTESDK_ADDRESS")); addr != "" {
			kind, endpoint = endpointAddress, addr
		} else {
			kind, endpoint = endpointSocket, ""
		}
	}
	p := &dialPlan{creds: insecure.NewCredentials()}

	token := os.Getenv("COMPUTESDK_TOKEN")
	if cfg.token != nil {
		token = *cfg.token
	}
	if token = strings.TrimSpace(token); token != "" {
		if strings.IndexFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
			return nil, errors.New("computesdk: the token has spaces or control characters in it")
		}
		p.token = token
	}

	switch kind {
	case endpointSocket:
		socket := endpoint
		// The hint about a system daemon is for this user's default only.
		isDefault := socket == "" && os.Getenv("COMPUTESDK_SOCKET") == ""
		if socket == "" {
			socket = DefaultSocket()
		}
		abs, err := filepath.Abs(socket)
		if err != nil {
			return nil, err
		}
		// Fail fast, saying why: no socket, a stale one, or one this user may not use.
		if err := probeSocket(abs, isDefault); err != nil {
			return nil, err
		}
		p.target = "unix://" + abs
		return p, nil
	case endpointTarget:
		p.target = endpoint
		if cfg.ca == nil && cfg.clientCert == nil && cfg.serverName == nil {
			return p, nil
		}
		if cfg.insecure != nil && *cfg.insecure {
			return nil, errors.New("computesdk: WithInsecure contradicts WithCA, WithClientCert and WithServerName")
		}
	case endpointAddress:
		if host, port, err := net.SplitHostPort(endpoint); err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("computesdk: address %q is not host:port", endpoint)
		}
		p.target = endpoint
		explicitTLS := cfg.ca != nil || cfg.clientCert != nil || cfg.serverName != nil
		plaintext := envTrue("COMPUTESDK_INSECURE") && !explicitTLS
		if cfg.insecure != nil {
			plaintext = *cfg.insecure
			if plaintext && explicitTLS {
				return nil, errors.New("computesdk: WithInsecure contradicts WithCA, WithClientCert and WithServerName")
			}
		}
		if plaintext {
			return p, nil
		}
	}
	conf, err := cfg.tlsConfig(kind == endpointAddress)
	if err != nil {
		return nil, err
	}
	p.creds = credentials.NewTLS(conf)
	p.tls = watchTLS(p.creds)
	p.creds = p.tls
	return p, nil
}

// tlsConfig builds the client side of TLS; fromEnv lets the environment fill
// what the options leave unset.
func (cfg *connectConfig) tlsConfig(fromEnv bool) (*tls.Config, error) {
	env := func(name string) string {
		if !fromEnv {
			return ""
		}
		return strings.TrimSpace(os.Getenv(name))
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	ca := env("COMPUTESDK_CA")
	if cfg.ca != nil {
		ca = *cfg.ca
	}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("computesdk: CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("computesdk: no PEM certificate in CA bundle %s", ca)
		}
		conf.RootCAs = pool
	}
	var pair [2]string
	if cfg.clientCert != nil {
		pair = *cfg.clientCert
	} else {
		pair = [2]string{env("COMPUTESDK_CLIENT_CERT"), env("COMPUTESDK_CLIENT_KEY")}
		if (pair[0] == "") != (pair[1] == "") {
			return nil, errors.New("computesdk: COMPUTESDK_CLIENT_CERT and COMPUTESDK_CLIENT_KEY go together")
		}
	}
	if pair[0] != "" || pair[1] != "" {
		cert, err := tls.LoadX509KeyPair(pair[0], pair[1])
		if err != nil {
			return nil, fmt.Errorf("computesdk: client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	if cfg.serverName != nil {
		conf.ServerName = *cfg.serverName
	}
	return conf, nil
}

// bearer puts the token on every call. It does not require transport security,
// so that it also works with WithInsecure; it prints as redacted.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }
func (bearer) String() string                 { return "Bearer [redacted]" }
func (b bearer) GoString() string             { return b.String() }

// watchedTLS remembers the first TLS handshake that failed for good (the
// daemon's certificate does not verify, what answers does not speak TLS, or
// the daemon refuses the client's certificate),
// so that Connect can say so at once instead of waiting out its timeout while
// grpc retries in vain. Transient failures (refused, reset, EOF) are not kept:
// those are a daemon restarting.
type watchedTLS struct {
	credentials.TransportCredentials
	*handshakeFailure
}

type handshakeFailure struct {
	once   sync.Once
	failed chan struct{}
	err    error
	// The daemon hung up on a connection right after its TLS handshake, before
	// sending a byte: what grpcio does to a client certificate it refuses (no
	// alert), and also what a daemon shutting down may do, so only a hint.
	hungUp atomic.Bool
}

func watchTLS(creds credentials.TransportCredentials) *watchedTLS {
	return &watchedTLS{creds, &handshakeFailure{failed: make(chan struct{})}}
}

func (w *watchedTLS) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := w.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		if permanentTLSError(err) {
			w.fail(err)
		}
		return conn, info, err
	}
	// With TLS 1.3 the daemon refuses a client certificate after the client's
	// side of the handshake is done: the alert comes with the first read.
	return &alertConn{Conn: conn, h: w.handshakeFailure}, info, nil
}

func (h *handshakeFailure) fail(err error) {
	h.once.Do(func() { h.err = err; close(h.failed) })
}

// alertConn notices a fatal TLS alert from the daemon (certificate required,
// bad certificate, unknown CA...). A daemon going away closes the connection
// or sends close_notify (io.EOF) instead.
type alertConn struct {
	net.Conn
	h   *handshakeFailure
	got atomic.Bool // the daemon sent something
}

func (c *alertConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.got.Store(true)
	}
	var op *net.OpError
	if err != nil && errors.As(err, &op) && op.Op == "remote error" {
		c.h.fail(err)
	} else if err != nil && !c.got.Load() {
		c.h.hungUp.Store(true)
	}
	return n, err
}

func (c *alertConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil && !c.got.Load() {
		c.h.hungUp.Store(true)
	}
	return n, err
}

func (w *watchedTLS) Clone() credentials.TransportCredentials {
	return &watchedTLS{w.TransportCredentials.Clone(), w.handshakeFailure}
}

func permanentTLSError(err error) bool {
	var verify *tls.CertificateVerificationError
	var header tls.RecordHeaderError
	return errors.As(err, &verify) || errors.As(err, &header)
}
