package computesdk_test

// The spec's blocks (docs/spec/sandbox-management.md), hand-translated to Go
// and run against the suite's daemon, the provider names changed to "local".
// Each test is one section; where a block only shows a call, the test also
// checks what the call did.

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	computesdk "github.com/computesdk/computesdk/clients/go"
)

// specEnv points the default connection (Compute, ListActiveSandboxes) at the
// suite's daemon, as a user's environment would.
func specEnv(t *testing.T) context.Context {
	t.Helper()
	if addr := testDaemon.address(); addr != "" && !testDaemon.plaintext {
		t.Setenv("COMPUTESDK_ADDRESS", addr)
		t.Setenv("COMPUTESDK_CA", testDaemon.tls.CA)
		t.Setenv("COMPUTESDK_TOKEN", testDaemon.token)
	} else {
		t.Setenv("COMPUTESDK_SOCKET", testDaemon.socket)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// compute is the spec's compute(), destroyed when the test ends.
func compute(t *testing.T, ctx context.Context, opts ...computesdk.CreateOption) *computesdk.Sandbox {
	t.Helper()
	sb, err := computesdk.Compute(ctx, "local", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
	return sb
}

// must(call())(t) is call's value, failing the test on its error.
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func wantReason(t *testing.T, err error, reason string) {
	t.Helper()
	if !errors.Is(err, &computesdk.Error{Reason: reason}) {
		t.Fatalf("want %s, got %v", reason, err)
	}
}

// wait returns the first value sent on ch, failing the test after a minute.
func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		t.Fatalf("no %s within a minute", what)
	}
	var zero T
	return zero
}

func TestSpecQuickStart(t *testing.T) {
	ctx := specEnv(t)
	sandbox, err := computesdk.Compute(ctx, "local",
		computesdk.WithTemplate("python"),
		computesdk.WithMetadata(map[string]string{"project": "my-app"}))
	if err != nil {
		t.Fatal(err)
	}
	res, err := sandbox.Exec(ctx, "python --version")
	if err != nil {
		t.Fatal(err)
	}
	if err := sandbox.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(res.Stdout), "Python 3.") || sandbox.Metadata()["project"] != "my-app" {
		t.Fatalf("python --version: %+v, metadata %v", res, sandbox.Metadata())
	}
	// Compute shares one connection, and Destroy leaves it open for the next sandbox.
	again := compute(t, ctx)
	if again.Client() != sandbox.Client() {
		t.Fatal("a second Compute opened another connection")
	}
}

func TestSpecCreation(t *testing.T) {
	ctx := specEnv(t)
	compute(t, ctx)
	sb := compute(t, ctx, computesdk.WithTemplate("nodejs18"), computesdk.WithTimeout(time.Minute),
		computesdk.WithKeepAlive(true))
	if cfg := sb.Config(); cfg.Template != "nodejs18" || !cfg.KeepAlive || cfg.Timeout != time.Minute {
		t.Fatalf("config: %+v", cfg)
	}
	_, err := computesdk.Compute(ctx, "local", computesdk.WithTemplate("python:3.11"),
		computesdk.WithResources(computesdk.Resources{CPUCores: 4, MemoryMB: 8192,
			GPU: &computesdk.GPU{Type: "nvidia-a100"}}))
	wantReason(t, err, "GPU_UNAVAILABLE")
	_, err = computesdk.Compute(ctx, "local", computesdk.WithTemplate("pytorch-gpu"))
	wantReason(t, err, "GPU_UNAVAILABLE")
	// Above the host without a GPU: capped at the host, the ask kept.
	big := compute(t, ctx, computesdk.WithTemplate("python:3.11"),
		computesdk.WithResources(computesdk.Resources{CPUCores: 4, MemoryMB: 8192}))
	if got := big.Resources(); got.CPUCores > float64(runtime.NumCPU()) || got.MemoryMB == 0 {
		t.Fatalf("resources above the host: %+v", got)
	}
}

