package computesdk_test

// The client's side of TCP, TLS and tokens, against a small in-process gRPC
// server that checks what arrives; tls_test.go does the same against computesdkd.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	computesdk "github.com/computesdk/computesdk/clients/go"
	eventsv1 "github.com/computesdk/computesdk/clients/go/api/events/v1"
	providerv1 "github.com/computesdk/computesdk/clients/go/api/provider/v1"
)

// fakeDaemon answers ListProviders and SubscribeEvents, and records the
// authorization metadata of every call by method. With want set, a call
// without "Bearer <want>" fails as computesdkd's would.
type fakeDaemon struct {
	providerv1.UnimplementedProviderServiceServer
	eventsv1.UnimplementedEventServiceServer
	addr string
	want string

	mu   sync.Mutex
	auth map[string][]string
}

func (f *fakeDaemon) ListProviders(context.Context, *providerv1.ListProvidersRequest) (*providerv1.ListProvidersResponse, error) {
	return &providerv1.ListProvidersResponse{Providers: []*providerv1.Provider{{Name: "fake"}}}, nil
}

func (f *fakeDaemon) SubscribeEvents(_ *eventsv1.SubscribeEventsRequest, s grpc.ServerStreamingServer[eventsv1.SubscribeEventsResponse]) error {
	for seq := uint64(1); seq <= 2; seq++ {
		if err := s.Send(&eventsv1.SubscribeEventsResponse{Event: &eventsv1.Event{Sequence: seq, Type: "created"}}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeDaemon) check(ctx context.Context, method string) error {
	md, _ := metadata.FromIncomingContext(ctx)
	got := md.Get("authorization")
	f.mu.Lock()
	f.auth[method] = append(f.auth[method], strings.Join(got, ","))
	f.mu.Unlock()
	if f.want == "" {
		return nil
	}
	reason := ""
	switch {
	case len(got) == 0:
		reason = "TOKEN_MISSING"
	case got[0] != "Bearer "+f.want:
		reason = "TOKEN_INVALID"
	default:
		return nil
	}
	st, _ := status.New(codes.Unauthenticated, "no").WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: "computesdk.dev"})
	return st.Err()
}

func (f *fakeDaemon) seen(method string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.auth[method]...)
}

// startFake serves on a loopback port: TLS with conf, or plaintext when nil.
func startFake(t *testing.T, conf *tls.Config, want string) *fakeDaemon {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDaemon{addr: l.Addr().String(), want: want, auth: map[string][]string{}}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := f.check(ctx, info.FullMethod); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := f.check(ss.Context(), info.FullMethod); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
	if conf != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(conf)))
	}
	s := grpc.NewServer(opts...)
	providerv1.RegisterProviderServiceServer(s, f)
	eventsv1.RegisterEventServiceServer(s, f)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return f
}

