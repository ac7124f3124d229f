package computesdk_test

// The spec's coordination, recovery and shutdown blocks (see spec_test.go).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	computesdk "github.com/computesdk/computesdk/clients/go"
)

// sandboxGroup is the spec's SandboxGroup class.
type sandboxGroup struct {
	sandboxes map[string]*computesdk.Sandbox
}

func (g *sandboxGroup) add(ctx context.Context, name, provider string, opts ...computesdk.CreateOption) (*computesdk.Sandbox, error) {
	sandbox, err := computesdk.Compute(ctx, provider, opts...)
	if err != nil {
		return nil, err
	}
	g.sandboxes[name] = sandbox
	return sandbox, nil
}

// broadcast gives each member's *ExecResult, or its error's message.
func (g *sandboxGroup) broadcast(ctx context.Context, command string) map[string]any {
	results := map[string]any{}
	for name, sandbox := range g.sandboxes {
		result, err := sandbox.Exec(ctx, command)
		if err != nil {
			results[name] = map[string]string{"error": err.Error()}
		} else {
			results[name] = result
		}
	}
	return results
}

func (g *sandboxGroup) destroyAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, sb := range g.sandboxes {
		wg.Go(func() { _ = sb.Destroy(ctx) })
	}
	wg.Wait()
}

func TestSpecGroups(t *testing.T) {
	ctx := specEnv(t)
	group := &sandboxGroup{sandboxes: map[string]*computesdk.Sandbox{}}
	defer group.destroyAll(context.Background())
	// The spec's web member is nextjs, built on its first create: the TypeScript
	// suite's spec programs pay for that build; here web runs on node. pytorch needs a GPU.
	must(group.add(ctx, "web", "local", computesdk.WithTemplate("node")))(t)
	must(group.add(ctx, "api", "local", computesdk.WithTemplate("nodejs")))(t)
	_, err := group.add(ctx, "ml", "local", computesdk.WithTemplate("pytorch"))
	wantReason(t, err, "GPU_UNAVAILABLE")

	results := group.broadcast(ctx, "npm --version")
	for _, name := range []string{"web", "api"} {
		r, ok := results[name].(*computesdk.ExecResult)
		if !ok || r.ExitCode != 0 || len(r.Stdout) == 0 {
			t.Fatalf("npm --version on %s: %v", name, results[name])
		}
	}
	failing := group.broadcast(ctx, "npm --no-such-flag-at-all >/dev/null 2>&1; exit 3")
	for _, name := range []string{"web", "api"} {
		e, ok := failing[name].(map[string]string)
		if !ok || !strings.Contains(e["error"], "exit code 3") {
			t.Fatalf("a failing broadcast on %s: %v", name, failing[name])
		}
	}
}

func TestSpecNetworksAndMessaging(t *testing.T) {
	ctx := specEnv(t)
	webSandbox := compute(t, ctx)
	apiSandbox := compute(t, ctx)
	network := must(computesdk.CreateSharedNetwork(ctx, []*computesdk.Sandbox{webSandbox, apiSandbox}))(t)
	t.Cleanup(func() { _ = network.Delete(context.Background()) })

	must(webSandbox.SetEnv(ctx, map[string]string{"API_URL": network.ServiceURL("api")}))(t)
	must(apiSandbox.SetEnv(ctx, map[string]string{"SERVICE_NAME": "api"}))(t)

	var messageQueue computesdk.MessageQueue
	if err := messageQueue.Connect(ctx, []*computesdk.Sandbox{webSandbox, apiSandbox}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = messageQueue.Close(context.Background()) })
	must(messageQueue.Send(ctx, "web", "api", map[string]string{"action": "process-data"}))(t)

	// What the block sets up, observed: the URL in web's env, the name resolving
	// inside web, the message at api.
	if out := must(webSandbox.Exec(ctx, "echo $API_URL"))(t); string(out.Stdout) != "http://api:80\n" {
		t.Fatalf("API_URL: %q", out.Stdout)
	}
	if url := must(network.ResolveServiceURL(ctx, "api", 80))(t); !strings.Contains(url, "api") {
		t.Fatalf("resolved URL: %s", url)
	}
	if out, err := webSandbox.Exec(ctx, "getent hosts api"); err != nil || len(out.Stdout) == 0 {
		t.Fatalf("api does not resolve inside web: %v %+v", err, out)
	}
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for m, err := range messageQueue.Subscribe(mctx, apiSandbox.ID()) {
		if err != nil {
			t.Fatal(err)
		}
		if string(m.GetPayload()) != `{"action":"process-data"}` {
			t.Fatalf("message: %v", m)
		}
		break
	}
	_, err := messageQueue.Send(ctx, "web", "nobody", "x")
	wantReason(t, err, "MEMBER_NOT_FOUND")
}

// circuitBreaker is the spec's SandboxCircuitBreaker.
type circuitBreaker struct {
	failures    int
	lastFailure time.Time
	state       string
}

func (b *circuitBreaker) execute(operation func() error) error {
	if b.state == "open" {
		if time.Since(b.lastFailure) < time.Minute {
			return errors.New("Circuit breaker is open")
		}
		b.state = "half-open"
	}
	if err := operation(); err != nil {
		b.failures++
		b.lastFailure = time.Now()
		if b.failures >= 5 {
			b.state = "open"
		}
		return err
	}
	b.failures, b.state = 0, "closed"
	return nil
}