func TestSpecLifecycleEvents(t *testing.T) {
	ctx := specEnv(t)
	sandbox := compute(t, ctx)
	seen := make(chan string, 16)
	for _, typ := range []string{"created", "ready", "destroyed"} {
		sandbox.On(ctx, typ, func(computesdk.Event) { seen <- typ })
	}
	sandbox.OnError(ctx, func(e *computesdk.SandboxEventError) { seen <- "error " + e.Type })
	for _, typ := range []string{"connected", "disconnected", "reconnecting"} {
		sandbox.On(ctx, typ, func(computesdk.Event) {})
	}
	got := map[string]bool{wait(t, seen, "event"): true, wait(t, seen, "event"): true}
	if !got["created"] || !got["ready"] {
		t.Fatalf("events: %v", got)
	}
	if err := sandbox.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := wait(t, seen, "destroyed event"); ev != "destroyed" {
		t.Fatalf("after destroy: %s", ev)
	}
}

func TestSpecStatusMonitoringAndHealth(t *testing.T) {
	ctx := specEnv(t)
	sandbox := compute(t, ctx, computesdk.WithTemplate("python"))
	status := must(sandbox.GetStatus(ctx))(t)
	if status.State != computesdk.StateRunning || status.Resources.MemoryMB == 0 {
		t.Fatalf("status: %+v", status)
	}
	n := 0
	for metrics, err := range sandbox.Monitor(ctx, 500*time.Millisecond, "cpu", "memory", "disk", "network") {
		if err != nil {
			t.Fatal(err)
		}
		if metrics.CPU.Percent < 0 || metrics.Memory.UsedMB <= 0 || metrics.Disk.TotalMB <= 0 {
			t.Fatalf("metrics: %+v", metrics)
		}
		if n++; n == 2 {
			break // monitor.stop()
		}
	}

	isHealthy := must(sandbox.HealthCheck(ctx))(t)
	if !isHealthy {
		t.Fatalf("healthCheck: %v", must(sandbox.HealthReport(ctx))(t))
	}
	healthChecks := map[string]func() error{
		"python":  func() error { _, err := sandbox.Exec(ctx, "python --version"); return err },
		"node":    func() error { _, err := sandbox.Exec(ctx, "node --version"); return err },
		"disk":    func() error { _, err := sandbox.Exec(ctx, "df -h"); return err },
		"network": func() error { _, err := sandbox.Exec(ctx, "ping -c 1 google.com"); return err },
		"broken":  func() error { _, err := sandbox.Exec(ctx, "exit 3"); return err },
	}
	results := map[string]string{}
	for name, check := range healthChecks {
		if err := check(); err != nil {
			results[name] = "unhealthy"
		} else {
			results[name] = "healthy"
		}
	}
	if results["python"] != "healthy" || results["node"] != "healthy" || results["disk"] != "healthy" ||
		results["broken"] != "unhealthy" {
		t.Fatalf("health checks: %v", results)
	}
}

