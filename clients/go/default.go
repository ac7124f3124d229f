package computesdk

import (
	"context"
	"os"
	"strings"
	"sync"
)

// The default connections, one per environment: Compute, ListActiveSandboxes
// and DefaultClient share the one the environment describes now, as the
// spec's compute() shares one.
var defaults struct {
	sync.Mutex
	clients map[string]*Client
}

// connectEnv is every variable that changes where or how Connect goes.
var connectEnv = []string{"COMPUTESDK_ADDRESS", "COMPUTESDK_SOCKET", "COMPUTESDK_TOKEN", "COMPUTESDK_CA",
	"COMPUTESDK_CLIENT_CERT", "COMPUTESDK_CLIENT_KEY", "COMPUTESDK_INSECURE", "XDG_RUNTIME_DIR"}

// DefaultClient is the connection Compute and ListActiveSandboxes use: opened
// on first use from the environment (see Connect), then shared. Closing it
// makes the next call open another.
func DefaultClient(ctx context.Context) (*Client, error) {
	var key strings.Builder
	for _, name := range connectEnv {
		key.WriteString(os.Getenv(name) + "\x00")
	}
	defaults.Lock()
	defer defaults.Unlock()
	if c := defaults.clients[key.String()]; c != nil && !c.isClosed() {
		return c, nil
	}
	c, err := Connect(ctx)
	if err != nil {
		return nil, err
	}
	c.shared = true
	if defaults.clients == nil {
		defaults.clients = map[string]*Client{}
	}
	defaults.clients[key.String()] = c
	return c, nil
}

// Compute creates a sandbox on the default connection (DefaultClient), as the
// spec's compute() does. Destroy leaves the connection open for the next one.
func Compute(ctx context.Context, provider string, opts ...CreateOption) (*Sandbox, error) {
	c, err := DefaultClient(ctx)
	if err != nil {
		return nil, err
	}
	return c.Create(ctx, provider, opts...)
}

// ListActiveSandboxes is every running sandbox the default connection reaches,
// as the spec's listActiveSandboxes() (a graceful shutdown's first step).
func ListActiveSandboxes(ctx context.Context) ([]*Sandbox, error) {
	c, err := DefaultClient(ctx)
	if err != nil {
		return nil, err
	}
	var out []*Sandbox
	for sb, err := range c.ListActive(ctx) {
		if err != nil {
			return nil, err
		}
		out = append(out, sb)
	}
	return out, nil
}