func serverTLS(t *testing.T, files *tlsFiles, clientCA string) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(files.ServerCert, files.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCA != "" {
		raw, err := os.ReadFile(clientCA)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(raw)
		conf.ClientCAs, conf.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return conf
}

func fakeFiles(t *testing.T, dns ...string) *tlsFiles {
	t.Helper()
	files, err := writeTLSFiles(t.TempDir(), dns...)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// clearEnv keeps the caller's COMPUTESDK_* out of a test (restored after it).
func clearEnv(t *testing.T) {
	for _, name := range []string{"COMPUTESDK_ADDRESS", "COMPUTESDK_TOKEN", "COMPUTESDK_CA", "COMPUTESDK_CLIENT_CERT",
		"COMPUTESDK_CLIENT_KEY", "COMPUTESDK_INSECURE", "COMPUTESDK_SOCKET"} {
		t.Setenv(name, "")
	}
}

func quick(t *testing.T, opts ...computesdk.ConnectOption) (*computesdk.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := computesdk.Connect(ctx, append([]computesdk.ConnectOption{computesdk.WithConnectTimeout(3 * time.Second)}, opts...)...)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

const (
	listProviders   = "/computesdk.api.provider.v1.ProviderService/ListProviders"
	subscribeEvents = "/computesdk.api.events.v1.EventService/SubscribeEvents"
)

func TestTokenGoesOnUnaryAndStreamingCallsOverTLS(t *testing.T) {
	clearEnv(t)
	files := fakeFiles(t)
	f := startFake(t, serverTLS(t, files, ""), "s3cret")
	c, err := quick(t, computesdk.WithAddress(f.addr), computesdk.WithCA(files.CA), computesdk.WithToken("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Target() != f.addr {
		t.Fatalf("target %q, want %q", c.Target(), f.addr)
	}
	n := 0
	for ev, err := range c.Events(context.Background(), computesdk.History()) {
		if err != nil {
			t.Fatal(err)
		}
		n = int(ev.Sequence)
	}
	if n != 2 {
		t.Fatalf("stream ended after %d events", n)
	}
	for _, m := range []string{listProviders, subscribeEvents} {
		if got := f.seen(m); len(got) == 0 || got[0] != "Bearer s3cret" {
			t.Fatalf("%s: authorization %q", m, got)
		}
	}
}

func TestTokenGoesOverInsecureToo(t *testing.T) {
	clearEnv(t)
	f := startFake(t, nil, "s3cret")
	if _, err := quick(t, computesdk.WithAddress(f.addr), computesdk.WithInsecure(), computesdk.WithToken("s3cret")); err != nil {
		t.Fatal(err)
	}
	if got := f.seen(listProviders); len(got) != 1 || got[0] != "Bearer s3cret" {
		t.Fatalf("authorization %q", got)
	}
	// TLS is the default over an address: a plaintext server does not do.
	if _, err := quick(t, computesdk.WithAddress(f.addr), computesdk.WithToken("s3cret")); !errors.Is(err, computesdk.ErrDaemonUnreachable) {
		t.Fatalf("TLS to a plaintext server: %v", err)
	}
}

func TestRefusedTokensAreTypedErrors(t *testing.T) {
	clearEnv(t)
	files := fakeFiles(t)
	f := startFake(t, serverTLS(t, files, ""), "s3cret")
	for token, want := range map[string]*computesdk.Error{"": computesdk.ErrTokenMissing, "wrong": computesdk.ErrTokenInvalid} {
		_, err := quick(t, computesdk.WithAddress(f.addr), computesdk.WithCA(files.CA), computesdk.WithToken(token))
		var e *computesdk.Error
		if !errors.As(err, &e) || !errors.Is(err, want) || !errors.Is(err, computesdk.ErrUnauthenticated) {
			t.Fatalf("token %q: want %s, got %v", token, want.Reason, err)
		}
		if token != "" && strings.Contains(err.Error(), token) {
			t.Fatalf("the error shows the token: %v", err)
		}
	}
}

func TestServerCertificateIsVerified(t *testing.T) {
	clearEnv(t)
	// A certificate for a name only: connecting by IP needs WithServerName.
	files := fakeFiles(t, "sandboxes.test")
	f := startFake(t, serverTLS(t, files, ""), "")
	_, err := quick(t, computesdk.WithAddress(f.addr), computesdk.WithCA(files.CA))
	if !errors.Is(err, computesdk.ErrDaemonUnreachable) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a certificate without the address's IP: %v", err)
	}
	if _, err := quick(t, computesdk.WithAddress(f.addr), computesdk.WithCA(files.CA), computesdk.WithServerName("sandboxes.test")); err != nil {
		t.Fatal(err)
	}
	// The system roots do not know the test CA; nor does another CA.
	if _, err := quick(t, computesdk.WithAddress(f.addr), computesdk.WithServerName("sandboxes.test")); !errors.Is(err, computesdk.ErrDaemonUnreachable) {
		t.Fatalf("system roots: %v", err)
	}
	if _, err := quick(t, computesdk.WithAddress(f.addr), computesdk.WithCA(files.OtherCA), computesdk.WithServerName("sandboxes.test")); !errors.Is(err, computesdk.ErrDaemonUnreachable) {
		t.Fatalf("another CA: %v", err)
	}
}

func TestClientCertificate(t *testing.T) {
	clearEnv(t)
	files := fakeFiles(t)
	f := startFake(t, serverTLS(t, files, files.CA), "")
	if _, err := quick(t, computesdk.WithAddress(f.addr), computesdk.WithCA(files.CA), computesdk.WithClientCert(files.ClientCert, files.ClientKey)); err != nil {
		t.Fatal(err)
	}
	for name, opts := range map[string][]computesdk.ConnectOption{
		"no client certificate": nil,
		"another CA's":          {computesdk.WithClientCert(files.OtherCert, files.OtherKey)},
	} {
		opts = append(opts, computesdk.WithAddress(f.addr), computesdk.WithCA(files.CA))
		if _, err := quick(t, opts...); !errors.Is(err, computesdk.ErrUnavailable) {
			t.Fatalf("%s: want it refused, got %v", name, err)
		}
	}
	// From the environment, too.
	t.Setenv("COMPUTESDK_CLIENT_CERT", files.ClientCert)
	t.Setenv("COMPUTESDK_CLIENT_KEY", files.ClientKey)
	if _, err := quick(t, computesdk.WithAddress(f.addr), computesdk.WithCA(files.CA)); err != nil {
		t.Fatal(err)
	}
	t.Setenv("COMPUTESDK_CLIENT_KEY", "")
	if _, err := quick(t, computesdk.WithAddress(f.addr), computesdk.WithCA(files.CA)); err == nil || !strings.Contains(err.Error(), "COMPUTESDK_CLIENT_KEY") {
		t.Fatalf("a certificate without its key: %v", err)
	}
}

func TestEnvironmentAndPrecedence(t *testing.T) {
	clearEnv(t)
	files := fakeFiles(t)
	secure := startFake(t, serverTLS(t, files, ""), "from-env")
	plain := startFake(t, nil, "")

	// Everything from the environment.
	t.Setenv("COMPUTESDK_ADDRESS", secure.addr)
	t.Setenv("COMPUTESDK_CA", files.CA)
	t.Setenv("COMPUTESDK_TOKEN", "from-env")
	t.Setenv("COMPUTESDK_SOCKET", "/nonexistent/d.sock") // COMPUTESDK_ADDRESS beats it
	c, err := quick(t)
	if err != nil || c.Target() != secure.addr {
		t.Fatalf("from the environment: %v", err)
	}
	// Explicit options beat it: the token ...
	if _, err := quick(t, computesdk.WithToken("explicit")); !errors.Is(err, computesdk.ErrTokenInvalid) {
		t.Fatalf("WithToken over COMPUTESDK_TOKEN: %v", err)
	}
	if got := secure.seen(listProviders); got[len(got)-1] != "Bearer explicit" {
		t.Fatalf("authorization %q", got)
	}
	// ... the address and the transport ...
	if c, err := quick(t, computesdk.WithAddress(plain.addr), computesdk.WithInsecure()); err != nil || c.Target() != plain.addr {
		t.Fatalf("WithAddress over COMPUTESDK_ADDRESS: %v", err)
	}
	// ... and the socket.
	if c, err := quick(t, computesdk.WithSocket(testDaemon.socket)); err != nil || c.Target() != "unix://"+testDaemon.socket {
		t.Fatalf("WithSocket over COMPUTESDK_ADDRESS: %v", err)
	}
	// The CA from the environment is the only one trusted.
	t.Setenv("COMPUTESDK_CA", files.OtherCA)
	if _, err := quick(t); !errors.Is(err, computesdk.ErrDaemonUnreachable) {
		t.Fatalf("COMPUTESDK_CA of another CA: %v", err)
	}
	if _, err := quick(t, computesdk.WithCA(files.CA)); err != nil {
		t.Fatalf("WithCA over COMPUTESDK_CA: %v", err)
	}
	// COMPUTESDK_INSECURE=1: plaintext, unless an explicit TLS option says otherwise.
	t.Setenv("COMPUTESDK_ADDRESS", plain.addr)
	t.Setenv("COMPUTESDK_INSECURE", "1")
	if _, err := quick(t); err != nil {
		t.Fatalf("COMPUTESDK_INSECURE=1: %v", err)
	}
	if got := plain.seen(listProviders); got[len(got)-1] != "Bearer from-env" {
		t.Fatalf("COMPUTESDK_TOKEN over plaintext: %q", got)
	}
	if _, err := quick(t, computesdk.WithAddress(secure.addr), computesdk.WithCA(files.CA)); err != nil {
		t.Fatalf("WithCA over COMPUTESDK_INSECURE: %v", err)
	}
	// Contradictions and mistakes fail at once.
	for name, opts := range map[string][]computesdk.ConnectOption{
		"insecure and a CA":  {computesdk.WithAddress(plain.addr), computesdk.WithInsecure(), computesdk.WithCA(files.CA)},
		"no port":            {computesdk.WithAddress("127.0.0.1")},
		"a token with space": {computesdk.WithToken("two words")},
		"a CA that is not":   {computesdk.WithAddress(secure.addr), computesdk.WithCA(filepath.Join(t.TempDir(), "none.pem"))},
	} {
		start := time.Now()
		if _, err := quick(t, opts...); err == nil || time.Since(start) > time.Second {
			t.Fatalf("%s: want an error at once, got %v after %s", name, err, time.Since(start))
		}
	}
}

func TestWithTargetStaysPlaintextUnlessAsked(t *testing.T) {
	clearEnv(t)
	files := fakeFiles(t)
	plain := startFake(t, nil, "")
	secure := startFake(t, serverTLS(t, files, ""), "")
	t.Setenv("COMPUTESDK_CA", files.CA) // not for WithTarget
	if _, err := quick(t, computesdk.WithTarget(plain.addr)); err != nil {
		t.Fatal(err)
	}
	if _, err := quick(t, computesdk.WithTarget(secure.addr), computesdk.WithCA(files.CA)); err != nil {
		t.Fatal(err)
	}
	// The last endpoint option wins.
	if c, err := quick(t, computesdk.WithTarget(secure.addr), computesdk.WithSocket(testDaemon.socket)); err != nil || c.Target() != "unix://"+testDaemon.socket {
		t.Fatalf("WithSocket after WithTarget: %v", err)
	}
}