// tamper changes stored bytes as a failing disk would: a block in the middle.
func tamper(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st := must(f.Stat())(t)
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xa5}, 4096), st.Size()/2); err != nil {
		t.Fatal(err)
	}
}

func TestSpecErrorRecovery(t *testing.T) {
	ctx := specEnv(t)
	sandbox := compute(t, ctx, computesdk.WithTemplate("python"),
		computesdk.WithResources(computesdk.Resources{MemoryMB: 128}))
	// An older snapshot whose stored bytes go bad, and a newer good one.
	tampered := must(sandbox.CreateSnapshot(ctx, "tampered", ""))(t)
	tamper(t, filepath.Join(testDaemon.root, "state", "local", "store", "snapshots", tampered+".img"))
	must(sandbox.WriteFile(ctx, "/workspace/good", []byte("last good")))(t)
	must(sandbox.CreateSnapshot(ctx, "last-good", ""))(t)
	handled := make(chan string, 8)
	sandbox.OnError(ctx, func(e *computesdk.SandboxEventError) {
		var err error
		switch e.Type {
		case "connection-lost":
			err = sandbox.Reconnect(ctx)
		case "out-of-memory":
			err = sandbox.Restart(ctx, computesdk.RestartWithResources(computesdk.Resources{
				MemoryMB: sandbox.Config().Resources.MemoryMB * 2}))
		case "corruption":
			if snapshots, _ := sandbox.ListSnapshots(ctx); len(snapshots) > 0 {
				err = sandbox.RestoreSnapshot(ctx, snapshots[0].GetId())
			}
		}
		handled <- fmt.Sprintf("%s %v", e.Type, err)
	})

	wantReason(t, sandbox.RestoreSnapshot(ctx, tampered), "STATE_CORRUPT")
	if got := wait(t, handled, "corruption error"); got != "corruption <nil>" {
		t.Fatalf("handled: %s", got)
	}
	if got := must(sandbox.ReadFile(ctx, "/workspace/good"))(t); string(got) != "last good" {
		t.Fatalf("after restoring the last snapshot: %q", got)
	}

	// The handler's restart may end the call before it reports the kill.
	res, err := sandbox.Exec(ctx, `python -c "b = bytearray(512 << 20)"`)
	var exit *computesdk.CommandExitError
	if errors.As(err, &exit) {
		if !exit.OOMKilled || !res.OOMKilled {
			t.Fatalf("an OOM kill: %v %+v", err, res)
		}
	} else if !errors.Is(err, computesdk.ErrSandboxTerminated) {
		t.Fatalf("an OOM kill: %v %+v", err, res)
	}
	if got := wait(t, handled, "out-of-memory error"); got != "out-of-memory <nil>" {
		t.Fatalf("handled: %s", got)
	}
	if mem := sandbox.Config().Resources.MemoryMB; mem != 256 {
		t.Fatalf("after the restart with twice the memory: %d MB", mem)
	}

	if err := testDaemon.restart(); err != nil {
		t.Fatal(err)
	}
	if got := wait(t, handled, "connection-lost error"); got != "connection-lost <nil>" {
		t.Fatalf("handled: %s", got)
	}
	if out := must(sandbox.Exec(ctx, "echo back"))(t); string(out.Stdout) != "back\n" {
		t.Fatalf("after reconnect: %q", out.Stdout)
	}

	var breaker circuitBreaker
	calls := 0
	failing := func() error { calls++; _, err := sandbox.Exec(ctx, "exit 1"); return err }
	for range 5 {
		if err := breaker.execute(failing); !errors.As(err, &exit) {
			t.Fatalf("breaker passes the failure through: %v", err)
		}
	}
	if err := breaker.execute(failing); err == nil || err.Error() != "Circuit breaker is open" || calls != 5 {
		t.Fatalf("open breaker: %v after %d calls", err, calls)
	}
}

func TestSpecGracefulShutdown(t *testing.T) {
	ctx := specEnv(t)
	mine := []*computesdk.Sandbox{compute(t, ctx), compute(t, ctx)}
	done := make(chan []string, 1)
	sigint := make(chan os.Signal, 1)
	signal.Notify(sigint, os.Interrupt)
	defer signal.Stop(sigint)
	go func() {
		<-sigint
		activeSandboxes, err := computesdk.ListActiveSandboxes(ctx)
		if err != nil {
			done <- []string{err.Error()}
			return
		}
		var mu sync.Mutex
		var failures []string
		var wg sync.WaitGroup
		for _, sandbox := range activeSandboxes {
			wg.Go(func() {
				_, err := sandbox.CreateSnapshot(ctx, "shutdown-backup", "")
				if err == nil {
					err = sandbox.Destroy(ctx, computesdk.Gracefully(30*time.Second))
				}
				if err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		done <- failures
	}()
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if failures := wait(t, done, "shutdown"); len(failures) > 0 {
		t.Fatalf("cleanup errors: %v", failures)
	}
	for _, sb := range mine {
		_, err := sb.Client().Get(ctx, sb.ID())
		wantReason(t, err, "SANDBOX_NOT_FOUND")
	}
	if left := must(computesdk.ListActiveSandboxes(ctx))(t); len(left) != 0 {
		t.Fatalf("still active: %d", len(left))
	}
}
