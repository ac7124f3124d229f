package computesdk_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/reflect/protoreflect"

	computesdk "github.com/computesdk/computesdk/clients/go"
	adminv1 "github.com/computesdk/computesdk/clients/go/api/admin/v1"
	errorsv1 "github.com/computesdk/computesdk/clients/go/api/errors/v1"
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

// Drift: every RPC in the protos is called somewhere in the idiomatic client.
func TestEveryRPCIsWrapped(t *testing.T) {
	files := []protoreflect.FileDescriptor{
		sandboxv1.File_computesdk_api_sandbox_v1_sandbox_proto,
		processv1.File_computesdk_api_process_v1_process_proto,
		filesystemv1.File_computesdk_api_filesystem_v1_filesystem_proto,
		eventsv1.File_computesdk_api_events_v1_events_proto,
		providerv1.File_computesdk_api_provider_v1_provider_proto,
		monitoringv1.File_computesdk_api_monitoring_v1_monitoring_proto,
		poolv1.File_computesdk_api_pool_v1_pool_proto,
		groupv1.File_computesdk_api_group_v1_group_proto,
		networkv1.File_computesdk_api_network_v1_network_proto,
		messagingv1.File_computesdk_api_messaging_v1_messaging_proto,
		snapshotv1.File_computesdk_api_snapshot_v1_snapshot_proto,
		volumev1.File_computesdk_api_volume_v1_volume_proto,
		templatev1.File_computesdk_api_template_v1_template_proto,
		adminv1.File_computesdk_api_admin_v1_admin_proto,
		errorsv1.File_computesdk_api_errors_v1_errors_proto, // the Reason enum, no service
	}
	// Every generated package is in the list above.
	dirs, err := os.ReadDir("api")
	if err != nil || len(dirs) != len(files) {
		t.Fatalf("%d generated packages, %d checked (%v)", len(dirs), len(files), err)
	}
	sources, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var code strings.Builder
	for _, name := range sources {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		code.Write(b)
	}
	var missing []string
	total := 0
	for _, f := range files {
		for i := 0; i < f.Services().Len(); i++ {
			svc := f.Services().Get(i)
			for j := 0; j < svc.Methods().Len(); j++ {
				total++
				m := svc.Methods().Get(j)
				if !strings.Contains(code.String(), "."+string(m.Name())+"(") {
					missing = append(missing, fmt.Sprintf("%s.%s", svc.Name(), m.Name()))
				}
			}
		}
	}
	sort.Strings(missing)
	if total < 55 || len(missing) > 0 {
		t.Fatalf("%d RPCs, not wrapped: %v", total, missing)
	}
}

func TestErrorsIsMatchesReasonAndCode(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", &computesdk.Error{Code: codes.NotFound, Reason: "SANDBOX_NOT_FOUND"})
	if !errors.Is(err, computesdk.ErrSandboxNotFound) || !errors.Is(err, computesdk.ErrNotFound) {
		t.Fatal("errors.Is must match the reason and the code")
	}
	if errors.Is(err, computesdk.ErrFileNotFound) || errors.Is(err, computesdk.ErrInvalidArgument) {
		t.Fatal("errors.Is matched another reason or code")
	}
}

// Drift: the reasons with a sentinel of their own are the ones every client
// types (Python's _BY_REASON, TypeScript's byReason), each in the proto enum;
// and the token and scope reasons, which those type by code (unauthenticated,
// permission denied) with the reason carried.
func TestReasonSentinelsAreInTheEnum(t *testing.T) {
	known := map[string]bool{}
	for _, name := range errorsv1.Reason_name {
		known[strings.TrimPrefix(name, "REASON_")] = true
	}
	sentinels := map[string]*computesdk.Error{
		"SANDBOX_NOT_FOUND":     computesdk.ErrSandboxNotFound,
		"TEMPLATE_NOT_FOUND":    computesdk.ErrTemplateNotFound,
		"TEMPLATE_BUILD_FAILED": computesdk.ErrTemplateBuildFailed,
		"PROVIDER_NOT_FOUND":    computesdk.ErrProviderNotFound,
		"PROCESS_NOT_FOUND":     computesdk.ErrProcessNotFound,
		"FILE_NOT_FOUND":        computesdk.ErrFileNotFound,
		"PATH_OUTSIDE_SANDBOX":  computesdk.ErrPathOutsideSandbox,
		"SANDBOX_NOT_RUNNING":   computesdk.ErrSandboxNotRunning,
		"PAYLOAD_TOO_LARGE":     computesdk.ErrPayloadTooLarge,
		"SANDBOX_TERMINATED":    computesdk.ErrSandboxTerminated,
		"FEATURE_UNSUPPORTED":   computesdk.ErrFeatureUnsupported,
		"TOKEN_MISSING":         computesdk.ErrTokenMissing,
		"TOKEN_INVALID":         computesdk.ErrTokenInvalid,
		"TOKEN_REVOKED":         computesdk.ErrTokenRevoked,
		"TOKEN_EXPIRED":         computesdk.ErrTokenExpired,
		"SCOPE_INSUFFICIENT":    computesdk.ErrScopeInsufficient,
	}
	for reason, sentinel := range sentinels {
		if sentinel.Reason != reason || !known[reason] {
			t.Errorf("sentinel for %s has reason %q, in the enum: %v", reason, sentinel.Reason, known[sentinel.Reason])
		}
	}
	// The one reason this client makes itself, when no daemon answers.
	if known[computesdk.ErrDaemonUnreachable.Reason] {
		t.Errorf("%s is in the enum now: give it a sentinel from there", computesdk.ErrDaemonUnreachable.Reason)
	}
}

func TestConnectToMissingSocketFailsFast(t *testing.T) {
	start := time.Now()
	_, err := computesdk.Connect(context.Background(), computesdk.WithSocket("/nonexistent/d.sock"))
	if !errors.Is(err, computesdk.ErrDaemonUnreachable) || time.Since(start) > 5*time.Second {
		t.Fatalf("want a quick DAEMON_UNREACHABLE, got %v after %s", err, time.Since(start))
	}
}

// A background process outlives the call that started it, takes stdin later
// and can be re-attached from any offset.
func TestBackgroundProcessAndMonitoring(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := connect(t)
	sb, err := c.Create(ctx, "local")
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	p, err := sb.StartProcessArgv(ctx, []string{"sh", "-c", "read x; echo got-$x"}, computesdk.Interactive(), computesdk.WithTag("reader"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WriteStdin(ctx, []byte("ping\n"), true); err != nil {
		t.Fatal(err)
	}
	res, err := p.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "got-ping\n" || res.ExitCode != 0 {
		t.Fatalf("process result: %+v", res)
	}
	var tail []byte
	for chunk, err := range sb.Process(p.ID).Attach(ctx, 4, 0) {
		if err != nil {
			t.Fatal(err)
		}
		tail = append(tail, chunk.Data...)
	}
	if string(tail) != "ping\n" {
		t.Fatalf("attach from offset 4: %q", tail)
	}
	u, err := sb.GetResourceUsage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u.Memory.UsedMB <= 0 || u.Memory.TotalMB <= 0 || u.Memory.Percent <= 0 || u.Disk.TotalMB <= 0 ||
		u.Raw.GetMemoryLimitBytes() == 0 {
		t.Fatalf("usage: %+v", u)
	}
	procs, err := sb.Processes(ctx)
	if err != nil || len(procs) == 0 || procs[0].GetTag() != "reader" {
		t.Fatalf("processes: %v %v", procs, err)
	}
}
