package computesdk_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	computesdk "github.com/computesdk/computesdk/clients/go"
)

// Exec's failures: the one-shot paths (RunCommand, and the Exec stream when
// there is stdin) both give a *CommandExitError with the result; NoCheck and
// a timeout give the result alone.
func TestExecFailuresAreCommandExitErrors(t *testing.T) {
	ctx := specEnv(t)
	sb := compute(t, ctx)
	for name, opts := range map[string][]computesdk.ExecOption{
		"unary":      nil,
		"with stdin": {computesdk.WithStdin([]byte("in"))},
	} {
		res, err := sb.Exec(ctx, "cat; echo out; echo err >&2; exit 3", opts...)
		var exit *computesdk.CommandExitError
		if !errors.As(err, &exit) || res == nil || exit.Result != res {
			t.Fatalf("%s: %v %+v", name, err, res)
		}
		if exit.ExitCode != 3 || exit.Signal != 0 || !strings.HasSuffix(string(exit.Stdout), "out\n") ||
			string(exit.Stderr) != "err\n" || !strings.Contains(exit.Error(), "exit code 3: err") {
			t.Fatalf("%s: %+v (%v)", name, exit, exit)
		}
		if res, err := sb.Exec(ctx, "exit 3", append(opts, computesdk.NoCheck())...); err != nil || res.ExitCode != 3 {
			t.Fatalf("%s NoCheck: %v %+v", name, err, res)
		}
	}
	res, err := sb.ExecArgv(ctx, []string{"sleep", "30"}, computesdk.WithCommandTimeout(300*time.Millisecond))
	if err != nil || !res.TimedOut {
		t.Fatalf("a timeout: %v %+v", err, res)
	}
	// Streams report how the command ended and never fail for it.
	st := must(sb.Stream(ctx, "exit 4"))(t)
	if res := must(st.Wait())(t); res.ExitCode != 4 {
		t.Fatalf("stream: %+v", res)
	}
}

// A failed inline template is a *TemplateBuildError carrying its log.
func TestInlineTemplateBuildFailure(t *testing.T) {
	ctx := specEnv(t)
	_, err := computesdk.Compute(ctx, "local", computesdk.WithTemplateDefinition(&computesdk.TemplateDefinition{
		Name: "go-broken", Setup: []string{"echo about-to-fail", "exit 7"}}))
	var build *computesdk.TemplateBuildError
	if !errors.As(err, &build) || !errors.Is(err, computesdk.ErrTemplateBuildFailed) {
		t.Fatalf("want a TemplateBuildError, got %v", err)
	}
	if build.Name != "go-broken" || !slices.ContainsFunc(build.Log, func(l string) bool {
		return strings.Contains(l, "about-to-fail")
	}) {
		t.Fatalf("build error: %q %q", build.Name, build.Log)
	}
}

// A listener rides out a daemon restart: it reports the drop, resumes after
// the last event it delivered (nothing repeated) and sees events after it.
func TestListenerResumesAcrossDaemonRestart(t *testing.T) {
	ctx := specEnv(t)
	sb := compute(t, ctx)
	var mu sync.Mutex
	var events []computesdk.Event
	exits := make(chan struct{}, 8)
	sb.On(ctx, "", func(ev computesdk.Event) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
		if ev.Type == "process.exited" {
			exits <- struct{}{}
		}
	})
	must(sb.Exec(ctx, "true"))(t)
	wait(t, exits, "process.exited before the restart")
	if err := testDaemon.restart(); err != nil {
		t.Fatal(err)
	}
	must(sb.Exec(ctx, "true"))(t)
	wait(t, exits, "process.exited after the restart")

	mu.Lock()
	defer mu.Unlock()
	var types []string
	var last uint64
	for _, ev := range events {
		types = append(types, ev.Type)
		if ev.Sequence == 0 {
			continue // a connection change
		}
		if ev.Sequence <= last {
			t.Fatalf("event %d after %d: repeated or out of order (%v)", ev.Sequence, last, types)
		}
		last = ev.Sequence
	}
	if !subsequence([]string{"ready", "process.exited", "disconnected", "reconnecting", "connected", "process.exited"}, types) {
		t.Fatalf("events: %v", types)
	}
}

// Reconnect re-opens a closed connection: the default one, for the next
// Compute too.
func TestReconnectReopensAClosedConnection(t *testing.T) {
	ctx := specEnv(t)
	sb := compute(t, ctx)
	old := sb.Client()
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Exec(ctx, "true"); err == nil {
		t.Fatal("exec on a closed connection worked")
	}
	if err := sb.Reconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if sb.Client() == old {
		t.Fatal("Reconnect kept the closed connection")
	}
	if out := must(sb.Exec(ctx, "echo again"))(t); string(out.Stdout) != "again\n" {
		t.Fatalf("after reconnect: %q", out.Stdout)
	}
	if c := must(computesdk.DefaultClient(ctx))(t); c != sb.Client() {
		t.Fatal("the re-opened connection is not the default one")
	}
	// A client of one's own re-opens with its own options.
	own := connect(t)
	mine := must(own.Create(context.Background(), "local"))(t)
	t.Cleanup(func() { _ = mine.Destroy(context.Background()) })
	_ = own.Close()
	if err := mine.Reconnect(ctx); err != nil || mine.Client() == own {
		t.Fatalf("reconnect of an own client: %v", err)
	}
	_ = mine.Client().Close()
}
