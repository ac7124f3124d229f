package computesdk_test

// Remote access against a real computesdkd: TLS on TCP with client
// certificates, bearer tokens and their scopes. It starts a daemon of its own,
// whatever mode the suite runs in.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	computesdk "github.com/computesdk/computesdk/clients/go"
)

func TestTLSDaemonTokensAndClientCertificates(t *testing.T) {
	clearEnv(t)
	d, err := newDaemon()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.enableTLS(true); err != nil {
		t.Fatal(err)
	}
	if err := d.start(); err != nil {
		d.stop()
		d.unmountAll()
		d.dumpLog()
		t.Fatal(err)
	}
	t.Cleanup(func() { d.finish(!t.Failed()) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// A client of this daemon over TLS, with a good client certificate unless opts say otherwise.
	remote := func(opts ...computesdk.ConnectOption) (*computesdk.Client, error) {
		base := []computesdk.ConnectOption{computesdk.WithAddress(d.address()), computesdk.WithCA(d.tls.CA),
			computesdk.WithClientCert(d.tls.ClientCert, d.tls.ClientKey), computesdk.WithConnectTimeout(5 * time.Second)}
		c, err := computesdk.Connect(ctx, append(base, opts...)...)
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return c, err
	}
	refused := func(t *testing.T, err error, reason, code *computesdk.Error) {
		t.Helper()
		var e *computesdk.Error
		if !errors.As(err, &e) || !errors.Is(err, reason) || !errors.Is(err, code) {
			t.Fatalf("want %s (%s), got %v", reason.Reason, code.Code, err)
		}
	}
	admin, err := computesdk.Connect(ctx, computesdk.WithSocket(d.socket))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()

	t.Run("admin token", func(t *testing.T) {
		c, err := remote(computesdk.WithToken(d.token))
		if err != nil {
			t.Fatal(err)
		}
		sb, err := c.Create(ctx, "local")
		if err != nil {
			t.Fatal(err)
		}
		res, err := sb.Exec(ctx, "echo over-tls")
		if err != nil || string(res.Stdout) != "over-tls\n" {
			t.Fatalf("exec over TLS: %+v %v", res, err)
		}
		// A stream carries the token too.
		n := 0
		for _, err := range c.Events(ctx, computesdk.ForSandboxes(sb.ID()), computesdk.History()) {
			if err != nil {
				t.Fatal(err)
			}
			n++
		}
		if n == 0 {
			t.Fatal("no events of the sandbox")
		}
		if err := sb.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("plaintext to the TLS port", func(t *testing.T) {
		_, err := computesdk.Connect(ctx, computesdk.WithAddress(d.address()), computesdk.WithInsecure(),
			computesdk.WithToken(d.token), computesdk.WithConnectTimeout(2*time.Second))
		if !errors.Is(err, computesdk.ErrDaemonUnreachable) {
			t.Fatalf("want DAEMON_UNREACHABLE, got %v", err)
		}
	})

	t.Run("no token", func(t *testing.T) {
		_, err := remote()
		refused(t, err, computesdk.ErrTokenMissing, computesdk.ErrUnauthenticated)
	})

	t.Run("wrong token", func(t *testing.T) {
		_, err := remote(computesdk.WithToken("not-a-token-of-this-daemon"))
		refused(t, err, computesdk.ErrTokenInvalid, computesdk.ErrUnauthenticated)
	})

	t.Run("revoked token", func(t *testing.T) {
		tok, secret, err := admin.Admin().CreateToken(ctx, d.tenant, computesdk.ScopeRead, computesdk.TokenDescription("to revoke"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := remote(computesdk.WithToken(secret))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Admin().RevokeToken(ctx, tok.GetId()); err != nil {
			t.Fatal(err)
		}
		// The open connection's next call, and a new connection.
		_, err = c.Providers(ctx)
		refused(t, err, computesdk.ErrTokenRevoked, computesdk.ErrUnauthenticated)
		_, err = remote(computesdk.WithToken(secret))
		refused(t, err, computesdk.ErrTokenRevoked, computesdk.ErrUnauthenticated)
	})

	t.Run("expired token", func(t *testing.T) {
		_, secret, err := admin.Admin().CreateToken(ctx, d.tenant, computesdk.ScopeRead, computesdk.TokenTTL(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		_, err = remote(computesdk.WithToken(secret))
		refused(t, err, computesdk.ErrTokenExpired, computesdk.ErrUnauthenticated)
	})

	t.Run("read scope lists but does not create", func(t *testing.T) {
		token, err := d.createToken("read", d.tenant)
		if err != nil {
			t.Fatal(err)
		}
		c, err := remote(computesdk.WithToken(token))
		if err != nil {
			t.Fatal(err)
		}
		for _, err := range c.List(ctx) {
			if err != nil {
				t.Fatalf("list with a read token: %v", err)
			}
		}
		_, err = c.Create(ctx, "local")
		refused(t, err, computesdk.ErrScopeInsufficient, computesdk.ErrPermissionDenied)
	})

	t.Run("client certificate of another CA", func(t *testing.T) {
		_, err := remote(computesdk.WithToken(d.token), computesdk.WithClientCert(d.tls.OtherCert, d.tls.OtherKey),
			computesdk.WithConnectTimeout(2*time.Second))
		if !errors.Is(err, computesdk.ErrUnavailable) {
			t.Fatalf("want it refused (UNAVAILABLE), got %v", err)
		}
	})

	t.Run("no client certificate", func(t *testing.T) {
		_, err := computesdk.Connect(ctx, computesdk.WithAddress(d.address()), computesdk.WithCA(d.tls.CA),
			computesdk.WithToken(d.token), computesdk.WithConnectTimeout(2*time.Second))
		if !errors.Is(err, computesdk.ErrUnavailable) || !strings.Contains(err.Error(), "WithClientCert") {
			t.Fatalf("want it refused (UNAVAILABLE) with a hint at client certificates, got %v", err)
		}
	})

	t.Run("server certificate of another CA", func(t *testing.T) {
		_, err := remote(computesdk.WithToken(d.token), computesdk.WithCA(d.tls.OtherCA))
		if !errors.Is(err, computesdk.ErrDaemonUnreachable) {
			t.Fatalf("want DAEMON_UNREACHABLE, got %v", err)
		}
	})
}

// WithInsecure against a daemon serving plaintext TCP: the token still goes
// on every call, and TLS to such a port fails.
func TestPlaintextDaemonStillWantsTokens(t *testing.T) {
	clearEnv(t)
	d, err := newDaemon()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.enablePlaintext(); err != nil {
		t.Fatal(err)
	}
	if err := d.start(); err != nil {
		d.stop()
		d.unmountAll()
		d.dumpLog()
		t.Fatal(err)
	}
	t.Cleanup(func() { d.finish(!t.Failed()) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c, err := computesdk.Connect(ctx, d.connectOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, err := range c.List(ctx) {
		if err != nil {
			t.Fatal(err)
		}
	}
	// The environment does as well as the options.
	t.Setenv("COMPUTESDK_ADDRESS", d.address())
	t.Setenv("COMPUTESDK_INSECURE", "1")
	t.Setenv("COMPUTESDK_TOKEN", d.token)
	env, err := computesdk.Connect(ctx)
	if err != nil || env.Target() != d.address() {
		t.Fatalf("from the environment: %v", err)
	}
	env.Close()
	clearEnv(t)

	_, err = computesdk.Connect(ctx, computesdk.WithAddress(d.address()), computesdk.WithInsecure(), computesdk.WithToken(""))
	if !errors.Is(err, computesdk.ErrTokenMissing) || !errors.Is(err, computesdk.ErrUnauthenticated) {
		t.Fatalf("no token: %v", err)
	}
	_, err = computesdk.Connect(ctx, computesdk.WithAddress(d.address()), computesdk.WithToken(d.token),
		computesdk.WithConnectTimeout(3*time.Second))
	if !errors.Is(err, computesdk.ErrDaemonUnreachable) {
		t.Fatalf("TLS to a plaintext port: %v", err)
	}
}
