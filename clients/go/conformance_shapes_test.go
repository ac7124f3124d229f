package computesdk_test

// The conformance ops in the spec's shapes: create options, saved values
// ("$state"), CommandExitError steps and dotted-path checks.

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	computesdk "github.com/computesdk/computesdk/clients/go"
)

type stepError struct {
	Code   string `json:"code"`
	Reason string `json:"reason"`
	// Kind "CommandExitError": the keys given are checked.
	Kind     string  `json:"kind"`
	ExitCode *int    `json:"exit_code"`
	Signal   *int    `json:"signal"`
	Stdout   *string `json:"stdout"`
	Stderr   *string `json:"stderr"`
}

// templateDefinition is the spec's inline template, in its own spelling.
type templateDefinition struct {
	Name      string            `json:"name"`
	BaseImage string            `json:"baseImage"`
	Packages  []string          `json:"packages"`
	Env       map[string]string `json:"env"`
}

func (r *runner) createOptions(st step) []computesdk.CreateOption {
	opts := []computesdk.CreateOption{computesdk.WithTemplate(st.Template), computesdk.WithMetadata(st.Metadata)}
	if st.Env != nil {
		opts = append(opts, computesdk.WithEnv(st.Env))
	}
	if st.Volumes != nil {
		opts = append(opts, computesdk.WithVolumes(st.Volumes))
		for _, v := range st.Volumes {
			if v.Persistent {
				r.t.Cleanup(func() { _ = r.client.Volumes().Delete(context.Background(), v.Name) })
			}
		}
	}
	if d := st.TemplateDefinition; d != nil {
		opts = append(opts, computesdk.WithTemplateDefinition(&computesdk.TemplateDefinition{
			Name: d.Name, BaseImage: d.BaseImage, Packages: d.Packages, Env: d.Env}))
	}
	if st.Resources != nil {
		res := *st.Resources
		opts = append(opts, computesdk.WithResources(computesdk.Resources{CPUCores: res["cpu_cores"],
			MemoryMB: uint64(res["memory_mb"]), DiskMB: uint64(res["disk_mb"])}))
	}
	if st.RestoreFrom != "" {
		opts = append(opts, computesdk.WithRestoreFrom(r.value(st.RestoreFrom).(string)))
	}
	if st.ImportState != "" {
		opts = append(opts, computesdk.WithImportState(r.value(st.ImportState).([]byte)))
	}
	return opts
}

// value is what an earlier step saved under a "$name", or v itself.
func (r *runner) value(v string) any {
	if !strings.HasPrefix(v, "$") {
		return v
	}
	saved, ok := r.saved[v]
	if !ok {
		r.t.Fatalf("nothing saved as %s yet", v)
	}
	return saved
}

// checkPaths checks expect's dotted snake_case paths ("memory.total_mb")
// against the Go fields they name (Memory.TotalMB), each a number or a
// comparison {gt|gte|lt|lte|eq: n}.
func checkPaths(t *testing.T, st step, v any) {
	t.Helper()
	var want map[string]json.RawMessage
	if err := json.Unmarshal(st.RawExpect, &want); err != nil {
		t.Fatalf("%s: expect %s: %v", st.Op, st.RawExpect, err)
	}
	for path, rule := range want {
		f := reflect.ValueOf(v)
		for _, part := range strings.Split(path, ".") {
			f = f.FieldByName(goName(part))
			if !f.IsValid() {
				t.Fatalf("%s: %s is no field of %T", st.Op, path, v)
			}
		}
		var got float64
		switch {
		case f.CanFloat():
			got = f.Float()
		case f.CanUint():
			got = float64(f.Uint())
		case f.CanInt():
			got = float64(f.Int())
		default:
			t.Fatalf("%s: %s is a %s, not a number", st.Op, path, f.Kind())
		}
		cmp := map[string]float64{}
		if err := json.Unmarshal(rule, &cmp); err != nil {
			var n float64
			if err := json.Unmarshal(rule, &n); err != nil {
				t.Fatalf("%s: %s: rule %s", st.Op, path, rule)
			}
			cmp["eq"] = n
		}
		for op, n := range cmp {
			ok := map[string]bool{"gt": got > n, "gte": got >= n, "lt": got < n, "lte": got <= n, "eq": got == n}[op]
			if !ok {
				t.Fatalf("%s: %s = %v, want %s %v", st.Op, path, got, op, n)
			}
		}
	}
}

// goName is a snake_case key's Go field name: total_mb -> TotalMB, cpu_cores -> CPUCores.
func goName(snake string) string {
	var b strings.Builder
	for _, w := range strings.Split(snake, "_") {
		switch w {
		case "cpu", "mb", "id", "gpu":
			b.WriteString(strings.ToUpper(w))
		default:
			b.WriteString(strings.ToUpper(w[:1]) + w[1:])
		}
	}
	return b.String()
}
