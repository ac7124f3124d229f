package computesdk_test

import (
	"context"
	"sort"
	"testing"
	"time"
)

// BenchmarkExecRoundTrip times `true` end to end through this client over
// the Unix socket and reports p50/p95 besides the mean. bench/clients.sh runs it.
func BenchmarkExecRoundTrip(b *testing.B) {
	ctx := context.Background()
	c := connect(b)
	sb, err := c.Create(ctx, "local")
	if err != nil {
		b.Fatal(err)
	}
	defer sb.Destroy(ctx)
	for range 20 { // warm up the connection and the sandbox's agent
		if _, err := sb.ExecArgv(ctx, []string{"true"}); err != nil {
			b.Fatal(err)
		}
	}
	times := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := sb.ExecArgv(ctx, []string{"true"}); err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(times[len(times)*95/100].Microseconds())/1000, "p95-ms")
}