func TestSpecResources(t *testing.T) {
	ctx := specEnv(t)
	sandbox := compute(t, ctx, computesdk.WithTemplate("python"))
	usage := must(sandbox.GetResourceUsage(ctx))(t)
	if usage.CPU.Percent < 0 || usage.Memory.UsedMB <= 0 || usage.Memory.TotalMB < usage.Memory.UsedMB ||
		usage.Disk.TotalMB <= 0 {
		t.Fatalf("usage: %+v", usage)
	}
	limits := must(sandbox.SetResourceLimits(ctx, computesdk.Limits{CPUPercent: 80, MemoryMB: 2048, DiskMB: 5120}))(t)
	if limits.MemoryMB != 2048 {
		t.Fatalf("limits: %+v", limits)
	}
	if limits.DiskMB != 5120 {
		// A host that withholds growing a mounted disk: it grows at the next restart.
		if err := sandbox.Restart(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := must(sandbox.GetStatus(ctx))(t).Resources.DiskMB; got != 5120 {
		t.Fatalf("disk after growing to 5120 MB: %d", got)
	}
	df := must(sandbox.Exec(ctx, "df -m /workspace | awk 'NR==2 {print $2}'"))(t)
	if mb, err := strconv.Atoi(strings.TrimSpace(string(df.Stdout))); err != nil || mb < 4500 {
		t.Fatalf("df after growing: %q", df.Stdout)
	}

	alerts := make(chan computesdk.ResourceAlert, 4)
	sandbox.OnResourceAlert(ctx, func(alert computesdk.ResourceAlert) {
		if alert.Type == "memory" && alert.Current > 90 {
			_, _ = sandbox.Exec(ctx, `python -c "import gc; gc.collect()"`)
		}
		alerts <- alert
	})
	// A threshold any sandbox crosses, so that the alert comes.
	if err := sandbox.SetAlertThresholds(ctx, 200*time.Millisecond,
		&computesdk.AlertThreshold{Type: "memory", Percent: 0.01}); err != nil {
		t.Fatal(err)
	}
	alert := wait(t, alerts, "resource alert")
	if alert.Type != "memory" || alert.Threshold != 0.01 || alert.Current < alert.Threshold {
		t.Fatalf("alert: %+v", alert)
	}

	if err := sandbox.ConfigureAutoScaling(ctx, computesdk.AutoScaling{Enabled: true,
		CPU:         &computesdk.ScalingRule{Threshold: 80, Action: "scale-up"},
		Memory:      &computesdk.ScalingRule{Threshold: 85, Action: "scale-up"},
		MaxCPUCores: 8, MaxMemoryMB: 16384}); err != nil {
		t.Fatal(err)
	}
	scaled := must(sandbox.Scale(ctx, 4, 8192))(t)
	if scaled.CPUCores > float64(runtime.NumCPU()) || scaled.MemoryMB != 8192 {
		t.Fatalf("scale: %+v", scaled)
	}
}

func TestSpecPersistentStorage(t *testing.T) {
	ctx := specEnv(t)
	sandbox := compute(t, ctx, computesdk.WithVolumes([]computesdk.Volume{
		{Name: "workspace", Path: "/workspace", Size: "10GB", Persistent: true},
		{Name: "cache", Path: "/cache", Size: "5GB", Persistent: false},
	}))
	t.Cleanup(func() { _ = sandbox.Client().Volumes().Delete(context.Background(), "workspace") })
	must(sandbox.WriteFile(ctx, "/workspace/kept", []byte("in the volume")))(t)
	must(sandbox.Exec(ctx, "echo c > /cache/c"))(t)
	if err := sandbox.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	sandbox2 := compute(t, ctx, computesdk.WithVolumes([]computesdk.Volume{
		{Name: "workspace", Path: "/workspace", MountExisting: true},
	}))
	if got := must(sandbox2.ReadFile(ctx, "/workspace/kept"))(t); string(got) != "in the volume" {
		t.Fatalf("the persistent volume: %q", got)
	}
	vols := must(sandbox2.Client().Volumes().List(ctx))(t)
	for _, v := range vols {
		if v.GetName() == "cache" {
			t.Fatalf("the ephemeral volume outlived its sandbox: %v", v)
		}
	}
	_, err := computesdk.Compute(ctx, "local", computesdk.WithVolumes([]computesdk.Volume{
		{Name: "never-made", Path: "/data", MountExisting: true}}))
	wantReason(t, err, "VOLUME_NOT_FOUND")
}

func TestSpecSnapshotsAndState(t *testing.T) {
	ctx := specEnv(t)
	sandbox := compute(t, ctx, computesdk.WithEnv(map[string]string{"MODE": "saved"}))
	must(sandbox.WriteFile(ctx, "/workspace/v", []byte("before")))(t)
	snapshotID := must(sandbox.CreateSnapshot(ctx, "before-deployment", "State before deploying new version"))(t)
	must(sandbox.WriteFile(ctx, "/workspace/v", []byte("after")))(t)
	snapshots := must(sandbox.ListSnapshots(ctx))(t)
	if len(snapshots) != 1 || snapshots[0].GetId() != snapshotID || snapshots[0].GetName() != "before-deployment" {
		t.Fatalf("snapshots: %v", snapshots)
	}
	if err := sandbox.RestoreSnapshot(ctx, snapshotID); err != nil {
		t.Fatal(err)
	}
	if got := must(sandbox.ReadFile(ctx, "/workspace/v"))(t); string(got) != "before" {
		t.Fatalf("after restore: %q", got)
	}
	if err := sandbox.DeleteSnapshot(ctx, snapshotID); err != nil {
		t.Fatal(err)
	}
	if left := must(sandbox.ListSnapshots(ctx))(t); len(left) != 0 {
		t.Fatalf("after delete: %v", left)
	}

	state := must(sandbox.SaveState(ctx, ""))(t)
	newSandbox := compute(t, ctx, computesdk.WithRestoreFrom(state))
	stateData := must(sandbox.ExportState(ctx))(t)
	importedSandbox := compute(t, ctx, computesdk.WithImportState(stateData))
	for _, sb := range []*computesdk.Sandbox{newSandbox, importedSandbox} {
		got := must(sb.ReadFile(ctx, "/workspace/v"))(t)
		env := must(sb.Exec(ctx, "echo $MODE"))(t)
		if string(got) != "before" || string(env.Stdout) != "saved\n" {
			t.Fatalf("from the state: %q %q", got, env.Stdout)
		}
	}
	_ = sandbox.Client().DeleteState(ctx, state)
}

func TestSpecResetRestartClone(t *testing.T) {
	ctx := specEnv(t)
	sandbox := compute(t, ctx, computesdk.WithTemplate("python"))
	must(sandbox.WriteFile(ctx, "/workspace/f", []byte("x")))(t)
	bg := must(sandbox.StartProcess(ctx, "sleep 600"))(t)
	if err := sandbox.Reset(ctx, false); err != nil { // soft: processes go, files stay
		t.Fatal(err)
	}
	if res := must(bg.Wait(ctx))(t); res.Signal == 0 && res.ExitCode == 0 {
		t.Fatalf("a soft reset left the process: %+v", res)
	}
	if ok := must(sandbox.Exists(ctx, "/workspace/f"))(t); !ok {
		t.Fatal("a soft reset removed a file")
	}
	if err := sandbox.Reset(ctx, true); err != nil {
		t.Fatal(err)
	}
	if ok := must(sandbox.Exists(ctx, "/workspace/f"))(t); ok {
		t.Fatal("a hard reset kept a file")
	}
	if err := sandbox.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sandbox.Restart(ctx, computesdk.RestartWithTemplate("python:3.11"),
		computesdk.RestartWithEnv(map[string]string{"DEBUG": "true"})); err != nil {
		t.Fatal(err)
	}
	if out := must(sandbox.Exec(ctx, "echo $DEBUG"))(t); string(out.Stdout) != "true\n" {
		t.Fatalf("after restart: %q", out.Stdout)
	}

	must(sandbox.WriteFile(ctx, "/workspace/cloned", []byte("copied")))(t)
	clonedSandbox := must(sandbox.Clone(ctx))(t)
	t.Cleanup(func() { _ = clonedSandbox.Destroy(context.Background()) })
	if got := must(clonedSandbox.ReadFile(ctx, "/workspace/cloned"))(t); string(got) != "copied" {
		t.Fatalf("clone: %q", got)
	}
	_, err := sandbox.Clone(ctx, computesdk.CloneWithTemplate("different-template"),
		computesdk.CloneWithEnv(map[string]string{"NODE_ENV": "production"}))
	wantReason(t, err, "TEMPLATE_NOT_FOUND")
	toOther := must(sandbox.Clone(ctx, computesdk.CloneToProvider("local"), computesdk.CloneWithTemplate("nodejs18.x")))(t)
	t.Cleanup(func() { _ = toOther.Destroy(context.Background()) })
	if toOther.Template() != "nodejs18.x" {
		t.Fatalf("clone to a template: %s", toOther.Template())
	}
}

// sandboxPool is the spec's first SandboxPool class (Batch Creation).
type sandboxPool struct {
	available []*computesdk.Sandbox
	inUse     map[*computesdk.Sandbox]bool
}

func (p *sandboxPool) acquire(ctx context.Context, provider string, opts ...computesdk.CreateOption) (*computesdk.Sandbox, error) {
	var sandbox *computesdk.Sandbox
	if n := len(p.available); n > 0 {
		sandbox, p.available = p.available[n-1], p.available[:n-1]
	} else {
		var err error
		if sandbox, err = computesdk.Compute(ctx, provider, opts...); err != nil {
			return nil, err
		}
	}
	p.inUse[sandbox] = true
	return sandbox, nil
}

func (p *sandboxPool) release(ctx context.Context, sandbox *computesdk.Sandbox) error {
	delete(p.inUse, sandbox)
	if err := sandbox.Reset(ctx, false); err != nil {
		return err
	}
	p.available = append(p.available, sandbox)
	return nil
}

func (p *sandboxPool) cleanup(ctx context.Context) {
	for sb := range p.inUse {
		p.available = append(p.available, sb)
	}
	for _, sb := range p.available {
		_ = sb.Destroy(ctx)
	}
}

func TestSpecBatchCreationAndPool(t *testing.T) {
	ctx := specEnv(t)
	templates := []string{"python", "nodejs", "gpu-ml"}
	sandboxes := make([]*computesdk.Sandbox, len(templates))
	errs := make([]error, len(templates))
	var wg sync.WaitGroup
	for i, tpl := range templates { // Promise.all
		wg.Go(func() { sandboxes[i], errs[i] = computesdk.Compute(ctx, "local", computesdk.WithTemplate(tpl)) })
	}
	wg.Wait()
	for i, sb := range sandboxes {
		if sb != nil {
			t.Cleanup(func() { _ = sb.Destroy(context.Background()) })
		} else if i < 2 {
			t.Fatalf("%s: %v", templates[i], errs[i])
		}
	}
	wantReason(t, errs[2], "GPU_UNAVAILABLE")

	pool := &sandboxPool{inUse: map[*computesdk.Sandbox]bool{}}
	first := must(pool.acquire(ctx, "local"))(t)
	if err := pool.release(ctx, first); err != nil {
		t.Fatal(err)
	}
	if again := must(pool.acquire(ctx, "local"))(t); again != first {
		t.Fatal("the pool made a new sandbox with one available")
	}
	pool.cleanup(ctx)
	_, err := first.Client().Get(ctx, first.ID())
	wantReason(t, err, "SANDBOX_NOT_FOUND")
}

func TestSpecMigration(t *testing.T) {
	ctx := specEnv(t)
	sandbox := compute(t, ctx, computesdk.WithTemplate("python:3.11"),
		computesdk.WithEnv(map[string]string{"DEBUG": "true"}))
	must(sandbox.WriteFile(ctx, "/workspace/moved", []byte("along")))(t)
	_, err := sandbox.Migrate(ctx, "local", computesdk.MigrateWithTemplate("python-gpu"),
		computesdk.PreserveFiles(true), computesdk.PreserveEnv(true))
	wantReason(t, err, "GPU_UNAVAILABLE")
	migratedSandbox := must(sandbox.Migrate(ctx, "local",
		computesdk.TemplateMapping(map[string]string{"python:3.11": "python3.11.x"}),
		computesdk.EnvMapping(map[string]string{"DEBUG": "VERCEL_DEBUG"})))(t)
	t.Cleanup(func() { _ = migratedSandbox.Destroy(context.Background()) })
	if migratedSandbox.Template() != "python3.11.x" {
		t.Fatalf("migrated with a template mapping: %s", migratedSandbox.Template())
	}
	// The env mapping renames the env that preserveEnv carries over (without it
	// no env moves, as the spec's call shows).
	withEnv := compute(t, ctx, computesdk.WithEnv(map[string]string{"DEBUG": "true"}))
	renamed := must(withEnv.Migrate(ctx, "local", computesdk.PreserveEnv(true),
		computesdk.EnvMapping(map[string]string{"DEBUG": "VERCEL_DEBUG"})))(t)
	t.Cleanup(func() { _ = renamed.Destroy(context.Background()) })
	if out := must(renamed.Exec(ctx, "echo $VERCEL_DEBUG"))(t); string(out.Stdout) != "true\n" {
		t.Fatalf("env mapping: %q", out.Stdout)
	}
}
