package computesdk_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	computesdk "github.com/computesdk/computesdk/clients/go"
)

func TestPoolsBatchGroupsAndChannels(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := connect(t)

	if _, err := c.Pools().Create(ctx, computesdk.PoolSpec{Name: "go-pool", Provider: "local", Template: "base", Min: 1, Max: 2}); err != nil {
		t.Fatal(err)
	}
	defer c.Pools().Delete(ctx, "go-pool")
	sb, err := c.Pools().Acquire(ctx, "go-pool", map[string]string{"who": "go"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Exec(ctx, "touch /tmp/dirty"); err != nil {
		t.Fatal(err)
	}
	if back, err := sb.Release(ctx, true); err != nil || !back {
		t.Fatalf("release: %v %v", back, err)
	}
	if res, _ := sb.Exec(ctx, "test -e /tmp/dirty", computesdk.NoCheck()); res == nil || res.ExitCode != 1 {
		t.Fatalf("a hard release left files behind: %+v", res)
	}

	results, err := c.BatchCreate(ctx, []computesdk.BatchItem{
		{Provider: "local", Options: []computesdk.CreateOption{computesdk.WithTemplate("base")}},
		{Provider: "local", Options: []computesdk.CreateOption{computesdk.WithTemplate("nope")}},
		{Provider: "local", Options: []computesdk.CreateOption{computesdk.WithTemplate("base")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(results[1].Err, computesdk.ErrTemplateNotFound) || !errors.Is(results[1].Err, computesdk.ErrNotFound) {
		t.Fatalf("item 1: %v", results[1].Err)
	}
	a, b := results[0].Sandbox, results[2].Sandbox
	if _, err := c.Groups().Create(ctx, "go-group", a.ID(), b.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteFile(ctx, "/workspace/fail", []byte("1")); err != nil {
		t.Fatal(err)
	}
	failed := map[string]bool{}
	n := 0
	for r, err := range c.Groups().Broadcast(ctx, "go-group", "test ! -e /workspace/fail") {
		if err != nil {
			t.Fatal(err)
		}
		n++
		failed[r.SandboxID] = r.Err != nil || r.Result.ExitCode != 0
	}
	if n != 2 || failed[a.ID()] || !failed[b.ID()] {
		t.Fatalf("broadcast: %d results, failed %v", n, failed)
	}
	if destroyed, err := c.Groups().DestroyAll(ctx, "go-group"); err != nil || len(destroyed) != 2 {
		t.Fatalf("destroy all: %v %v", destroyed, err)
	}

	if err := c.Channels().Connect(ctx, "go-chan", 10, "web", "api"); err != nil {
		t.Fatal(err)
	}
	defer c.Channels().Delete(ctx, "go-chan")
	for _, p := range []string{"one", "two"} {
		if _, err := c.Channels().Send(ctx, "go-chan", "web", "api", []byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for m, err := range c.Channels().Subscribe(ctx, "go-chan", "api") {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(m.GetPayload()))
		if err := c.Channels().Ack(ctx, "go-chan", "api", m.GetSequence()); err != nil {
			t.Fatal(err)
		}
		if len(got) == 2 {
			break
		}
	}
	if got[0] != "one" || got[1] != "two" {
		t.Fatalf("messages: %v", got)
	}
}

func TestSnapshotsStatesRestartAndVolumes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := connect(t)
	if _, err := c.Volumes().Create(ctx, "go-data", 8, true); err != nil {
		t.Fatal(err)
	}
	sb, err := c.Create(ctx, "local", computesdk.WithVolume("go-data", "/data", false, 0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sb.WriteFile(ctx, "/workspace/v", []byte("one")); err != nil {
		t.Fatal(err)
	}
	snap, err := sb.CreateSnapshot(ctx, "first", "v=one")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sb.WriteFile(ctx, "/workspace/v", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if err := sb.RestoreSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if got, _ := sb.ReadFile(ctx, "/workspace/v"); string(got) != "one" {
		t.Fatalf("after restore: %q", got)
	}
	if list, err := sb.ListSnapshots(ctx); err != nil || len(list) != 1 {
		t.Fatalf("snapshots: %v %v", list, err)
	}
	if err := sb.DeleteSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if err := sb.Restart(ctx, computesdk.RestartWithEnv(map[string]string{"R": "1"})); err != nil {
		t.Fatal(err)
	}
	if res, _ := sb.Exec(ctx, "echo $R"); res == nil || string(res.Stdout) != "1\n" {
		t.Fatalf("after restart: %+v", res)
	}
	state, err := sb.SaveState(ctx, "go")
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := c.ExportState(ctx, state, "", &archive); err != nil {
		t.Fatal(err)
	}
	imported, err := c.ImportState(ctx, bytes.NewReader(archive.Bytes()), "", map[string]string{"from": "go"})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := imported.ReadFile(ctx, "/workspace/v"); string(got) != "one" || imported.Metadata()["from"] != "go" {
		t.Fatalf("imported: %q %v", got, imported.Metadata())
	}
	_ = imported.Destroy(ctx)
	if _, err := c.ImportState(ctx, bytes.NewReader(archive.Bytes()[:archive.Len()/2]), "", nil); !errors.Is(err, &computesdk.Error{Reason: "ARCHIVE_CORRUPT"}) {
		t.Fatalf("truncated archive: %v", err)
	}
	again, err := c.Create(ctx, "", computesdk.WithRestoreFrom(state))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := again.ReadFile(ctx, "/workspace/v"); string(got) != "one" {
		t.Fatalf("restored state: %q", got)
	}
	_ = again.Destroy(ctx)
	// Other tests may keep states of their own.
	if states, err := c.States(ctx); err != nil || !slices.ContainsFunc(states, func(s *computesdk.SavedState) bool {
		return s.GetId() == state && s.GetName() == "go"
	}) {
		t.Fatalf("states: %v %v", states, err)
	}
	if err := c.DeleteState(ctx, state); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Volumes().Get(ctx, "go-data"); err != nil || len(v.GetMountedBy()) != 0 {
		t.Fatalf("volume: %v %v", v, err)
	}
	if vols, err := c.Volumes().List(ctx); err != nil || !slices.ContainsFunc(vols, func(v *computesdk.VolumeInfo) bool {
		return v.GetName() == "go-data"
	}) {
		t.Fatalf("volumes: %v %v", vols, err)
	}
	if err := c.Volumes().Delete(ctx, "go-data"); err != nil {
		t.Fatal(err)
	}
}

func TestTemplatesBuildCacheAndDelete(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := connect(t)
	def := &computesdk.TemplateDefinition{
		Name:  "go-tpl",
		Setup: []string{"echo from-go > /from-go", "echo logged"},
		Env:   map[string]string{"GO_TPL": "yes"},
	}
	var logs []string
	first, err := c.Templates().Build(ctx, def, func(ev *computesdk.BuildEvent) {
		if l := ev.GetLog(); l != nil {
			logs = append(logs, l.GetLine())
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if first.GetCacheHit() || !slices.Contains(logs, "logged") {
		t.Fatalf("first build: hit=%v logs=%v", first.GetCacheHit(), logs)
	}
	again, err := c.Templates().Build(ctx, def, nil)
	if err != nil || !again.GetCacheHit() || again.GetTemplate().GetDigest() != first.GetTemplate().GetDigest() {
		t.Fatalf("second build: %v %v", again, err)
	}
	sb, err := c.Create(ctx, "local", computesdk.WithTemplate("go-tpl"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := sb.Exec(ctx, "sh -c 'cat /from-go; echo $GO_TPL'")
	if err != nil || string(r.Stdout) != "from-go\nyes\n" {
		t.Fatalf("exec: %+v %v", r, err)
	}
	if err := c.Templates().Delete(ctx, "go-tpl"); !errors.Is(err, computesdk.ErrFailedPrecondition) {
		t.Fatalf("delete in use: %v", err)
	}
	if err := sb.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Templates().Delete(ctx, "go-tpl"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Templates().Get(ctx, "go-tpl"); !errors.Is(err, computesdk.ErrTemplateNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	bad := &computesdk.TemplateDefinition{Name: "go-bad", Setup: []string{"exit 4"}}
	if _, err := c.Templates().Build(ctx, bad, nil); !errors.Is(err, computesdk.ErrTemplateBuildFailed) {
		t.Fatalf("failing build: %v", err)
	}
	list, err := c.Templates().List(ctx)
	if err != nil || !slices.ContainsFunc(list, func(t *computesdk.Template) bool { return t.GetName() == "python" }) {
		t.Fatalf("list: %v %v", list, err)
	}
}

// Exec answers in one unary call when the output fits inline; past that the rest
// arrives through AttachProcess, with nothing lost.
func TestExecPastTheInlineLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := connect(t)
	sb, err := c.Create(ctx, "local")
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	r, err := sb.Exec(ctx, "head -c 3000000 /dev/zero | tr '\\0' a; printf done >&2")
	if err != nil || len(r.Stdout) != 3000000 || string(r.Stderr) != "done" || bytes.Count(r.Stdout, []byte("a")) != 3000000 {
		t.Fatalf("exec: %d bytes, stderr %q, %v", len(r.Stdout), r.Stderr, err)
	}
}
